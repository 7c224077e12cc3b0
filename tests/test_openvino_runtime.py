"""``TOKEMBED_CPU_RUNTIME=openvino``: the native BERT backbone's forward in OpenVINO (``models/openvino_backbone.py``).

Same vectors as torch within the parity tolerance (max |Δ| <= 1e-5 on the normalized vectors), the same token
ids, the same bytes run after run, and the converted model read from the cache on later loads."""

from __future__ import annotations

import threading

import numpy as np
import openvino
import pytest

from tokembed.embedder import Embedder
from tokembed.errors import UsageError
from tokembed.models import openvino_backbone
from tokembed.settings import EncodeFlags

TEXTS = ["how do I sort a list", "a short one", "Return a new sorted list from the items in iterable. " * 12, "x"]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKEMBED_CACHE", str(tmp_path))
    return tmp_path / "openvino"


def embed(monkeypatch, runtime: str, dtype: str = "float32", model=None):
    monkeypatch.setenv(openvino_backbone.RUNTIME_VARIABLE, runtime)
    embedder = Embedder.load(model and str(model), EncodeFlags(store_dtype="float32", dtype=dtype))
    return embedder, embedder.embed(TEXTS, batch_tokens=64)  # several batches: both lanes take some


def assert_close(expected, got):
    for (want, want_ids), (vectors, ids) in zip(expected, got, strict=True):
        assert np.array_equal(ids, want_ids)
        assert np.abs(vectors - want).max() <= 1e-5


def test_openvino_gives_torchs_vectors_and_the_same_bytes_each_run(cache, monkeypatch):
    _, expected = embed(monkeypatch, "torch")
    embedder, got = embed(monkeypatch, "openvino")
    assert isinstance(embedder.model.backbone, openvino_backbone.OpenVinoBackbone)
    for (want, want_ids), (vectors, ids) in zip(expected, got):
        assert np.array_equal(ids, want_ids)
        assert np.abs(vectors - want).max() <= 1e-5
    _, again = embed(monkeypatch, "openvino")
    assert all(np.array_equal(a, b) for (a, _), (b, _) in zip(got, again))


def test_the_converted_model_is_read_from_the_cache(cache, monkeypatch):
    embed(monkeypatch, "openvino")
    assert sorted(p.suffix for p in cache.iterdir()) == [".bin", ".sha256", ".xml"]

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(openvino, "convert_model", no_conversion)
    _, got = embed(monkeypatch, "openvino")
    assert len(got) == len(TEXTS)


def test_bfloat16_in_openvino_stays_close_to_float32(cache, monkeypatch):
    _, expected = embed(monkeypatch, "torch")
    _, got = embed(monkeypatch, "openvino", dtype="bfloat16")
    cosines = np.concatenate([(a * b).sum(axis=1) for (a, _), (b, _) in zip(expected, got)])
    assert cosines.min() >= 0.999


def test_an_unknown_runtime_is_refused(monkeypatch):
    monkeypatch.setenv(openvino_backbone.RUNTIME_VARIABLE, "onnx")
    with pytest.raises(UsageError, match="TOKEMBED_CPU_RUNTIME"):
        Embedder.load(None, EncodeFlags())


def test_serve_refuses_lora_adapters_on_an_openvino_backbone(cache, monkeypatch):
    """peft would patch torch modules the compiled model never runs: refused, not served as the base."""
    from tokembed.serve.lora import attach_adapters
    from tokembed.serve.options import ServeOptions

    embedder, _ = embed(monkeypatch, "openvino")
    with pytest.raises(UsageError, match="no torch weights"):
        attach_adapters(embedder, ServeOptions(lora_modules=(("mine", "/nonexistent/adapter"),)))


def test_the_first_inference_runs_on_the_loading_thread(cache, monkeypatch):
    """Lanes must never make the process's first OpenVINO inference concurrently (a deadlock in the binding's lazy
    numpy set-up, see ``first_inference_here``): loading has already run one, on the loading thread."""
    calls = []
    forward = openvino_backbone.OpenVinoBackbone.forward

    def recorded(self, *args, **kwargs):
        calls.append(threading.current_thread())
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(openvino_backbone.OpenVinoBackbone, "forward", recorded)
    monkeypatch.setenv(openvino_backbone.RUNTIME_VARIABLE, "openvino")
    Embedder.load(None, EncodeFlags(store_dtype="float32"))
    assert calls == [threading.current_thread()]


