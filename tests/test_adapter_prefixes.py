"""LoRA adapters saved by peft over a text base's own head class (``Qwen2ForCausalLM`` with ``task_type="CAUSAL_LM"``,
``BertForMaskedLM``, ``ModernBertForMaskedLM``, ``XLMRobertaForMaskedLM``, colbert-ai's ``HF_ColBERT``, jina-colbert-v2's
``roberta``): their tensors name the backbone under the prefix the family's loader strips from the base's weights
(``model.``, ``bert.``, ``roberta.``). Each equals peft's own merged model over the class it was saved for; a module
the backbone still lacks (the LM head) is refused by name. And no peft warning about ``base_model_name_or_path``."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from helpers import manifest
from test_adapters import _load, _text_adapter

IDS = torch.tensor([[5, 9, 14, 21, 30, 8, 6]])


class _HFColBERT(nn.Module):
    """colbert-ai's ``HF_ColBERT`` modules: ``bert`` (no pooler) and the projection ``linear``."""

    def __init__(self, base) -> None:
        from safetensors.torch import load_file
        from transformers import BertModel

        super().__init__()
        self.bert = BertModel.from_pretrained(str(base), add_pooling_layer=False)
        weight = load_file(str(base / "model.safetensors"))["linear.weight"]
        self.linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        self.linear.weight.data.copy_(weight)


def _jina(base) -> nn.Module:
    from tokembed.models.jina_colbert import JinaColBERTModule, JinaConfig, _load_weights, _projection_dim

    module = JinaColBERTModule(JinaConfig.read(base), _projection_dim(base))
    _load_weights(module, base)
    return module


def _hidden(inner: str):
    return lambda model: getattr(model, inner)(input_ids=IDS, attention_mask=torch.ones_like(IDS)).last_hidden_state


def _projected(model):
    return model.linear(_hidden("bert" if hasattr(model, "bert") else "roberta")(model))


def _head(name):
    import transformers

    return lambda base: getattr(transformers, name).from_pretrained(str(base))


def _built(builder, *args):
    import jina_checkpoints
    import raw_checkpoints
    from checkpoints import build_stanford

    found = {"stanford": build_stanford, "jina": jina_checkpoints.build_jina_colbert}.get(builder)
    return lambda path: (found or getattr(raw_checkpoints, builder))(path, *args)


# case -> (base builder, the class the adapter is saved over, peft task, its target modules, prefix, its vectors)
CASES = {
    "Qwen2ForCausalLM": (_built("build_raw_decoder"), _head("Qwen2ForCausalLM"), "CAUSAL_LM", ["q_proj", "v_proj"],
                         "model", _hidden("model")),
    "BertForMaskedLM": (_built("build_encoder_with_head", "BertForMaskedLM"), _head("BertForMaskedLM"), None,
                        ["query", "value"], "bert", _hidden("bert")),
    "ModernBertForMaskedLM": (_built("build_encoder_with_head", "ModernBertForMaskedLM"), _head("ModernBertForMaskedLM"),
                              None, ["Wqkv"], "model", _hidden("model")),
    "XLMRobertaForMaskedLM": (_built("build_encoder_with_head", "XLMRobertaForMaskedLM"), _head("XLMRobertaForMaskedLM"),
                              None, ["query", "value"], "roberta", _hidden("roberta")),
    "HF_ColBERT": (_built("stanford"), _HFColBERT, None, ["query", "value"], "bert", _projected),
    "jina-colbert": (_built("jina"), _jina, None, ["Wqkv", "out_proj"], "roberta", _projected),
}


