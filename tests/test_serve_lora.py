"""``tokembed serve --lora-modules``: each adapter's vectors equal ``encode``'s with it, a response names the adapter
that ran, and the adapters ``encode`` refuses are refused at start-up (another tokenizer, a name that is the served
model's, integer tensors, a missing folder)."""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import torch

from colpali_engine_checkpoints import build_adapter
from test_adapters import _load, _text_adapter


def test_serve_two_lora_modules_equal_encode_with_each(checkpoint_store, tmp_path):
    """Two adapters over a ColBERT text model: each request's vectors equal ``encode`` with that adapter (merged),
    the base's equal the base's; interleaved concurrent requests to all three; /v1/models lists them; an unknown
    name is vLLM's 404."""
    import asyncio

    httpx = pytest.importorskip("httpx")
    from serve_support import LiveServer
    from transformers import AutoTokenizer

    from tokembed.embedder import Embedder
    from tokembed.serve import EmbeddingService, ServeOptions
    from tokembed.settings import EncodeFlags

    base = checkpoint_store("pylate_bert")
    backbone = _load(base).backbone
    adapters = {
        name: build_adapter(copy.deepcopy(backbone), tmp_path / name, str(base), seed=seed,
                            target_modules=r".*attention\.(self\.(query|value)|output\.dense)$")
        for name, seed in (("legal", 1), ("medical", 2))
    }
    AutoTokenizer.from_pretrained(str(base)).save_pretrained(str(adapters["legal"]))  # the base's own: accepted
    service = EmbeddingService.load(str(base), "cpu", ServeOptions(
        served_model_name="tiny", lora_modules=tuple((name, str(path)) for name, path in adapters.items())))
    server = LiveServer(service)
    try:
        texts = ["what is the capital of france?", "mars, the red planet!!!"]
        expected = {}
        for name, path in [("tiny", base), *adapters.items()]:
            expected[name] = Embedder.load(str(path), EncodeFlags(store_dtype="float32", mode="colbert", kind="query")).embed(texts)
        assert not np.allclose(expected["legal"][0][0], expected["tiny"][0][0], atol=1e-3)

        async def interleaved():
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
                order = ["legal", "medical", "tiny"] * 6
                responses = await asyncio.gather(*(
                    client.post("/pooling", json={"model": name, "input": texts, "input_type": "query"}) for name in order))
                return list(zip(order, responses))

        for name, response in asyncio.run(interleaved()):
            assert response.status_code == 200 and response.json()["model"] == name, response.text  # vLLM's model_name
            for item, (reference, _) in zip(response.json()["data"], expected[name], strict=True):
                np.testing.assert_allclose(np.asarray(item["data"], dtype=np.float32), reference, atol=2e-5)

        listed = httpx.get(server.url + "/v1/models", timeout=10).json()["data"]
        assert [m["id"] for m in listed] == ["tiny", "legal", "medical"]
        assert listed[1]["parent"] == "tiny" and listed[1]["root"] == str(adapters["legal"])
        unknown = server.post("/pooling", {"model": "nope", "input": texts})
        assert unknown.status_code == 404 and unknown.json()["error"]["type"] == "NotFoundError"
        for name in ("legal", "tiny"):  # the model that answered, as vLLM names it
            assert server.post("/score", {"model": name, "queries": "a", "documents": texts}).json()["model"] == name
            assert server.post("/rerank", {"model": name, "query": "a", "documents": texts}).json()["model"] == name
    finally:
        server.stop()


def test_serve_refuses_a_lora_module_with_another_tokenizer(checkpoint, tmp_path):
    """As ``encode --model ADAPTER`` refuses it: served with the base's tokenizer, its ids (and vectors) were not
    those of a reference loading the adapter folder's tokenizer."""
    from transformers import AutoTokenizer

    from tokembed.errors import ModelError
    from tokembed.serve import EmbeddingService, ServeOptions

    base = checkpoint("pylate_bert")
    adapter = _text_adapter(base, tmp_path / "tok")
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    tokenizer.add_tokens(["zebracorn"])
    tokenizer.save_pretrained(str(adapter))
    with pytest.raises(ModelError, match=f"^{re.escape(str(adapter / 'tokenizer.json'))}: the adapter ships a tokenizer other"):
        EmbeddingService.load(str(base), "cpu", ServeOptions(lora_modules=(("tok", str(adapter)),)))