def test_a_cache_that_cannot_be_written_warns_and_still_encodes(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would go")
    monkeypatch.setenv("TOKEMBED_CACHE", str(blocker))
    _, expected = embed(monkeypatch, "torch")
    with caplog.at_level("WARNING", logger="tokembed"):
        embedder, got = embed(monkeypatch, "openvino")
    assert isinstance(embedder.model.backbone, openvino_backbone.OpenVinoBackbone)
    assert "cannot keep the OpenVINO model" in caplog.text and str(blocker) in caplog.text
    for (want, _), (vectors, _) in zip(expected, got):
        assert np.abs(vectors - want).max() <= 1e-5


@pytest.mark.slow  # as for the .xml changed where it still parses (~10-16 s: two conversions)
def test_an_unreadable_cached_model_is_converted_again(cache, monkeypatch, caplog):
    embed(monkeypatch, "openvino")
    (xml,) = cache.glob("*.xml")
    xml.write_text("<net broken")
    with caplog.at_level("WARNING", logger="tokembed"):
        _, got = embed(monkeypatch, "openvino")
    assert "cannot be read" in caplog.text
    assert xml.read_text().startswith("<?xml")  # replaced by a whole conversion
    _, expected = embed(monkeypatch, "torch")
    for (want, _), (vectors, _) in zip(expected, got):
        assert np.abs(vectors - want).max() <= 1e-5


def test_weights_changed_in_place_are_converted_again(cache, monkeypatch, minilm_path, tmp_path):
    """The cache was named by the sampled fingerprint, which a tensor changed in the middle of the file keeps (a
    LoRA merged into the query weights and saved back): the old conversion's vectors, exit 0."""
    import os
    import shutil

    from safetensors.torch import load_file, save_file

    model = tmp_path / "minilm"
    shutil.copytree(minilm_path, model)
    embed(monkeypatch, "openvino", model=model)
    weights = model / "model.safetensors"
    state = load_file(str(weights))
    state["encoder.layer.2.attention.self.query.weight"] *= 0.5
    stat = weights.stat()
    save_file(state, str(weights), metadata={"format": "pt"})
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the same size and mtime
    _, expected = embed(monkeypatch, "torch", model=model)
    embedder, got = embed(monkeypatch, "openvino", model=model)
    assert isinstance(embedder.model.backbone, openvino_backbone.OpenVinoBackbone)
    assert_close(expected, got)
    assert len(list(cache.glob("*.xml"))) == 2


@pytest.mark.slow  # as for weights changed in place: the source's digest (~10-15 s: two conversions)
def test_a_config_changed_in_place_is_converted_again(cache, monkeypatch, minilm_path, tmp_path):
    """The cache was named by the weights alone: an edited ``config.json`` (``layer_norm_eps``; for an adapter,
    ``lora_alpha``) reused the old conversion, whose vectors were the old config's (0.066 off), exit 0."""
    import json
    import shutil

    model = tmp_path / "minilm"
    shutil.copytree(minilm_path, model)
    embed(monkeypatch, "openvino", model=model)
    config = json.loads((model / "config.json").read_text())
    config["layer_norm_eps"] = 0.5
    (model / "config.json").write_text(json.dumps(config))
    _, expected = embed(monkeypatch, "torch", model=model)
    embedder, got = embed(monkeypatch, "openvino", model=model)
    assert isinstance(embedder.model.backbone, openvino_backbone.OpenVinoBackbone)
    assert_close(expected, got)
    assert len(list(cache.glob("*.xml"))) == 2


@pytest.mark.slow  # as for the .xml: the kept files' digests (~10-15 s: two conversions)
def test_a_damaged_cached_weights_file_of_the_same_size_is_converted_again(cache, monkeypatch, caplog):
    embed(monkeypatch, "openvino")
    (weights,) = cache.glob("*.bin")
    with open(weights, "r+b") as handle:
        handle.seek(weights.stat().st_size // 2)
        handle.write(bytes(1 << 20))
    with caplog.at_level("WARNING", logger="tokembed"):
        _, got = embed(monkeypatch, "openvino")
    assert "its sha256 differs" in caplog.text
    _, expected = embed(monkeypatch, "torch")
    assert_close(expected, got)


@pytest.mark.slow  # its siblings (weights changed in place, the record covering the weights alone) run by default
def test_a_cached_xml_changed_where_it_still_parses_is_converted_again(cache, monkeypatch, caplog):
    """Only the weights file was checked: one digit of a constant's offset in the .xml (it still parses) read
    another vector of the weights, and its vectors (0.15-0.38 off torch) were used without a word, exit 0."""
    import re

    embed(monkeypatch, "openvino")
    (xml,) = cache.glob("*.xml")
    text = xml.read_text()
    offset = re.search(r'element_type="f32" shape="1, 1, 384" offset="(\d+)" size="1536"', text)
    moved = offset.group(0).replace(f'offset="{offset.group(1)}"', f'offset="{int(offset.group(1)) + 4}"')
    xml.write_text(text.replace(offset.group(0), moved, 1))
    with caplog.at_level("WARNING", logger="tokembed"):
        _, got = embed(monkeypatch, "openvino")
    assert "its .xml is not the file that was kept (its sha256 differs)" in caplog.text
    assert offset.group(0) in xml.read_text() and moved not in xml.read_text()  # replaced by a whole conversion
    _, expected = embed(monkeypatch, "torch")
    assert_close(expected, got)


@pytest.mark.slow  # a conversion again, as the weights changed in place are (run by default)
def test_a_cache_entry_whose_record_covers_the_weights_alone_is_converted_again(cache, monkeypatch, caplog):
    """An entry kept before the .xml was checked too: its .xml was never checked, so it is not trusted."""
    embed(monkeypatch, "openvino")
    (record,) = cache.glob("*.sha256")
    record.write_text(record.read_text().splitlines()[1].split()[0])  # the earlier format: the .bin's digest alone

    def counted(*args, **kwargs):
        conversions.append(1)
        return convert(*args, **kwargs)

    conversions, convert = [], openvino.convert_model
    monkeypatch.setattr(openvino, "convert_model", counted)
    with caplog.at_level("WARNING", logger="tokembed"):
        embed(monkeypatch, "openvino")
    assert conversions == [1] and "the weights file's alone (an earlier format)" in caplog.text
    assert len(record.read_text().splitlines()) == 2


def test_a_small_vocabulary_converts(cache, monkeypatch, checkpoint):
    """The tracer's example ids were MiniLM's (2023): every BERT with fewer tokens crashed (exit 1)."""
    model = checkpoint("raw_encoder")
    _, expected = embed(monkeypatch, "torch", model=model)
    embedder, got = embed(monkeypatch, "openvino", model=model)
    assert isinstance(embedder.model.backbone, openvino_backbone.OpenVinoBackbone)
    assert_close(expected, got)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_backbone_that_does_not_convert_keeps_torch(cache, monkeypatch, caplog, dtype):
    """bfloat16: the converter's ``.float()`` widened the caller's backbone in place, so the fallback computed
    float32 on bfloat16-rounded weights (3.3e-3 off torch bfloat16) under a manifest saying torch/bfloat16."""
    def broken(*args, **kwargs):
        raise RuntimeError("Couldn't get TorchScript module by tracing")

    monkeypatch.setattr(openvino, "convert_model", broken)
    _, expected = embed(monkeypatch, "torch", dtype=dtype)
    with caplog.at_level("WARNING", logger="tokembed"):
        embedder, got = embed(monkeypatch, "openvino", dtype=dtype)
    assert not isinstance(embedder.model.backbone, openvino_backbone.OpenVinoBackbone)
    assert {str(tensor.dtype) for tensor in embedder.model.backbone.parameters()} == {f"torch.{dtype}"}
    assert "does not convert (Couldn't get TorchScript module by tracing): it keeps torch" in caplog.text
    assert all(np.array_equal(a, b) for (a, _), (b, _) in zip(expected, got))


def test_openvino_not_installed_is_a_usage_error(cache, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    with pytest.raises(UsageError, match="the openvino package is not installed"):
        embed(monkeypatch, "openvino")


def test_a_killed_save_leaves_no_staging_for_good(cache, monkeypatch):
    cache.mkdir(parents=True)
    dead = cache / "staging-999999999-0123abcd"  # no lock file beside it: its process is gone
    dead.mkdir()
    (dead / "half.bin").write_bytes(bytes(1024))
    embed(monkeypatch, "openvino")
    assert not dead.exists()
    assert not [p for p in cache.iterdir() if p.is_dir()]


def test_no_home_and_no_cache_variable_still_encodes(monkeypatch):
    """A container's arbitrary user has no HOME and no passwd entry: ``Path.home()`` raised (exit 1)."""
    from pathlib import Path

    from tokembed.cache import cache_root

    monkeypatch.delenv("TOKEMBED_CACHE", raising=False)

    def no_home():
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    assert cache_root() is None
    _, expected = embed(monkeypatch, "torch")
    _, got = embed(monkeypatch, "openvino")
    assert_close(expected, got)
    monkeypatch.setenv("TOKEMBED_CACHE", "~/somewhere")
    assert cache_root() == Path("~/somewhere").expanduser()


def test_the_runtime_is_recorded_and_a_rerun_with_the_other_re_encodes(cache, monkeypatch, tmp_path, cli):
    """Nothing recorded the runtime: a re-run with the other one carried every row's vectors beside its own new
    rows' (bfloat16: 5.8e-3 apart). torch's indexes keep their fingerprint (the field hashes only when not torch)."""
    import json

    from helpers import read_index, write_parquet

    corpus = write_parquet(tmp_path / "c.parquet", [{"id": f"d{i}", "text": text} for i, text in enumerate(TEXTS)])
    out = tmp_path / "index"
    monkeypatch.setenv(openvino_backbone.RUNTIME_VARIABLE, "torch")
    assert cli("encode", corpus, "-o", out, "--quiet").exit_code == 0
    torch_manifest = json.loads((out / "manifest.json").read_text())
    assert torch_manifest["settings"]["runtime"] == "torch"
    monkeypatch.setenv(openvino_backbone.RUNTIME_VARIABLE, "openvino")
    result = cli("encode", corpus, "-o", out, "--log-format", "json")
    summary = json.loads(result.stdout)
    assert summary["full_rebuild"] is True and summary["unchanged"] == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["runtime"] == "openvino"
    assert manifest["settings_fingerprint"] != torch_manifest["settings_fingerprint"]
    again = json.loads(cli("encode", corpus, "-o", out, "--log-format", "json").stdout)
    assert again["unchanged"] == len(TEXTS)
    assert len(read_index(out)) == len(TEXTS)


def test_the_conversion_sends_no_telemetry(cache, monkeypatch):
    """OpenVINO's converter reports usage to Google Analytics unless a consent file declines it, from processes it
    forks off a thread (which hung a forked process of this test suite once)."""
    openvino_telemetry = pytest.importorskip("openvino_telemetry")
    sent = []
    monkeypatch.setattr(openvino_telemetry.Telemetry, "send_event", lambda self, *args, **kwargs: sent.append(args))
    monkeypatch.setattr(openvino_telemetry.Telemetry, "start_session", lambda self, *args, **kwargs: sent.append(args))
    embedder, _ = embed(monkeypatch, "openvino")
    assert isinstance(embedder.model.backbone, openvino_backbone.OpenVinoBackbone)
    assert sent == []


def test_importing_openvino_sends_no_telemetry(tmp_path):
    """A plain ``import openvino`` already sent a usage event to Google Analytics (``openvino.tools.ovc``'s import
    event, from a forked process) and wrote ``~/intel/openvino_ga_cid``; only the conversion had the stand-in."""
    import os
    import subprocess
    import sys

    script = ("from tokembed.models.openvino_backbone import import_openvino; import_openvino(); "
              "from openvino.tools.ovc import telemetry_stub, telemetry_utils; "
              "print(telemetry_utils.tm is telemetry_stub)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HOME": str(tmp_path)})
    assert (done.returncode, done.stdout.strip()) == (0, "True"), done.stderr
    assert not (tmp_path / "intel").exists()
