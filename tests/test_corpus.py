"""Corpus loading: every kind of source, and a clear error for each kind of bad input."""

from __future__ import annotations

import json
import re

import pytest

from routerscope.corpus import Corpus, CorpusError, builtin, load_corpus


def test_builtin_has_300_pairs_across_registers():
    corpus = builtin()
    ja, en = corpus.select("ja"), corpus.select("en")
    assert len(ja) == len(en) >= 300
    assert ja.pair_ids == en.pair_ids and len(set(ja.pair_ids)) == len(ja)
    assert set(corpus.registers) == {"conversation", "news", "software", "science", "literary", "instructions"}
    kana = re.compile(r"[\u3040-\u30ff]")
    assert all(kana.search(t) for t in ja.texts)
    assert not any(kana.search(t) for t in en.texts)
    lengths = [len(t) for t in ja.texts]
    assert min(lengths) < 15 and max(lengths) > 35  # varied in length


def test_text_file_lines_and_paragraphs(tmp_path):
    lines = tmp_path / "lines.txt"
    lines.write_text("吾輩は猫である。\n名前はまだ無い。\n\n", encoding="utf-8")
    assert load_corpus(lines, "ja", split="lines").texts == ["吾輩は猫である。", "名前はまだ無い。"]
    paragraphs = tmp_path / "para.txt"
    paragraphs.write_text("It was a\nbright day.\n\n吾輩は\n猫である。\n\nEnd.\n", encoding="utf-8")
    corpus = load_corpus(paragraphs, "xx")
    assert corpus.texts == ["It was a bright day.", "吾輩は猫である。", "End."]
    assert corpus.languages == ["xx"] * 3 and corpus.pair_ids == [-1] * 3
    assert len(load_corpus(paragraphs, "xx", max_docs=2)) == 2


def test_jsonl_fields(tmp_path):
    path = tmp_path / "c.jsonl"
    rows = [{"body": "猫です", "lang": "ja", "pair": 0}, {"body": "A cat.", "lang": "en", "pair": 0}]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    corpus = load_corpus(path, text_field="body", language_field="lang", pair_field="pair")
    assert corpus.texts == ["猫です", "A cat."] and corpus.languages == ["ja", "en"] and corpus.pair_ids == [0, 0]
    with pytest.raises(CorpusError, match=r"no field 'text'; its fields are \['body', 'lang', 'pair'\]"):
        load_corpus(path)


def test_dataset_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"text": ["一つ目", "two"], "lang": ["ja", "en"]}).save_to_disk(tmp_path / "ds")
    corpus = load_corpus(tmp_path / "ds", language_field="lang")
    assert corpus.texts == ["一つ目", "two"] and corpus.languages == ["ja", "en"]
    datasets.DatasetDict({"a": datasets.Dataset.from_dict({"text": ["x"]}),
                          "b": datasets.Dataset.from_dict({"text": ["y"]})}).save_to_disk(tmp_path / "dd")
    with pytest.raises(CorpusError, match=r"holds splits \['a', 'b'\]; choose one"):
        load_corpus(tmp_path / "dd")
    assert load_corpus(tmp_path / "dd", split="b").texts == ["y"]


def test_token_limit(mixtral_tokenizer):
    corpus = load_corpus("builtin", "ja", max_tokens=100, tokenizer=mixtral_tokenizer)
    counts = [len(mixtral_tokenizer(t)["input_ids"]) for t in corpus.texts]
    assert sum(counts[:-1]) < 100 <= sum(counts)


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_corpus(tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(CorpusError, match="no non-empty document"):
        load_corpus(empty)
    sjis = tmp_path / "sjis.txt"
    sjis.write_bytes("吾輩は猫である".encode("shift_jis"))
    with pytest.raises(CorpusError, match="not UTF-8.*iconv"):
        load_corpus(sjis)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "ok"}\n{not json\n', encoding="utf-8")
    with pytest.raises(CorpusError, match="line 2 is not JSON"):
        load_corpus(broken)
    with pytest.raises(ValueError, match="max_tokens needs tokenizer"):
        load_corpus("builtin", max_tokens=5)


def test_concat_keeps_labels():
    a = Corpus(["x"], ["ja"], [3], "a")
    b = Corpus(["y", "z"], ["en", "en"], name="b")
    both = Corpus.concat([a, b])
    assert both.languages == ["ja", "en", "en"] and both.pair_ids == [3, -1, -1]


def test_hub_dataset_offline_gives_the_fix(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CorpusError, match="needs network access to the hub; offline, save it once"):
        load_corpus("hf:routerscope-tests/no-such-dataset", "ja", max_docs=3)