def _save_adapter(module, path, base, task, targets) -> None:
    """peft's adapter over ``module`` (the head class), non-zero B, saved as peft saves it."""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(module, LoraConfig(r=4, lora_alpha=12, target_modules=targets, task_type=task))
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    peft_model.save_pretrained(str(path))
    config = json.loads((path / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(base)
    (path / "adapter_config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("case", sorted(CASES))
def test_an_adapter_saved_over_the_head_class_equals_peft_merged(tmp_path, case):
    """Refused before (exit 4 "names no module of the base (read as 'model.layers.0.self_attn.q_proj')"): the
    adapter's names were read as they are, though the family's loader reads the base's weights under that prefix."""
    from peft import PeftModel
    from safetensors import safe_open

    builder, saved_over, task, targets, prefix, vectors = CASES[case]
    base = builder(tmp_path / "base")
    adapter = tmp_path / "lora"
    _save_adapter(saved_over(base), adapter, base, task, targets)
    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as file:
        assert all(name.startswith(f"base_model.model.{prefix}.") for name in file.keys())
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = vectors(PeftModel.from_pretrained(saved_over(base), str(adapter)).eval().merge_and_unload())
        unadapted = vectors(saved_over(base).eval())
        got = _load(adapter).embed(IDS, torch.ones_like(IDS))
    assert not torch.allclose(reference, unadapted, atol=1e-3)  # the adapter changes the vectors
    np.testing.assert_allclose(got.numpy(), reference.float().numpy(), atol=1e-5)


def test_an_adapter_naming_the_lm_head_is_still_refused(tmp_path, cli):
    """Past the prefix, a module the backbone lacks (LoRA on ``lm_head``, which tokembed never runs) stays exit 4
    naming it: the prefix is the loader's, not a guess."""
    from raw_checkpoints import build_raw_decoder
    from transformers import Qwen2ForCausalLM

    base = build_raw_decoder(tmp_path / "base")
    adapter = tmp_path / "lora"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _save_adapter(Qwen2ForCausalLM.from_pretrained(str(base)), adapter, base, "CAUSAL_LM", ["q_proj", "lm_head"])
    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"id": "a", "text": "mars is the red planet"}\n')
    result = cli("encode", docs, "--model", adapter, "-o", tmp_path / "index")
    assert result.exit_code == 4, result.stderr
    # peft saves the tied head's own weight beside its LoRA: either one is refused, named as saved and as read
    assert "adapter tensor 'base_model.model.lm_head." in result.stderr and "(read as 'lm_head" in result.stderr
    assert not (tmp_path / "index" / "manifest.json").exists()


def test_serve_lora_module_saved_over_the_causal_lm_class(tmp_path):
    """``serve --lora-modules`` places the adapter's tensors as ``encode`` does (it refused this one at start-up)."""
    from peft import PeftModel

    from tokembed.embedder import Embedder
    from tokembed.serve import ServeOptions
    from tokembed.serve.lora import attach_adapters
    from tokembed.settings import EncodeFlags

    builder, saved_over, task, targets, _, vectors = CASES["Qwen2ForCausalLM"]
    base = builder(tmp_path / "base")
    adapter = tmp_path / "lora"
    _save_adapter(saved_over(base), adapter, base, task, targets)
    views = attach_adapters(Embedder.load(str(base), EncodeFlags()), ServeOptions(lora_modules=(("causal", str(adapter)),)))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = vectors(PeftModel.from_pretrained(saved_over(base), str(adapter)).eval().get_base_model())  # unmerged
        got = views["causal"][1](input_ids=IDS, attention_mask=torch.ones_like(IDS)).last_hidden_state
    np.testing.assert_allclose(got.numpy(), reference.numpy(), atol=1e-5)


def test_a_text_adapter_loads_without_peft_renaming_its_base(checkpoint, tmp_path, cli):
    """peft warned "The PEFT config's `base_model_name_or_path` was renamed from '<base>' to 'None'" on every text
    adapter encode and score (tokembed's backbone has no name_or_path), though the right base was loaded; the
    manifest still records the adapter's base."""
    base = checkpoint("pylate_bert")
    adapter = _text_adapter(base, tmp_path / "lora")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _load(adapter)
    assert not [w for w in caught if "base_model_name_or_path" in str(w.message)], [str(w.message) for w in caught]
    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"id": "a", "text": "mars is the red planet"}\n')
    assert cli("encode", docs, "--model", adapter, "-o", tmp_path / "index").exit_code == 0
    assert manifest(tmp_path / "index")["model"]["base"]["path"] == str(base.resolve())
