"""Huge rows cost what they keep: a long text is tokenized only as far as ``max_length`` needs, with exactly
the ids that tokenizing the whole text and truncating give (WordPiece, byte-level BPE, SentencePiece-style
Unigram), and a 20 MB row (document or query) adds little to peak RSS (measured in a subprocess)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap

import pytest

import text_tokenizers
from helpers import write_parquet
from tokembed.models.long_text import tokenize_long

PIECES = [
    *text_tokenizers._WORDS, *text_tokenizers._SUBWORDS, *text_tokenizers._CJK,
    "Émoji", "🎉", "naïve", "e\u0301", "ﬁ", "Ⅻ", "١٢٣", "12345678", "3.14", "...", "—", "!!", "'s", "[Q]",
    "x" * 120, "ab" * 70,  # words past WordPiece's 100-character limit ([UNK] whole, never in pieces)
]
SPACES = [" ", " ", " ", "  ", "\n", "\n\n", "\t", "   \n ", " " * 40, "\u3000", "\r\n"]


def long_text(seed: int, words: int = 600) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice(PIECES) + rng.choice(SPACES) for _ in range(words))


def whole_then_truncate(tokenizer, text: str, max_length: int) -> list[int]:
    return tokenizer(text, truncation=True, max_length=max_length, verbose=False)["input_ids"]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory, minilm_path):
    from transformers import AutoTokenizer

    built = {
        "wordpiece (tiny BERT)": text_tokenizers._bert_tokenizer(tmp_path_factory.mktemp("bert")),
        "wordpiece (all-MiniLM-L6-v2)": AutoTokenizer.from_pretrained(minilm_path),
        "byte-level BPE (ModernBERT)": text_tokenizers._modernbert_tokenizer(),
        "byte-level BPE (Qwen2, llama-3 split)": text_tokenizers._qwen2_tokenizer(),
        "sentencepiece unigram (XLM-R, Metaspace)": text_tokenizers._xlmr_tokenizer(),
    }
    assert all(tokenizer.is_fast for tokenizer in built.values())
    return built


def test_window_ids_equal_whole_text_ids(tokenizers):
    """Cuts at every kind of boundary (inside a word, a multi-byte or combining sequence, a whitespace run, a
    120-character word), with ``max_length`` set so that the window holds just one or two tokens more than
    it keeps: exactly where taking the window's first tokens without checking them goes wrong."""
    for name, tokenizer in tokenizers.items():
        specials = tokenizer.num_special_tokens_to_add(pair=False)
        for seed in range(2):
            text = long_text(seed)
            for first_window in range(20, 320, 7):
                n = len(tokenizer(text[:first_window], add_special_tokens=False, verbose=False)["input_ids"])
                for max_length in {2, 128, *(max(2, n + specials - back) for back in (0, 1, 2))}:
                    got = tokenize_long(tokenizer, text, max_length, first_window=first_window)
                    assert got == whole_then_truncate(tokenizer, text, max_length), (name, seed, first_window, max_length)


