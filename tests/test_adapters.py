"""PEFT LoRA adapters over colpali-engine bases: applied exactly (against peft's own unmerged PeftModel), or refused.

Adapters are built with peft on the published settings (regex target_modules, FEATURE_EXTRACTION), small r,
lora_alpha != r and non-zero B, in ``.eval()``; saved in the names peft writes against transformers 5
(``language_model.*``) and renamed to the published ones (``model.layers.*``, ``model.language_model.model.*``).
"""

from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from colpali_engine_checkpoints import ENGINE_BUILDERS, PUBLISHED_REGEX, build_adapter, rename_adapter_tensors
from helpers import manifest, read_index
from tokembed.errors import ModelError

ARCHS = sorted(ENGINE_BUILDERS)
REGEX = {
    "ColPali": r"(.*(language_model).*(down_proj|gate_proj|up_proj|k_proj|q_proj|v_proj|o_proj).*$|.*(custom_text_proj).*$)",
    "ColIdefics3": r"(.*(text_model).*(down_proj|gate_proj|up_proj|k_proj|q_proj|v_proj|o_proj).*$|.*(linear).*$)",
}
# transformers-5 names (as peft saves them over tokembed's / colpali-engine 0.3.18's modules) -> published names.
TO_PUBLISHED = {
    "ColQwen2": {r"^language_model\.": "model."},
    "ColQwen2_5": {r"^language_model\.": "model."},
    "ColPali": {r"^model\.language_model\.": "model.language_model.model."},
    "ColIdefics3": {},
}


def _image(width: int = 60, height: int = 40, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.RandomState(seed).randint(0, 255, (height, width, 3), dtype=np.uint8))


def _load(path, base=None):
    from tokembed.models.registry import load_model

    return load_model(path, base=base)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """arch -> (base folder, adapter folder in transformers-5 names, same adapter in published names)."""
    root = tmp_path_factory.mktemp("adapters")
    built = {}
    for arch in ARCHS:
        base = ENGINE_BUILDERS[arch](root / arch)
        module = _load(base).model
        t5 = build_adapter(copy.deepcopy(module), root / f"{arch}-lora-t5", str(base),
                           target_modules=REGEX.get(arch, PUBLISHED_REGEX))
        published = shutil.copytree(t5, root / f"{arch}-lora-published")
        rename_adapter_tensors(published, TO_PUBLISHED[arch])
        built[arch] = (base, t5, published)
    return built


def _peft_reference(base, adapter):
    """peft's own unmerged forward: PeftModel.from_pretrained on the base module."""
    from peft import PeftModel

    return PeftModel.from_pretrained(_load(base).model, str(adapter)).eval()


def _forward(module, processor, image, query):
    docs = {k: v for k, v in processor.process_images([image]).items() if k != "labels"}
    with torch.no_grad():
        return module(**docs), module(**processor.process_queries([query]))


@pytest.mark.parametrize("arch", ARCHS)
def test_adapter_equals_peft_unmerged_forward(engine, arch):
    base, t5, published = engine[arch]
    image, query = _image(), "total amount due"
    reference = _peft_reference(base, t5)
    base_model = _load(base)
    ref_docs, ref_queries = _forward(reference, base_model.processor, image, query)
    base_docs, _ = _forward(base_model.model, base_model.processor, image, query)
    for adapter in (t5, published):
        tensors = json.loads((adapter / "adapter_config.json").read_text())
        assert tensors["r"] == 4 and tensors["lora_alpha"] == 12
        loaded = _load(adapter)  # base from base_model_name_or_path
        docs, queries = _forward(loaded.model, loaded.processor, image, query)
        assert (docs - ref_docs).abs().max() <= 1e-4 and (queries - ref_queries).abs().max() <= 1e-4
        assert (docs - base_docs).abs().max() > 1e-2  # the adapter changes the output
        assert not any("lora" in name for name, _ in loaded.model.named_parameters())  # merged


