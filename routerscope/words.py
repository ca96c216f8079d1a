"""Words and parts of speech, and the alignment of model tokens to them.

    words = segment("吾輩は猫である。", "ja")       # fugashi: MeCab + unidic-lite
    words[0]                                        # Word(start=0, end=2, surface='吾輩', pos1='代名詞', ...)
    word_of_token = align(char_spans, words, len(text))

Japanese is segmented by fugashi (MeCab with the unidic-lite dictionary): pos1/pos2 are
UniDic's 品詞大分類/中分類 (名詞, 助詞 格助詞, ...), lemma is UniDic's lemma (the surface
when UniDic has none). Any other language is split by a regular expression: runs of
letters/digits (with inner apostrophes, "don't") are words, every other visible character is
its own word; pos1 is "word", "number" or "punct". Whitespace is never a word.

A token belongs to the word holding its first character. A token made only of whitespace
(SentencePiece's lone "▁") belongs to the next word, because SentencePiece writes a word's
leading space into the word's first piece. Byte-fallback tokens carry the character span of
the character they encode, so the three tokens of 吾 (<0xE5><0x90><0xBE>) all land in 吾輩.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import numpy as np

_LATIN_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*|[^\w\s]|_")


@dataclass(frozen=True)
class Word:
    """A word of a document: character span [start, end), surface, part of speech, lemma."""

    start: int
    end: int
    surface: str
    pos1: str
    pos2: str
    lemma: str


@functools.lru_cache(maxsize=1)
def _tagger():
    try:
        import fugashi
    except ImportError as err:  # a core dependency; only a broken install gets here
        raise ImportError("routerscope needs fugashi and unidic-lite for Japanese words: "
                          "pip install fugashi unidic-lite") from err
    try:
        import unidic_lite

        return fugashi.Tagger(f"-d {unidic_lite.DICDIR}")
    except ImportError:
        return fugashi.Tagger()


def _segment_japanese(text: str) -> list[Word]:
    words: list[Word] = []
    cursor = 0
    for node in _tagger()(text):
        surface = node.surface
        start = text.find(surface, cursor)
        if start < 0:  # MeCab normalised something; keep going without this node
            continue
        cursor = start + len(surface)
        feature = node.feature
        pos1 = getattr(feature, "pos1", None) or "*"
        if pos1 == "空白" or not surface.strip():
            continue
        lemma = getattr(feature, "lemma", None) or surface
        words.append(Word(start, cursor, surface, pos1, getattr(feature, "pos2", None) or "*", lemma))
    return words


def _segment_latin(text: str) -> list[Word]:
    words = []
    for match in _LATIN_WORD.finditer(text):
        surface = match.group()
        if surface[0].isdigit():
            pos = "number"
        elif surface[0].isalpha():
            pos = "word"
        else:
            pos = "punct"
        words.append(Word(match.start(), match.end(), surface, pos, "*", surface.lower()))
    return words


def segment(text: str, language: str | None) -> list[Word]:
    """Split ``text`` into words: fugashi/UniDic for ``language="ja"``, a regex otherwise.

    Usage: ``[w.surface for w in segment("名前はまだ無い。", "ja")]``."""
    if not isinstance(text, str):
        raise TypeError(f"segment() takes a str, got {type(text).__name__}")
    return _segment_japanese(text) if language == "ja" else _segment_latin(text)


def align(char_spans: np.ndarray, words: list[Word], text_length: int) -> np.ndarray:
    """Index into ``words`` of the word each token belongs to ([n_tokens] int32; -1 for a
    token with no character span, such as BOS, or when the text has no word).

    ``char_spans`` is [n_tokens, 2] character offsets from a fast tokenizer.
    Usage: ``align(np.array([[0, 1], [1, 2]]), segment("猫だ", "ja"), 2)``."""
    spans = np.asarray(char_spans, dtype=np.int64).reshape(-1, 2)
    result = np.full(len(spans), -1, dtype=np.int32)
    if not words or text_length == 0:
        return result
    owner = np.full(text_length, -1, dtype=np.int64)
    starts = np.fromiter((w.start for w in words), dtype=np.int64, count=len(words))
    lengths = np.fromiter((w.end - w.start for w in words), dtype=np.int64, count=len(words))
    first = np.cumsum(lengths) - lengths
    chars = np.arange(lengths.sum()) - np.repeat(first, lengths) + np.repeat(starts, lengths)
    owner[chars] = np.repeat(np.arange(len(words)), lengths)
    covered = np.flatnonzero(owner >= 0)
    # A character outside every word (whitespace) belongs to the next word, or the last one.
    nxt = np.minimum(np.searchsorted(covered, np.arange(text_length)), len(covered) - 1)
    filled = owner[covered[nxt]]
    start, end = spans[:, 0], spans[:, 1]
    valid = (start >= 0) & (end > start) & (start < text_length)
    # The first character decides; a leading space belongs to the word after it.
    result[valid] = filled[start[valid]]
    return result