def test_an_added_token_the_window_would_cut_is_read_whole():
    """Added tokens are matched before the words are split: a window ending inside Qwen's 20-character
    ``<|object_ref_start|>`` read it as the words of its pieces, and one piece could be kept as a token."""
    from tokembed.models.long_text import read_otherwise_before_added_token_fix, window_chars

    tokenizer = text_tokenizers._qwen2_tokenizer()
    token = "<|object_ref_start|>"
    tokenizer.add_special_tokens({"additional_special_tokens": [token]})
    cut = window_chars(64)
    for lead in range(1, len(token)):  # the token starts ``lead`` characters before the window's cut
        head = token * ((cut - lead) // len(token)) + "x" * ((cut - lead) % len(token))
        text = head + token + " the end." * 2_000
        kept = len(tokenizer(head, add_special_tokens=False)["input_ids"]) + 1
        for max_length in (kept - 1, kept, kept + 1):
            assert tokenize_long(tokenizer, text, max_length) == whole_then_truncate(tokenizer, text, max_length), lead
        assert read_otherwise_before_added_token_fix(tokenizer, text, 64)  # an earlier release's window split it
    plain = "Paris is the capital. " + token + " the end." * 2_000
    assert not read_otherwise_before_added_token_fix(tokenizer, plain, 64)
    assert not read_otherwise_before_added_token_fix(tokenizer, plain[:500], 64)


ENTITY = "[ENTITY_MARKER_START]"  # 21 characters: longer than the window's 16-character margin


def cut_through(tokenizer, spelled: str, glued: str = "") -> None:
    """A spaced-out text (20 characters a token, so that the kept tokens reach the window's cut) that holds
    ``spelled``, after ``glued``, with the window cutting into it at every position, every ``max_length`` near it."""
    from tokembed.models.long_text import window_chars

    cut = window_chars(64)
    for lead in range(len(spelled) + 1):  # the token starts ``lead`` characters before the cut
        start = cut - lead - len(glued)
        filler = ("the" + " " * 17) * (start // 20)
        head = filler + " " * (start - len(filler)) + glued
        text = head + spelled + " the end." * 300
        kept = len(tokenizer(head, add_special_tokens=False)["input_ids"]) + tokenizer.num_special_tokens_to_add()
        for max_length in range(kept - 4 - len(glued) // 2, kept + 3):
            want = whole_then_truncate(tokenizer, text, max_length)
            assert tokenize_long(tokenizer, text, max_length) == want, (spelled, lead, max_length)


def native_bert_with(folder, minilm_path, token: str, normalized: bool):
    """all-MiniLM-L6-v2 read by tokembed's own BertTokenizer, ``[unused1]`` renamed to the added ``token``."""
    from tokembed.models.bert_tokenizer import BertTokenizer

    for name in os.listdir(minilm_path):
        (folder / name).symlink_to(minilm_path / name)
    (folder / "tokenizer.json").unlink()
    spec = json.loads((minilm_path / "tokenizer.json").read_text())
    spec["model"]["vocab"][token] = spec["model"]["vocab"].pop("[unused1]")
    spec["added_tokens"].append({
        "id": spec["model"]["vocab"][token], "content": token, "single_word": False, "lstrip": False,
        "rstrip": False, "normalized": normalized, "special": not normalized,  # as add_tokens / add_special_tokens save
    })
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    return BertTokenizer(folder)


@pytest.fixture(scope="module")
def native_bert_with_a_long_special_token(tmp_path_factory, minilm_path):
    return native_bert_with(tmp_path_factory.mktemp("minilm_entity"), minilm_path, ENTITY, normalized=False)


def test_the_native_bert_tokenizer_keeps_a_cut_added_token_whole(native_bert_with_a_long_special_token):
    """The native tokenizer lists its added tokens as transformers' do: a window cut 17-20 characters into
    ``[ENTITY_MARKER_START]`` kept its ``[`` where the whole text keeps the token (the rule never saw it)."""
    tokenizer = native_bert_with_a_long_special_token
    cut_through(tokenizer, ENTITY)


@pytest.mark.parametrize("spelled", [ENTITY.lower(), "[Éntity_marker_stàrt]", "entity-marker-start"])
def test_an_added_token_matched_after_normalizing_is_kept_whole(minilm_path, spelled):
    """A ``normalized`` added token matches the lowercased, accent-stripped text, a spelling the window's cut
    cannot find in the raw text: it ended inside ``[entity_marker_start]`` and kept a piece of it."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    tokenizer.add_tokens([ENTITY, "ENTITY-MARKER-START"])
    assert len(tokenizer.tokenize(f"a {spelled} b")) == 3
    cut_through(tokenizer, spelled)


def test_an_added_token_matched_after_nfkc_is_kept_whole():
    """Full-width characters NFKC folds (XLM-R's normalizer) spell the same added token."""
    tokenizer = text_tokenizers._xlmr_tokenizer()
    # split at its spaces when cut; long, as <mask>'s lstrip rule keeps 22 characters before its first non-space
    token = "< start of an entity mention >"
    tokenizer.add_tokens([token])
    spelled = "".join("\u3000" if c == " " else chr(ord(c) + 0xFEE0) for c in token)  # ＜　ｓｔａｒｔ　ｏｆ...
    assert tokenizer.tokenize(f"a {spelled} b").count(token) == 1
    cut_through(tokenizer, spelled)


@pytest.mark.parametrize("gap", [12, 30])
@pytest.mark.parametrize("token", ["new york city", "new york stock exchange"])
def test_an_added_token_spelled_with_runs_of_spaces_is_kept_whole(token, gap):
    """XLM-R's normalizer collapses runs of spaces: ``new{30 spaces}york{30 spaces}city`` is the added token, its
    spelling far longer than the token and the margin. A window cut inside it kept ``▁new`` where the whole text
    keeps ``▁`` and the token; now the window's ids are checked against a window twice as long, which holds it."""
    tokenizer = text_tokenizers._xlmr_tokenizer()
    tokenizer.add_tokens([token])  # normalized, as add_tokens saves it
    spelled = (" " * gap).join(token.split(" "))
    assert tokenizer.tokenize(f"a {spelled} b").count(token) == 1
    cut_through(tokenizer, spelled)


SOFT_HYPHENED = "[en\u00adti\u00adty\u00ad_\u00adst\u00adart]"  # 19 characters; BertNormalizer deletes U+00AD


def test_an_added_token_spelled_with_soft_hyphens_is_kept_whole(minilm_path):
    """A 14-character added token (within the margin, so no reach) spelled with soft hyphens, 19 characters: the
    window cut 17-18 characters into it kept ``[`` where the whole text keeps ``[entity_start]``."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    tokenizer.add_tokens(["[entity_start]"])
    assert tokenizer.tokenize(f"a {SOFT_HYPHENED} b") == ["a", "[entity_start]", "b"]
    cut_through(tokenizer, SOFT_HYPHENED)


def test_the_native_bert_tokenizer_keeps_a_soft_hyphened_added_token_whole(tmp_path, minilm_path):
    tokenizer = native_bert_with(tmp_path, minilm_path, "[entity_start]", normalized=True)
    assert tokenizer.tokenize(f"a {SOFT_HYPHENED} b") == ["a", "[entity_start]", "b"]
    cut_through(tokenizer, SOFT_HYPHENED)


def spaced_words_then(spelled: str, lead: int, words: int = 61) -> str:
    """``words`` words spread over the first window, then ``spelled`` starting ``lead`` characters before its cut."""
    from tokembed.models.long_text import window_chars

    start = window_chars(64) - lead
    head = "".join("word" + " " * (start // words - 4) for _ in range(words))
    return head + " " * (start - len(head)) + spelled + " tail" * 800


def test_an_upgrade_encodes_again_exactly_the_rows_the_release_before_read_wrong(tmp_path, minilm_path):
    """The release before kept the first window its rules accepted and saw no added token of the native BERT
    tokenizer. A soft-hyphened ``[entity_marker_start]`` (``normalized``) that its first window cut 25 characters
    in kept ``[`` as the 62nd token: that row gets a mark (encoded again by the first run after the upgrade). Rows
    it read right keep the hash it wrote (no mark, as it gave none with this tokenizer): a long exact-spelled
    token cut by the window past the kept tokens, another lead, and every row of all-MiniLM-L6-v2 as shipped."""
    from tokembed.embedder import Embedder
    from tokembed.settings import EncodeFlags

    def content_mark(folder, text: str) -> str:
        encoder = Embedder.load(str(folder), EncodeFlags(kind="document", max_length=64), "cpu").encoder
        return encoder.content_mark(text)

    def first_window_right(folder, text: str) -> bool:
        tokenizer = Embedder.load(str(folder), EncodeFlags(kind="document", max_length=64), "cpu").model.tokenizer
        return whole_then_truncate(tokenizer, text[:1024], 64) == whole_then_truncate(tokenizer, text, 64)

    soft = tmp_path / "soft"
    soft.mkdir()
    native_bert_with(soft, minilm_path, "[entity_marker_start]", normalized=True)
    misread = spaced_words_then("[entity_marker" + "\u00ad" * 60 + "_start]", lead=25)
    assert not first_window_right(soft, misread)  # the window the release before kept
    assert content_mark(soft, misread) == "an unchecked window read otherwise than the text"
    assert content_mark(soft, spaced_words_then("[entity_marker" + "\u00ad" * 60 + "_start]", lead=10)) == ""

    exact = tmp_path / "exact"
    exact.mkdir()
    native_bert_with(exact, minilm_path, ENTITY, normalized=False)
    cut_inside = ("word " * 300)[: 1024 - 5] + ENTITY + " tail" * 300
    assert first_window_right(exact, cut_inside)
    assert content_mark(exact, cut_inside) == ""
    for seed in range(3):
        assert content_mark(minilm_path, long_text(seed, words=3000)) == ""


def test_long_specials_the_release_before_read_right_keep_its_mark():
    """Qwen2's 20-character ``<|object_ref_start|>``: the release before moved its window past the token and read
    the row right, marking it ``read_otherwise_before_added_token_fix``; the row keeps that mark and no other."""
    from tokembed.models.long_text import (
        read_otherwise_before_added_token_fix, read_otherwise_by_unchecked_windows, window_chars,
    )

    tokenizer = text_tokenizers._qwen2_tokenizer()
    token = "<|object_ref_start|>"
    tokenizer.add_special_tokens({"additional_special_tokens": [token]})
    for lead in (5, 17, 19):
        text = ("word " * 400)[: window_chars(64) - lead] + token + " the end." * 2_000
        assert read_otherwise_before_added_token_fix(tokenizer, text, 64)
        assert not read_otherwise_by_unchecked_windows(tokenizer, text, 64)
        text = spaced_words_then(token, lead, words=60)
        assert read_otherwise_before_added_token_fix(tokenizer, text, 64)
        assert not read_otherwise_by_unchecked_windows(tokenizer, text, 64)


@pytest.mark.parametrize("token", ["C-DD", "C-DD-DD-DD-DD-DD-DD"])
def test_a_word_glued_to_a_cut_added_token_is_not_kept(token):
    """Unigram segments a word as a whole: the word glued to an added token ends at it in the whole text
    (``ab ab ab ...``) but runs on into its pieces in the window (``a ba ba ... bc``), every piece other, however
    far back the word starts. So the kept tokens' word must end before the token, not only the kept tokens."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pieces = [("<unk>", -20.0), *((c, -10.0) for c in "abcdeht-")]
    pieces += [("ab", -1.0), ("ba", -1.0), ("bc", -0.5), ("the", -1.0)]
    backend = Tokenizer(models.Unigram(pieces, unk_id=0, byte_fallback=False))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")
    tokenizer.add_tokens([token])  # normalized: matches the lowercase spelling, which the window's cut cannot find
    spelled = token.lower()
    assert tokenizer.tokenize("abab" + spelled) == ["ab", "ab", spelled]
    assert tokenizer.tokenize("ababc-d") == ["a", "ba", "bc", "-", "d"]
    cut_through(tokenizer, spelled, glued="ab" * 20)


@pytest.mark.parametrize("run", [" ", " \n"])
def test_whitespace_an_lstrip_token_past_the_cut_would_swallow(tokenizers, run):
    """``[MASK]`` / ``<mask>`` match with ``lstrip``: in the whole text they take every whitespace character to
    their left, however many; a window cut before (or inside) them leaves that whitespace as tokens of its own."""
    for name, tokenizer in tokenizers.items():
        for mask in ("[MASK]", "<mask>"):
            for spaces in (500, 999, 1100):
                text = "Paris is the capital. " + run * spaces + mask + " the end." * 300
                for max_length in (8, 16, 40):
                    got = tokenize_long(tokenizer, text, max_length)
                    assert got == whole_then_truncate(tokenizer, text, max_length), (name, mask, spaces, max_length)


def test_window_is_a_small_prefix_when_words_are_short(tokenizers):
    """Not a fallback in disguise: the ids are right even when the text past the window is garbage."""
    for name, tokenizer in tokenizers.items():
        text = long_text(7, words=400)
        poisoned = text + "\0 unreadable tail " * 100_000
        got = tokenize_long(tokenizer, poisoned, 64)
        assert got == whole_then_truncate(tokenizer, text, 64), name


def test_texts_without_word_breaks_fall_back_to_the_whole_text(tokenizers):
    for name, tokenizer in tokenizers.items():
        text = "漢字" * 3000 + "z" * 5000
        assert tokenize_long(tokenizer, text, 40, first_window=50) == whole_then_truncate(tokenizer, text, 40), name


def test_encoder_uses_windows_with_the_same_ids(checkpoint):
    """Through TextEncoder (prefix and special tokens as in a real run), short and huge texts in one batch."""
    from tokembed.embedder import Embedder
    from tokembed.settings import EncodeFlags

    embedder = Embedder.load(str(checkpoint("stanford")), EncodeFlags(kind="document"), "cpu")
    tokenizer, settings = embedder.model.tokenizer, embedder.settings
    texts = ["short text", long_text(3, words=3000), "", long_text(4, words=5000)]
    got = [item.ids.tolist() for item in embedder.encoder.tokenize(texts)]
    want = tokenizer([settings.prefix + t for t in texts], truncation=True, max_length=settings.max_length)["input_ids"]
    assert got == want


PEAK_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from cli.main import run

    model, work = sys.argv[1], sys.argv[2]
    def peak_mb():  # VmHWM, not ru_maxrss: that one carries pytest's own peak over the fork and exec
        return int([line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM")][0]) / 1024

    peaks = {}
    assert run(["encode", f"{work}/short.parquet", "--model", model, "-o", f"{work}/short", "-q"]) == 0
    assert run(["score", "--query", "short query", f"{work}/short", "-q", "-f", "jsonl"]) == 0
    peaks["short"] = peak_mb()
    assert run(["encode", f"{work}/huge.parquet", "--model", model, "-o", f"{work}/huge", "-q"]) == 0
    peaks["huge_row"] = peak_mb()
    assert run(["score", f"{work}/queries.txt", f"{work}/short", "-q", "-f", "tsv"]) == 0  # jsonl echoes the query
    peaks["huge_query"] = peak_mb()
    print("PEAKS " + json.dumps(peaks))
    """
)


@pytest.mark.slow
def test_a_20mb_row_and_query_keep_peak_rss_in_bounds(checkpoint, tmp_path):
    """Tokenizing 20 MB whole took ~3.4 GB; now the row costs its text (a few copies of 20 MB) and little more.
    The corpus files are written here, so the subprocess's peak is tokembed's own."""
    words = ("lorem ipsum dolor sit amet, consectetur adipiscing elit 3.14 naïve 東京 " * 300_000)[:20_000_000]
    write_parquet(tmp_path / "short.parquet", [{"id": "a", "text": "a short row"}, {"id": "b", "text": "just short"}])
    write_parquet(tmp_path / "huge.parquet", [{"id": "a", "text": "a short row"}, {"id": "b", "text": words}])
    (tmp_path / "queries.txt").write_text(words + "\n", encoding="utf-8")
    del words
    script = tmp_path / "peak.py"
    script.write_text(PEAK_SCRIPT)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.getcwd()}
    result = subprocess.run(
        [sys.executable, str(script), str(checkpoint("stanford")), str(tmp_path)], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    [line] = [l for l in result.stdout.splitlines() if l.startswith("PEAKS ")]
    peaks = json.loads(line.removeprefix("PEAKS "))
    assert peaks["huge_row"] - peaks["short"] < 200, peaks
    assert peaks["huge_query"] - peaks["short"] < 200, peaks


@pytest.mark.parametrize("text", ["", "plain", "é東京\udc80🙂 " * 5000, "x" * (3 * (1 << 20) + 5)])
def test_content_hash_in_slices_equals_the_whole_text_hash(text, monkeypatch):
    """Hashing a huge text a slice at a time must give the digest every existing index stores (the whole
    UTF-8 text), whatever the slice size, or every nightly re-run would re-encode every row."""
    import hashlib

    import tokembed.plan as plan

    want = hashlib.sha256(b"fingerprint\0" + text.encode("utf-8", "surrogatepass")).digest()
    assert plan.content_hash("fingerprint", text) == want
    monkeypatch.setattr(plan, "_HASH_SLICE", 7)
    assert plan.content_hash("fingerprint", text) == want


FILE_PEAK_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from cli.main import run

    model, work, suffix = sys.argv[1], sys.argv[2], sys.argv[3]
    def peak_mb():
        return int([line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM")][0]) / 1024

    peaks = {}
    for name in ("short", "huge"):
        assert run(["encode", f"{work}/{name}{suffix}", "--model", model, "-o", f"{work}/{name}", "-q"]) == 0
        peaks[name] = peak_mb()
    print("PEAKS " + json.dumps(peaks))
    """
)


def test_a_huge_jsonl_line_is_held_about_twice_not_three_times(checkpoint, tmp_path):
    """A 40 MB line: its bytes and its text while decoding, then its text and the parsed value (~80 MB). It was
    ~3x (bytes, a stripped copy, json's own decoded copy and the value: +292 MB for a 100 MB line)."""
    size = 40_000_000
    words = ("lorem ipsum dolor sit amet " * (size // 27 + 1))[:size]
    for name, text in (("short", words[:3000]), ("huge", words)):
        with open(tmp_path / f"{name}.jsonl", "w", encoding="utf-8") as handle:
            handle.write(json.dumps({"id": "a", "text": "a short row"}) + "\n")
            handle.write(json.dumps({"id": "b", "text": text}) + "\n")
    del words
    assert huge_minus_short_mb(checkpoint, tmp_path, ".jsonl") < 2.5 * size / 2**20


def huge_minus_short_mb(checkpoint, folder, suffix: str) -> float:
    """Peak RSS of encoding ``huge{suffix}`` less that of ``short{suffix}``, in one fresh process."""
    (folder / "peak.py").write_text(FILE_PEAK_SCRIPT)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.getcwd()}
    result = subprocess.run([sys.executable, str(folder / "peak.py"), str(checkpoint("stanford")), str(folder), suffix],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    [line] = [l for l in result.stdout.splitlines() if l.startswith("PEAKS ")]
    peaks = json.loads(line.removeprefix("PEAKS "))
    return peaks["huge"] - peaks["short"]


def test_a_huge_parquet_cell_is_held_about_twice_not_four_times(checkpoint, tmp_path):
    """A 40 MB cell (snappy, as pyarrow writes by default) is read page by page: its decompressed page and its
    text (~80 MB). pyarrow's reader held the compressed chunk, the page, the column's buffers and then the
    text (+392 MB for a 100 MB cell)."""
    size = 40_000_000
    words = ("lorem ipsum dolor sit amet " * (size // 27 + 1))[:size]
    for name, text in (("short", words[:3000]), ("huge", words)):
        write_parquet(tmp_path / f"{name}.parquet", [{"id": "a", "text": "a short row"}, {"id": "b", "text": text}])
    del words
    assert huge_minus_short_mb(checkpoint, tmp_path, ".parquet") < 2.5 * size / 2**20


def test_rows_an_earlier_release_windowed_past_an_lstrip_token_are_encoded_again(cli, checkpoint, tmp_path, monkeypatch):
    """Releases before the lstrip rule could give such long texts other ids under the same content hash: the hash
    now names the new reading for exactly those rows, so the first incremental run after the upgrade encodes them
    again (as a rebuild would) and carries every other row."""
    from tokembed.models import steps

    model = checkpoint("pylate_xlmr")  # XLM-R: <mask> matches with lstrip
    rows = [{"id": f"marked-{k}", "text": "Paris is the capital. " + " " * k + "<mask>" + " the end." * 300} for k in range(3)]
    rows += [{"id": "long", "text": "Paris is the capital. the end." * 300}, {"id": "short", "text": "a <mask> b"}]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(row) + "\n" for row in rows))
    index = tmp_path / "index"
    encode = ("encode", corpus, "--model", model, "-o", index, "--log-format", "json")
    with monkeypatch.context() as patch:  # the hashes an earlier release wrote: no mark
        patch.setattr(steps, "read_otherwise_before_lstrip_fix", lambda *args: False)
        assert cli(*encode).exit_code == 0
    upgraded = cli(*encode)
    assert upgraded.exit_code == 0, upgraded.output
    summary = json.loads(upgraded.stdout.strip().splitlines()[-1])
    assert (summary["updated"], summary["unchanged"]) == (3, 2)
    again = json.loads(cli(*encode).stdout.strip().splitlines()[-1])
    assert (again["updated"], again["unchanged"]) == (0, 5)