def test_vision_tower_lora_is_applied(tmp_path):
    """Qwen2.5-VL with LoRA on the vision MLP (regex widened with |visual): every tensor lands, image vectors follow
    peft's PeftModel and differ from the base's and from the same adapter without its vision tensors."""
    from safetensors.torch import load_file, save_file

    base = ENGINE_BUILDERS["ColQwen2_5"](tmp_path / "base")
    regex = PUBLISHED_REGEX[:-1] + r"|.*visual.*mlp.*(gate_proj|up_proj|down_proj)$)"
    t5 = build_adapter(copy.deepcopy(_load(base).model), tmp_path / "lora-t5", str(base), target_modules=regex)
    names = list(load_file(str(t5 / "adapter_model.safetensors")))
    assert any(".visual." in name for name in names)
    published = shutil.copytree(t5, tmp_path / "lora-published")
    rename_adapter_tensors(published, TO_PUBLISHED["ColQwen2_5"])
    no_vision = shutil.copytree(t5, tmp_path / "lora-text-only")
    tensors = load_file(str(no_vision / "adapter_model.safetensors"))
    save_file({k: v for k, v in tensors.items() if ".visual." not in k}, str(no_vision / "adapter_model.safetensors"))

    image = _image(70, 50, seed=5)
    base_model = _load(base)
    ref_docs, _ = _forward(_peft_reference(base, t5), base_model.processor, image, "q")
    text_only_docs, _ = _forward(_load(no_vision).model, base_model.processor, image, "q")
    for adapter in (t5, published):
        docs, _ = _forward(_load(adapter).model, base_model.processor, image, "q")
        assert (docs - ref_docs).abs().max() <= 1e-4
        assert (docs - text_only_docs).abs().max() > 1e-3


def test_adapter_processor_files_win_over_the_base(engine, tmp_path):
    base, t5, _ = engine["ColQwen2"]
    adapter = shutil.copytree(t5, tmp_path / "with-processor")
    config = json.loads((base / "preprocessor_config.json").read_text())
    config.update(max_pixels=28 * 28 * 4, min_pixels=28 * 28 * 4, size={"shortest_edge": 28 * 28 * 4, "longest_edge": 28 * 28 * 4})
    (adapter / "preprocessor_config.json").write_text(json.dumps(config))
    image = _image(120, 120)
    on_base = _load(base).processor.process_images([image])["image_grid_thw"][0].prod()
    on_adapter = _load(adapter).processor.process_images([image])["image_grid_thw"][0].prod()
    assert int(on_adapter) == 16 and int(on_base) > int(on_adapter)


# -- end to end: encode, info, score, cron ---------------------------------------------------------------


@pytest.fixture
def pages(tmp_path):
    folder = tmp_path / "pages"
    folder.mkdir()
    for seed in range(3):
        _image(40 + 20 * seed, 50, seed=seed).save(folder / f"p{seed}.png")
    return folder


