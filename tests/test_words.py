"""Word segmentation (fugashi + unidic-lite for Japanese) and token-to-word alignment with the
real Mixtral tokenizer, on real Japanese and English text."""

from __future__ import annotations

import json

import numpy as np
import pytest

import routerscope
from routerscope import align, segment

from conftest import tiny_mixtral

UNIDIC_POS1 = {"名詞", "代名詞", "動詞", "形容詞", "形状詞", "副詞", "連体詞", "接続詞", "感動詞", "助詞", "助動詞", "接頭辞",
               "接尾辞", "記号", "補助記号", "空白"}


def test_japanese_words_come_from_unidic():
    words = segment("吾輩は猫である。名前はまだ無い。", "ja")
    assert [w.surface for w in words] == ["吾輩", "は", "猫", "で", "ある", "。", "名前", "は", "まだ", "無い", "。"]
    assert [w.pos1 for w in words[:4]] == ["代名詞", "助詞", "名詞", "助動詞"]
    assert words[1].pos2 == "係助詞" and words[4].lemma == "有る"
    text = "吾輩は猫である。"
    assert all(text[w.start:w.end] == w.surface for w in segment(text, "ja"))


def test_whitespace_is_never_a_word():
    text = "名前は　まだ\n無い。 LibreOffice の「ヘルプ」"
    words = segment(text, "ja")
    assert all(w.surface.strip() for w in words)
    assert all(text[w.start:w.end] == w.surface for w in words)


def test_english_regex_words():
    words = segment("Don't panic: 42 cats.", "en")
    assert [(w.surface, w.pos1) for w in words] == [("Don't", "word"), ("panic", "word"), (":", "punct"),
                                                    ("42", "number"), ("cats", "word"), (".", "punct")]


def test_align_byte_fallback_and_lone_space():
    text = "吾輩は 猫"
    words = segment(text, "ja")
    # 吾 as three byte tokens, 輩 as three, は, a lone "▁" (the space), 猫; BOS has no span.
    spans = np.array([[0, 0], [0, 1], [0, 1], [0, 1], [1, 2], [1, 2], [1, 2], [2, 3], [3, 4], [4, 5]])
    spans[0] = [-1, -1]
    got = align(spans, words, len(text))
    assert got.tolist() == [-1, 0, 0, 0, 0, 0, 0, 1, 2, 2]


def assert_every_token_has_its_word(tr):
    real = ~tr.special
    assert (tr.word_ids[real] >= 0).all(), tr.tokens[real & (tr.word_ids < 0)][:20]
    assert (tr.word_ids[tr.special] == -1).all()
    starts, ends = tr.word_start[tr.word_ids[real]], tr.word_end[tr.word_ids[real]]
    token_start = tr.char_spans[real, 0]
    # The token's first character is inside its word, or is whitespace right before it.
    inside = (starts <= token_start) & (token_start < ends)
    texts = tr.texts[tr.doc_ids[real]]
    before = np.array([t[s:w].strip() == "" for t, s, w in zip(texts, token_start, starts)])
    assert (inside | (before & (token_start < starts))).all()


@pytest.mark.shared_data
def test_alignment_on_real_text_with_the_mixtral_tokenizer(shared_data, mixtral_tokenizer):
    ja = [line for line in (shared_data / "soseki" / "wagahai.ja.txt").read_text("utf-8").splitlines()[1:40]
          if line.strip()][:12]
    en = [" ".join(p.split()) for p in (shared_data / "soseki" / "botchan.en.txt").read_text("utf-8").split("\n\n")
          if p.strip()][10:22]
    pairs = [json.loads(line) for line in
             (shared_data / "lohelp" / "pairs.en-ja.jsonl").read_text("utf-8").splitlines()[:30]]
    texts = ja + en + [p["ja"] for p in pairs] + [p["en"] for p in pairs]
    langs = ["ja"] * len(ja) + ["en"] * len(en) + ["ja"] * len(pairs) + ["en"] * len(pairs)
    tr = routerscope.trace(tiny_mixtral(layers=1, hidden=32), texts, mixtral_tokenizer, language=langs,
                           progress=False, max_length=4096)
    assert_every_token_has_its_word(tr)
    byte_tokens = np.char.startswith(tr.tokens, "<0x")
    assert byte_tokens.sum() > 10  # rare kanji really fell back to bytes
    ja_pos = set(tr.word_pos1[np.isin(tr.word_doc, np.flatnonzero(tr.doc_languages == "ja"))].tolist())
    assert {"名詞", "助詞", "動詞", "補助記号"} <= ja_pos <= UNIDIC_POS1
    # Per-POS question: Japanese particles vs nouns each get routed somewhere in every layer.
    frame = tr.select(language="ja", exclude_special=True).to_frame()
    assert {"助詞", "名詞"} <= set(frame["pos1"])
