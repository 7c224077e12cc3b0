"""Parity with colpali-engine 0.3.18 itself (slow: builds a separate venv from PyPI).

colpali-engine 0.3.18 imports with transformers 5.3.0, not the 5.24 tokembed runs on, so the test makes a venv
(``--system-site-packages``: torch 2.13.0 is shared, never replaced) holding transformers 5.3.0, colpali-engine
0.3.18, peft 0.20.0 and their hub/tokenizers pins (``--no-deps``: torchvision is not installed; colpali-engine's
Qwen2-VL processor is built without its video part). For each layout, base and LoRA adapter (published names):

* same token ids as colpali-engine for documents (images) and queries;
* tokembed under the venv's transformers equals colpali-engine to max |delta| <= 1e-4 (fp32): the code is exact;
* tokembed as installed (transformers 5.24) equals colpali-engine to 1e-4, but for ColQwen2.5 images: transformers'
  own Qwen2.5-VL vision forward gives other numbers in 5.24 than in 5.3 (measured on these tiny random models:
  2.3e-4 for the base, up to 0.1 with the adapter), while tokembed under 5.3 equals colpali-engine to 1e-6, so
  only the same-transformers comparison is asserted there.
"""

from __future__ import annotations

import copy
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from colpali_engine_checkpoints import ENGINE_BUILDERS, build_adapter, rename_adapter_tensors

pytestmark = pytest.mark.slow
# kernels: transformers 5.3.0 names its hub kernels without a revision, which kernels >= 0.16 refuses at import;
# the venv's own copy shadows the newer one that later transformers releases install beside tokembed.
PINS = ["transformers==5.3.0", "colpali-engine==0.3.18", "peft==0.20.0", "huggingface_hub==1.33.0", "tokenizers==0.22.2",
        "kernels==0.14.1"]
REFERENCE = pathlib.Path(__file__).parent / "reference" / "colpali_engine_reference.py"
REGEX = {
    "ColPali": r"(.*(language_model).*(down_proj|gate_proj|up_proj|k_proj|q_proj|v_proj|o_proj).*$|.*(custom_text_proj).*$)",
    # Not the published colSmol regex (which adds |.*(linear).*$): colpali-engine 0.3.18 + transformers 5.3 leaves
    # the LoRA of the `linear` projection unloaded (its load report: base_model.model.linear.lora_A UNEXPECTED,
    # linear.lora_A MISSING), so it is no reference there; tests/test_adapters.py checks that case against peft.
    "ColIdefics3": r".*(text_model).*(down_proj|gate_proj|up_proj|k_proj|q_proj|v_proj|o_proj)$",
}
TO_PUBLISHED = {"ColQwen2": {r"^language_model\.": "model."}, "ColQwen2_5": {r"^language_model\.": "model."},
                "ColPali": {r"^model\.language_model\.": "model.language_model.model."}, "ColIdefics3": {}}


@pytest.fixture(scope="module")
def venv_python(tmp_path_factory):
    venv = tmp_path_factory.mktemp("colpali-engine-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", *PINS], check=True)
    check = subprocess.run([str(python), "-c", "import torch, transformers; print(torch.__version__, transformers.__version__)"],
                           capture_output=True, text=True, check=True)
    assert check.stdout.split() == [torch.__version__, "5.3.0"]  # torch shared, not replaced
    return python


def _tokembed(path, image, query):
    from tokembed.models.registry import load_model

    loaded = load_model(pathlib.Path(path))
    docs = {k: v for k, v in loaded.processor.process_images([image]).items() if k != "labels"}
    queries = loaded.processor.process_queries([query])
    with torch.no_grad():
        return docs["input_ids"][0], loaded.model(**docs)[0].numpy(), queries["input_ids"][0], loaded.model(**queries)[0].numpy()


@pytest.mark.parametrize("arch", sorted(ENGINE_BUILDERS))
def test_equals_colpali_engine_0_3_18(venv_python, tmp_path, arch, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    base = ENGINE_BUILDERS[arch](tmp_path / "base")
    from tokembed.models.registry import load_model

    adapter = build_adapter(copy.deepcopy(load_model(base).model), tmp_path / "adapter", str(base),
                            target_modules=REGEX.get(arch, r"(.*(model).*(down_proj|gate_proj|up_proj|k_proj|q_proj|v_proj|o_proj).*$|.*(custom_text_proj).*$)"))
    rename_adapter_tensors(adapter, TO_PUBLISHED[arch])
    image_path = tmp_path / "page.png"
    Image.fromarray(np.random.RandomState(0).randint(0, 255, (40, 60, 3), dtype=np.uint8)).save(image_path)
    query = "where is the total?"
    for model in (base, adapter):
        out = tmp_path / f"{model.name}.npz"
        run = subprocess.run([str(venv_python), str(REFERENCE), arch, str(model), str(base), str(image_path), query, str(out)],
                             capture_output=True, text=True)
        assert run.returncode == 0, run.stderr[-3000:]
        reference = np.load(out)
        doc_ids, doc, query_ids, query_vectors = _tokembed(model, Image.open(image_path), query)
        assert doc_ids.tolist() == reference["doc_ids"].tolist() and query_ids.tolist() == reference["query_ids"].tolist()
        assert np.abs(reference["tokembed_doc"] - reference["doc"]).max() <= 1e-4
        assert np.abs(reference["tokembed_query"] - reference["query"]).max() <= 1e-4
        if arch != "ColQwen2_5":  # Qwen2.5-VL's vision code differs between transformers 5.3 and 5.24 (see module doc)
            assert np.abs(doc - reference["doc"]).max() <= 1e-4
        assert np.abs(query_vectors - reference["query"]).max() <= 1e-4