def test_encode_score_info_and_cron_with_an_adapter(engine, pages, tmp_path, cli):
    from tokembed.embedder import Embedder

    base, t5, published = engine["ColQwen2"]
    adapter = shutil.copytree(published, tmp_path / "adapter")
    out = tmp_path / "index"
    first = cli("encode", pages, "--model", adapter, "-o", out, "--store-dtype", "float32", "--log-format", "json")
    assert first.exit_code == 0, first.stderr
    data = manifest(out)
    assert data["model"]["family"] == "ColQwen2" and data["model"]["base"]["path"] == str(base.resolve())
    rows = read_index(out)
    reference = _peft_reference(base, t5)
    processor = _load(base).processor
    for name, (vectors, ids) in rows.items():
        docs = {k: v for k, v in processor.process_images([Image.open(pages / name)]).items() if k != "labels"}
        with torch.no_grad():
            expected = reference(**docs)[0].numpy()
        assert ids.tolist() == docs["input_ids"][0].tolist() and np.abs(vectors - expected).max() <= 1e-4

    info = cli("info", out)
    assert info.exit_code == 0 and str(base.resolve()) in info.stdout.replace("\n", "")

    query = "where is the total"
    scored = cli("score", out, "--query", query, "-f", "jsonl", "-k", 3)
    assert scored.exit_code == 0, scored.stderr
    got = {r["doc_id"]: r["score"] for r in map(json.loads, scored.stdout.splitlines())}
    (q, _), = Embedder.for_index(data, kind="query").embed([query])
    with torch.no_grad():
        q_ref = reference(**processor.process_queries([query]))[0].numpy()
    assert np.abs(q - q_ref).max() <= 1e-4
    for doc, (d, _) in rows.items():
        assert got[doc] == pytest.approx(float((q_ref.astype(np.float64) @ d.T).max(axis=1).sum()), abs=1e-4)

    again = cli("encode", pages, "--model", adapter, "-o", out, "--store-dtype", "float32", "--log-format", "json")
    summary = json.loads(again.stdout)
    assert again.exit_code == 0 and summary["unchanged"] == 3 and summary["added"] + summary["updated"] == 0

    build_adapter(copy.deepcopy(_load(base).model), tmp_path / "other", str(base), seed=7)
    shutil.copy(tmp_path / "other" / "adapter_model.safetensors", adapter / "adapter_model.safetensors")
    changed = cli("encode", pages, "--model", adapter, "-o", out, "--store-dtype", "float32", "--log-format", "json")
    summary = json.loads(changed.stdout)
    assert changed.exit_code == 0 and summary["added"] + summary["updated"] == 3 and summary["unchanged"] == 0, summary
    assert manifest(out)["model"]["fingerprint"] != data["model"]["fingerprint"]


def test_base_model_flag_overrides_the_adapter_config(engine, pages, tmp_path, cli):
    base, t5, _ = engine["ColQwen2"]
    adapter = shutil.copytree(t5, tmp_path / "adapter")
    _set_base(adapter, "vidore/colqwen2-base")
    out = tmp_path / "index"
    missing = cli("encode", pages, "--model", adapter, "-o", out)
    assert missing.exit_code == 4 and "vidore/colqwen2-base" in missing.stderr and "--base-model" in missing.stderr
    assert not (out / "manifest.json").exists()
    result = cli("encode", pages, "--model", adapter, "--base-model", base, "-o", out)
    assert result.exit_code == 0, result.stderr
    assert manifest(out)["flags"]["base_model"] == str(base)


# -- refused: exit 4, nothing written --------------------------------------------------------------------


def _set_base(adapter, value) -> None:
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = value
    (adapter / "adapter_config.json").write_text(json.dumps(config))


def _edit_config(adapter, **changes) -> None:
    config = json.loads((adapter / "adapter_config.json").read_text())
    config.update(changes)
    (adapter / "adapter_config.json").write_text(json.dumps(config))


def _add_stray_tensor(adapter) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    tensors["base_model.model.language_model.layers.9.self_attn.q_proj.lora_A.weight"] = torch.ones(4, 32)
    save_file(tensors, str(adapter / "adapter_model.safetensors"))


def _rename_one_pair(adapter) -> None:
    """Layer 0's q_proj pair saved again under the published naming, with other values, beside transformers 5's."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    for part in ("lora_A.weight", "lora_B.weight"):
        saved = tensors[f"base_model.model.language_model.layers.0.self_attn.q_proj.{part}"]
        tensors[f"base_model.model.model.layers.0.self_attn.q_proj.{part}"] = saved * -3.0
    save_file(tensors, str(adapter / "adapter_model.safetensors"))


def _retype(adapter, part: str, cast) -> None:
    """Layer 0's q_proj ``part`` stored as another dtype (peft would cast it back to float: other numbers)."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    name = f"base_model.model.language_model.layers.0.self_attn.q_proj.{part}"
    tensors[name] = cast(tensors[name])
    save_file(tensors, str(adapter / "adapter_model.safetensors"))


def _truncate(adapter) -> None:
    file = adapter / "adapter_model.safetensors"
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