def test_serve_refuses_a_lora_module_named_as_the_served_model(checkpoint, tmp_path):
    """Requests naming it got the base, and /v1/models listed the name twice."""
    from tokembed.errors import UsageError
    from tokembed.serve import EmbeddingService, ServeOptions

    base = checkpoint("pylate_bert")
    adapter = _text_adapter(base, tmp_path / "legal")
    with pytest.raises(UsageError, match="differ from the served model"):
        EmbeddingService.load(str(base), "cpu", ServeOptions(served_model_name="tiny", lora_modules=(("tiny", str(adapter)),)))


def test_serve_refuses_a_lora_module_with_an_integer_tensor(checkpoint, tmp_path):
    from safetensors.torch import load_file, save_file

    from tokembed.errors import ModelError
    from tokembed.serve import EmbeddingService, ServeOptions

    base = checkpoint("pylate_bert")
    adapter = _text_adapter(base, tmp_path / "legal")
    file = adapter / "adapter_model.safetensors"
    tensors = load_file(str(file))
    name = next(name for name in sorted(tensors) if "lora_B" in name)
    tensors[name] = (tensors[name] * 10).to(torch.int8)
    save_file(tensors, str(file))
    with pytest.raises(ModelError, match=f"adapter tensor {re.escape(name)} is stored as torch.int8"):
        EmbeddingService.load(str(base), "cpu", ServeOptions(lora_modules=(("legal", str(adapter)),)))


def test_lora_modules_flag_needs_name_equals_path(cli, tmp_path):
    result = cli("serve", "--model", tmp_path, "--lora-modules", "no-equals-sign", "--port", 0)
    assert result.exit_code == 2 and "NAME=PATH" in result.stderr


def test_lora_modules_paths_may_hold_spaces_and_one_value_may_hold_several():
    from cli.serve import _parse_lora_modules

    assert _parse_lora_modules(["legal=/data/my adapters/legal"]) == (("legal", "/data/my adapters/legal"),)
    assert _parse_lora_modules(["a=/x b=/y", "c=/z"]) == (("a", "/x"), ("b", "/y"), ("c", "/z"))


def test_lora_modules_take_vllms_json_form():
    from cli.serve import _parse_lora_modules
    from tokembed.errors import UsageError

    given = '{"name": "legal", "path": "/data/legal lora", "base_model_name": "base"}'
    assert _parse_lora_modules([given, "c=/z"]) == (("legal", "/data/legal lora"), ("c", "/z"))
    for bad in ('{"name": "legal"}', '{"name": "a", "path": "/x", "scale": 2}', '{"name": ', '["a", "/x"]'):
        with pytest.raises(UsageError, match="--lora-modules"):
            _parse_lora_modules([bad])


def test_lora_modules_listed_after_one_flag_as_vllm_takes_them(cli, checkpoint, tmp_path):
    base = checkpoint("pylate_bert")
    adapter = _text_adapter(base, tmp_path / "legal")
    result = cli("serve", "--model", base, "--lora-modules", f"legal={adapter}", f"medical={tmp_path / 'gone'}", "--port", 0)
    assert result.exit_code == 4 and "--lora-modules medical=" in result.stderr and "no such checkpoint folder" in result.stderr


def test_serve_refuses_a_stray_argument_by_name(cli, tmp_path):
    result = cli("serve", "--model", tmp_path, "stray", "--port", 0)
    assert result.exit_code == 2 and "unexpected argument(s) 'stray'" in result.stderr


def test_a_missing_lora_module_folder_is_named_as_such(checkpoint, tmp_path):
    from tokembed.errors import ModelNotFoundError
    from tokembed.serve import EmbeddingService, ServeOptions

    missing = tmp_path / "no-such-adapter"
    with pytest.raises(ModelNotFoundError, match=r"^--lora-modules legal=.*no-such-adapter: no such checkpoint folder"):
        EmbeddingService.load(str(checkpoint("pylate_bert")), "cpu", ServeOptions(lora_modules=(("legal", str(missing)),)))
