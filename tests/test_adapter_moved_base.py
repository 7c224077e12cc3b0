"""An adapter index whose base folder moved: ``score`` and ``serve`` reach the base with ``--base-model`` (checked
against the index as ``--model`` is), a cron ``encode`` with it sees the same model, and every error that says to
pass the base names a flag the command has. ``score`` had no ``--base-model`` (exit 2), ``score --model`` loaded the
recorded base folder again (exit 4), and that error hinted at the missing flag and called the base ``--model``."""

from __future__ import annotations

import copy
import json
import shutil

import pytest

from colpali_engine_checkpoints import build_adapter
from helpers import manifest, write_jsonl


def _adapter(base, folder):
    from tokembed.models.registry import load_model

    return build_adapter(copy.deepcopy(load_model(base).backbone), folder, str(base.resolve()),
                         target_modules=r".*attention\.(self\.(query|value)|output\.dense)$")


def _score(cli, index, *flags):
    return cli("score", index, "--query", "red planet", "--query", "cats", "-f", "jsonl", *flags)


@pytest.fixture
def moved(checkpoint, tmp_path, cli):
    """(index, adapter, the base's new folder, corpus, score's output before the move) of an index encoded with
    ``--base-model`` whose base folder was then moved."""
    base = checkpoint("pylate_bert")
    adapter = _adapter(base, tmp_path / "lora")
    docs = write_jsonl(tmp_path / "docs.jsonl", [{"id": "a", "text": "mars is the red planet"},
                                                 {"id": "b", "text": "cats sleep all day"}])
    index = tmp_path / "index"
    assert cli("encode", docs, "--model", adapter, "--base-model", base, "-o", index, "-q").exit_code == 0
    before = _score(cli, index)
    assert before.exit_code == 0, before.stderr
    return index, adapter, shutil.move(base, tmp_path / "base_moved"), docs, before.stdout


def test_score_and_serve_reach_a_moved_base_with_base_model(moved, cli):
    from tokembed.serve import EmbeddingService, ServeOptions

    index, adapter, base, _, before = moved
    gone = _score(cli, index)
    assert gone.exit_code == 4 and "base model folder" in gone.stderr and "is gone" in gone.stderr
    assert "pass the base with --base-model" in gone.stderr
    assert _score(cli, index, "--model", adapter).exit_code == 4  # the adapter alone still names the old base
    for flags in (("--base-model", base), ("--model", adapter, "--base-model", base)):
        scored = _score(cli, index, *flags)
        assert scored.exit_code == 0, scored.stderr
        assert scored.stdout == before

    served = cli("serve", "--index", index, "--port", 0)
    assert served.exit_code == 4 and "pass the base with --base-model" in served.stderr
    service = EmbeddingService.load(None, "cpu", ServeOptions(), index=str(index), base_model=str(base))
    try:
        assert service.embedder.resolved.base.path == base.resolve()
        assert service.embedder.fingerprint == manifest(index)["model"]["fingerprint"]
    finally:
        service.close()


def test_another_base_is_refused_as_another_model_is(moved, cli, tmp_path):
    from safetensors.torch import load_file, save_file

    from tokembed.errors import ModelMismatchError
    from tokembed.serve import EmbeddingService, ServeOptions

    index, _, base, _, _ = moved
    other = shutil.copytree(base, tmp_path / "other_base")
    tensors = load_file(str(other / "model.safetensors"))
    name = next(key for key in sorted(tensors) if key.endswith("query.weight"))
    tensors[name] = tensors[name] + 0.25
    save_file(tensors, str(other / "model.safetensors"))
    refused = _score(cli, index, "--base-model", other)
    assert refused.exit_code == 5, refused.stderr
    assert "is not the base of adapter" in refused.stderr and "pass the index's base with --base-model" in refused.stderr
    with pytest.raises(ModelMismatchError, match="is not the base of adapter"):
        EmbeddingService.load(None, "cpu", ServeOptions(), index=str(index), base_model=str(other))


def test_cron_encode_with_the_moved_base_keeps_every_row(moved, cli):
    index, adapter, base, docs, before = moved
    again = cli("encode", docs, "--model", adapter, "--base-model", base, "-o", index, "--log-format", "json")
    assert again.exit_code == 0, again.stderr
    summary = json.loads(again.stdout)
    assert summary["unchanged"] == 2 and summary["added"] + summary["updated"] == 0, summary
    assert manifest(index)["flags"]["base_model"] == str(base.resolve())
    scored = _score(cli, index)  # the manifest records the base where it is now
    assert scored.exit_code == 0 and scored.stdout == before, scored.stderr


def test_each_hint_names_a_flag_its_command_has(moved, cli, checkpoint, tmp_path):
    index, adapter, base, docs, _ = moved
    encoded = cli("encode", docs, "--model", adapter, "-o", tmp_path / "other-index")
    assert encoded.exit_code == 4, encoded.stderr
    assert "base_model_name_or_path in" in encoded.stderr and "pass the base with --base-model" in encoded.stderr
    assert "--model '" not in encoded.stderr  # the base was called --model
    missing = _score(cli, index, "--base-model", tmp_path / "nosuch")
    assert missing.exit_code == 4 and "its base (--base-model) cannot be found" in missing.stderr
    assert "no such checkpoint folder" in missing.stderr and "--model '" not in missing.stderr

    plain = tmp_path / "plain-index"
    assert cli("encode", docs, "--model", checkpoint("pylate_bert"), "-o", plain, "-q").exit_code == 0
    refused = _score(cli, plain, "--base-model", base)
    assert refused.exit_code == 2 and "applies to PEFT adapters only" in refused.stderr
    assert "leave --base-model out" in refused.stderr and "--base-revision" not in refused.stderr


def test_an_empty_base_model_is_a_usage_error_naming_the_flag(moved, cli):
    """``--base-model "$BASE"`` with the variable unset: exit 2 as ``--model ""`` is (it was exit 4 'names no base',
    though the adapter names one)."""
    index, adapter, _, corpus, _ = moved
    for result in (cli("encode", corpus, "--model", adapter, "--base-model", "", "-o", index, "-q"),
                   _score(cli, index, "--base-model", " ")):
        assert result.exit_code == 2 and "--base-model is empty" in result.stderr, result.stderr