BAD = {
    "base path missing": (lambda a: _set_base(a, "./models/colqwen2_base"), "./models/colqwen2_base"),
    "tensor for a module the base lacks": (_add_stray_tensor, "layers.9.self_attn.q_proj.lora_A.weight"),
    "truncated adapter file": (_truncate, "adapter_model.safetensors"),
    "bias all": (lambda a: _edit_config(a, bias="all"), "bias 'all'"),
    "not LoRA": (lambda a: _edit_config(a, peft_type="IA3"), "IA3"),
    "rank disagrees with r": (lambda a: _edit_config(a, r=8), "rank 4"),
    # peft would leave these modules plain, tokembed would apply their tensors: the results would differ
    "tensors for an excluded module": (lambda a: _edit_config(a, exclude_modules=["custom_text_proj"]),
                                       "which its target_modules / exclude_modules / layers_to_transform leave out"),
    "an option this peft does not know": (lambda a: _edit_config(a, some_future_option=True), "some_future_option"),
    "a config peft itself refuses": (lambda a: _edit_config(a, layers_to_transform=[0]), "peft refuses this LoRA config"),
    "r is null": (lambda a: _edit_config(a, r=None), "r is None, not a number"),
    # peft applies one of the two depending on the modules it wraps; the last one read won silently
    "two namings of one module": (lambda a: _rename_one_pair(a), "both read as"),
    # peft only warns and runs the base's untrained copy
    "an int8 lora_B": (lambda a: _retype(a, "lora_B.weight", lambda t: (t * 10).to(torch.int8)),
                       "q_proj.lora_B.weight is stored as torch.int8"),
    "a bool lora_A": (lambda a: _retype(a, "lora_A.weight", lambda t: t > 0), "q_proj.lora_A.weight is stored as torch.bool"),
    "modules_to_save without its tensors": (lambda a: _edit_config(a, modules_to_save=["custom_text_proj"]),
                                            "lists 'custom_text_proj' in modules_to_save, but the file holds no tensor"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_adapters_are_refused(engine, pages, tmp_path, cli, case):
    break_it, named = BAD[case]
    adapter = shutil.copytree(engine["ColQwen2"][1], tmp_path / "adapter")
    break_it(adapter)
    out = tmp_path / "index"
    result = cli("encode", pages, "--model", adapter, "-o", out)
    assert result.exit_code == 4, result.stderr
    assert named in result.stderr
    assert not (out / "manifest.json").exists()


def test_an_integer_modules_to_save_copy_is_refused(engine, pages, tmp_path, cli):
    """The trained copy of a ``modules_to_save`` module is a full weight: stored as int8, peft cast it, exit 0."""
    from safetensors.torch import load_file, save_file

    base = engine["ColQwen2"][0]
    adapter = build_adapter(copy.deepcopy(_load(base).model), tmp_path / "adapter", str(base),
                            target_modules=r".*language_model.*(q_proj|v_proj)$", modules_to_save=["custom_text_proj"])
    file = adapter / "adapter_model.safetensors"
    tensors = load_file(str(file))
    name = "base_model.model.custom_text_proj.weight"
    tensors[name] = (tensors[name] * 100).to(torch.int8)
    save_file(tensors, str(file))
    result = cli("encode", pages, "--model", adapter, "-o", tmp_path / "index")
    assert result.exit_code == 4, result.stderr
    assert f"{file}: adapter tensor {name} is stored as torch.int8" in result.stderr


def test_an_option_a_newer_peft_writes_at_its_default_is_accepted(engine, pages, tmp_path, cli):
    """peft 0.21 writes ``kasa_config: null``, which peft 0.20 does not know: inert, so not refused."""
    adapter = shutil.copytree(engine["ColQwen2"][1], tmp_path / "adapter")
    _edit_config(adapter, some_future_option=None, another_one=False)
    assert cli("encode", pages, "--model", adapter, "-o", tmp_path / "index").exit_code == 0


def test_missing_peft_is_a_clear_error(engine, pages, tmp_path, cli, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "peft", None)  # import peft -> ImportError
    out = tmp_path / "index"
    result = cli("encode", pages, "--model", engine["ColQwen2"][1], "-o", out)
    assert result.exit_code == 4 and "tokembed[peft]" in result.stderr
    assert not (out / "manifest.json").exists()


def _text_adapter(base, folder, seed: int = 1):
    return build_adapter(copy.deepcopy(_load(base).backbone), folder, str(base), seed=seed,
                         target_modules=r".*attention\.(self\.(query|value)|output\.dense)$")


def test_an_adapter_saved_inside_a_pylate_pipeline_is_refused(checkpoint, tmp_path, cli):
    """sentence-transformers saves a model with a LoRA as the adapter files beside modules.json, the trained
    1_Dense and the ColBERT settings: applying the adapter to its base alone encoded with the base's projection
    and prefixes (or, over a raw backbone, hidden states instead of ColBERT vectors), exit 0."""
    base = checkpoint("pylate_bert")
    adapter = _text_adapter(base, tmp_path / "lora")
    saved = shutil.copytree(base, tmp_path / "st-with-lora")
    (saved / "model.safetensors").unlink()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(adapter / name, saved / name)
    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"id": "a", "text": "mars is the red planet"}\n')
    result = cli("encode", docs, "--model", saved, "-o", tmp_path / "index")
    assert result.exit_code == 4 and "sentence-transformers / PyLate pipeline" in result.stderr and "1_Dense" in result.stderr
    assert not (tmp_path / "index" / "manifest.json").exists()


def test_an_adapter_without_peft_prefix_is_refused(checkpoint, tmp_path, cli):
    """Tensor names without ``base_model.model.``: peft loads none of them (it warns "Found missing adapter keys" and
    runs the base), while tokembed applied them, exit 0: not the peft forward the README promises."""
    import warnings

    from peft import PeftModel
    from safetensors.torch import load_file, save_file

    base = checkpoint("pylate_bert")
    adapter = _text_adapter(base, tmp_path / "lora")
    file = adapter / "adapter_model.safetensors"
    save_file({k.removeprefix("base_model.model."): v for k, v in load_file(str(file)).items()}, str(file))
    ids = torch.tensor([[2, 30, 40, 50, 3]])
    run = lambda module: module(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state  # noqa: E731
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        peft_model = PeftModel.from_pretrained(_load(base).backbone, str(adapter)).eval()
        assert torch.equal(run(peft_model), run(_load(base).backbone))  # peft applies nothing
    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"id": "a", "text": "mars is the red planet"}\n')
    result = cli("encode", docs, "--model", adapter, "-o", tmp_path / "index")
    assert result.exit_code == 4, result.output
    assert str(file) in result.stderr and "lacks peft's prefix 'base_model.model.'" in result.stderr
    assert not (tmp_path / "index" / "manifest.json").exists()


def test_score_finds_a_relative_base_from_another_folder(checkpoint, tmp_path, cli, monkeypatch):
    """An adapter naming its base relative to the folder encode ran in: score elsewhere loads the base the
    manifest recorded (it failed with exit 4, hinting at a --base-model flag score does not have)."""
    base = checkpoint("pylate_bert")
    adapter = _text_adapter(base, tmp_path / "work" / "lora")
    _set_base(adapter, "../ckpt-pylate_bert")
    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"id": "a", "text": "mars is the red planet"}\n{"id": "b", "text": "cats sleep"}\n')
    monkeypatch.chdir(tmp_path / "work")
    assert cli("encode", docs, "--model", adapter, "-o", tmp_path / "index").exit_code == 0
    nearby = cli("score", tmp_path / "index", "--query", "red planet", "-f", "jsonl")
    assert nearby.exit_code == 0, nearby.stderr
    monkeypatch.chdir(tmp_path)
    elsewhere = cli("score", tmp_path / "index", "--query", "red planet", "-f", "jsonl")
    assert elsewhere.exit_code == 0, elsewhere.stderr
    assert elsewhere.stdout == nearby.stdout


def test_a_relative_base_folder_is_recorded_and_sent_to_workers_absolute(checkpoint, tmp_path, cli, monkeypatch):
    """``--base-model`` given as a relative folder was recorded as typed (a score run elsewhere could not find it),
    and a worker rebuilt the embedder from the flags as typed: a Ray actor, which runs in the folder `ray start`
    ran in, failed with exit 4. A relative ``base_model_name_or_path`` of the adapter reached it as typed too."""
    from tokembed.embedder import Embedder
    from tokembed.settings import EncodeFlags

    base = checkpoint("pylate_bert")
    adapter = _text_adapter(base, tmp_path / "lora")
    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"id": "a", "text": "mars is the red planet"}\n')
    monkeypatch.chdir(tmp_path)
    result = cli("encode", docs, "--model", adapter, "--base-model", "ckpt-pylate_bert", "-o", tmp_path / "index")
    assert result.exit_code == 0, result.stderr
    assert manifest(tmp_path / "index")["flags"]["base_model"] == str(base.resolve())
    flags = EncodeFlags(base_model="ckpt-pylate_bert")
    assert Embedder.load(str(adapter), flags).spec(flags).flags.base_model == str(base.resolve())
    _set_base(adapter, "ckpt-pylate_bert")
    assert Embedder.load(str(adapter), EncodeFlags()).spec(EncodeFlags()).flags.base_model == str(base.resolve())


def test_score_with_an_adapter_over_a_hub_base_resolves_it_as_encode_did(checkpoint, tmp_path, cli, hub_cache):
    """A base named by hub id is loaded through the hub cache again, with its revision: loading the recorded
    snapshot folder instead (no revision) made another fingerprint, and score refused the index (exit 5)."""
    snapshot = hub_cache("someone/tiny-colbert", checkpoint("pylate_bert"), "a" * 40)
    adapter = _text_adapter(snapshot, tmp_path / "lora")
    _set_base(adapter, "someone/tiny-colbert")
    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"id": "a", "text": "mars is the red planet"}\n')
    assert cli("encode", docs, "--model", adapter, "-o", tmp_path / "index").exit_code == 0
    assert manifest(tmp_path / "index")["model"]["base"]["revision"] == "a" * 40
    scored = cli("score", tmp_path / "index", "--query", "red planet", "-f", "jsonl")
    assert scored.exit_code == 0, scored.stderr


# -- serve --lora-modules: unmerged, batched per adapter ------------------------------------------------


def test_a_sentence_transformers_save_of_an_adapter_over_a_vision_base_loads_unless_a_module_would_be_skipped(
        engine, tmp_path):
    # MultiVectorEncoder.add_adapter + save writes the adapter beside modules.json: the root Transformer and a
    # MultiVectorMask that drops nothing, which leave a vision family's vectors as they are
    from test_vision_module_tree import document_vectors, write_dense

    base, adapter, _ = engine[ARCHS[0]]
    saved = shutil.copytree(adapter, tmp_path / "st-saved")
    root = {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.base.modules.transformer.Transformer"}
    mask = {"idx": 1, "name": "1", "path": "1_MultiVectorMask",
            "type": "sentence_transformers.multi_vector_encoder.modules.multi_vector_mask.MultiVectorMask"}
    (saved / "modules.json").write_text(json.dumps([root, mask]))
    (saved / "1_MultiVectorMask").mkdir()
    (saved / "1_MultiVectorMask" / "config.json").write_text(json.dumps({"skiplist_words": [], "keep_only_token_ids": None}))
    vectors = [document_vectors(_load(folder, base=base), _image()) for folder in (adapter, saved)]
    np.testing.assert_array_equal(vectors[0], vectors[1])
    write_dense(saved / "2_Dense")
    with pytest.raises(ModelError, match="2_Dense: a sentence-transformers module with weights"):
        _load(saved, base=base)
