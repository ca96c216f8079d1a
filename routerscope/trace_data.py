"""``Trace``: the routing of every real token in every MoE layer, as compact numpy arrays.

    tr = routerscope.trace(model, texts, tokenizer, language="ja")
    tr.experts[i, l, 0]          # first-choice expert of token i in MoE layer tr.layers[l]
    tr.select(language="ja", layers=[0]).utilization()   # counts, layers x experts
    tr.save("ja.rstrace"); routerscope.Trace.load("ja.rstrace")

Per token: ``experts`` [n, L, k] (slot 0 = highest weight), ``weights`` [n, L, k] (the
renormalised weights the experts received), optional ``probs`` [n, L, E], ``token_ids``,
``tokens``, ``doc_ids``, ``positions`` (index within the document), ``special`` (BOS/EOS and
other special tokens), ``char_spans`` (character offsets into the document's text, -1 when
unknown), ``word_ids`` (index into the word table, -1 when none).
Per document: ``texts``, ``doc_languages``, ``pair_ids`` (translation pair, -1 when none).
Per word: ``word_table`` (a DataFrame: doc, start, end, surface, pos1, pos2, lemma).

The file format is a numpy ``.npz`` archive without object arrays (``allow_pickle=False``
on load, so opening a stranger's file cannot run code) plus a JSON header with a format
version. Writes are atomic: an interrupted save leaves no half file.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from ._io import temporary_beside

FORMAT_NAME = "routerscope-trace"
FORMAT_VERSION = 1

_TOKEN_FIELDS = ("experts", "weights", "token_ids", "tokens", "doc_ids", "positions", "special", "char_spans",
                 "word_ids")
_DOC_FIELDS = ("texts", "doc_languages", "pair_ids")
_WORD_FIELDS = ("word_doc", "word_start", "word_end", "word_surface", "word_pos1", "word_pos2", "word_lemma")


class TraceFileError(ValueError):
    """A file that is not a readable routerscope trace."""


def expert_dtype(n_experts: int) -> np.dtype:
    return np.dtype(np.uint8) if n_experts <= 255 else np.dtype(np.int16)


@dataclass(eq=False)
class Trace:
    """Routing of every real token in every MoE layer. See the module docstring for fields."""

    experts: np.ndarray
    weights: np.ndarray
    token_ids: np.ndarray
    tokens: np.ndarray
    doc_ids: np.ndarray
    positions: np.ndarray
    special: np.ndarray
    char_spans: np.ndarray
    word_ids: np.ndarray
    texts: np.ndarray
    doc_languages: np.ndarray
    pair_ids: np.ndarray
    layers: np.ndarray
    n_experts: int
    top_k: int
    model_name: str = ""
    probs: np.ndarray | None = None
    word_doc: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    word_start: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    word_end: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    word_surface: np.ndarray = field(default_factory=lambda: np.zeros(0, "<U1"))
    word_pos1: np.ndarray = field(default_factory=lambda: np.zeros(0, "<U1"))
    word_pos2: np.ndarray = field(default_factory=lambda: np.zeros(0, "<U1"))
    word_lemma: np.ndarray = field(default_factory=lambda: np.zeros(0, "<U1"))

    def __post_init__(self) -> None:
        n = len(self.token_ids)
        for name in _TOKEN_FIELDS:
            if len(getattr(self, name)) != n:
                raise ValueError(f"Trace.{name} has {len(getattr(self, name))} rows, expected {n} (one per token)")
        if self.experts.shape[1:] != (len(self.layers), self.top_k):
            raise ValueError(f"Trace.experts has shape {self.experts.shape}, expected (n, {len(self.layers)}, "
                             f"{self.top_k})")
        if self.probs is not None and self.probs.shape != (n, len(self.layers), self.n_experts):
            raise ValueError(f"Trace.probs has shape {self.probs.shape}, expected ({n}, {len(self.layers)}, "
                             f"{self.n_experts})")
        n_docs = len(self.texts)
        for name in _DOC_FIELDS:
            if len(getattr(self, name)) != n_docs:
                raise ValueError(f"Trace.{name} has {len(getattr(self, name))} rows, expected {n_docs} (one per doc)")

    # -- views ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.token_ids)

    def __repr__(self) -> str:
        langs = ", ".join(f"{lang}: {count}" for lang, count in zip(*np.unique(self.languages, return_counts=True)))
        return (f"Trace(model={self.model_name!r}, tokens={len(self)}, docs={self.n_docs}, "
                f"layers={len(self.layers)}, experts={self.n_experts}, top_k={self.top_k}, "
                f"languages={{{langs}}}, probs={'yes' if self.probs is not None else 'no'})")

    @property
    def n_docs(self) -> int:
        return len(self.texts)

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def languages(self) -> np.ndarray:
        """Language of each token (its document's)."""
        return self.doc_languages[self.doc_ids]

    @property
    def word_table(self) -> pd.DataFrame:
        """One row per word: doc, start, end, surface, pos1, pos2, lemma (UniDic for Japanese)."""
        return pd.DataFrame({"doc": self.word_doc, "start": self.word_start, "end": self.word_end,
                             "surface": self.word_surface, "pos1": self.word_pos1, "pos2": self.word_pos2,
                             "lemma": self.word_lemma})

    @property
    def token_pos1(self) -> np.ndarray:
        """Part of speech (pos1) of the word each token belongs to; "" when none."""
        if len(self.word_pos1) == 0:
            return np.full(len(self), "", dtype="<U1")
        return np.where(self.word_ids >= 0, self.word_pos1[np.maximum(self.word_ids, 0)], "")

    # -- selection --------------------------------------------------------------------------
    def select(self, language: str | Sequence[str] | None = None, docs: Iterable[int] | None = None,
               layers: Iterable[int] | None = None, exclude_special: bool = False,
               tokens: np.ndarray | None = None) -> "Trace":
        """A Trace of a subset: whole documents by language and/or id, MoE layers by layer
        number (as in ``self.layers``), optionally without special tokens, and only the
        tokens where the boolean mask ``tokens`` is True.

        Usage: ``tr.select(language="ja", layers=[0, 31], exclude_special=True)``.
        Document ids are kept, so a selection still lines up with its source."""
        keep = np.ones(len(self), dtype=bool) if tokens is None else np.asarray(tokens, dtype=bool).copy()
        if len(keep) != len(self):
            raise ValueError(f"tokens= must be a boolean mask of {len(self)} tokens, got {len(keep)}")
        if language is not None:
            wanted = [language] if isinstance(language, str) else list(language)
            unknown = sorted(set(wanted) - set(self.doc_languages.tolist()))
            if unknown:
                raise ValueError(f"no document has language {unknown}; this trace has "
                                 f"{sorted(set(self.doc_languages.tolist()))}")
            keep &= np.isin(self.languages, wanted)
        if docs is not None:
            keep &= np.isin(self.doc_ids, np.asarray(list(docs), dtype=np.int64))
        if exclude_special:
            keep &= ~self.special
        layer_slots = slice(None)
        new_layers = self.layers
        if layers is not None:
            wanted_layers = list(layers)
            missing = [layer for layer in wanted_layers if layer not in set(self.layers.tolist())]
            if missing:
                raise ValueError(f"layers {missing} are not MoE layers of this trace; it has {self.layers.tolist()}")
            layer_slots = [int(np.flatnonzero(self.layers == layer)[0]) for layer in wanted_layers]
            new_layers = self.layers[layer_slots]
        return replace(
            self,
            experts=self.experts[keep][:, layer_slots], weights=self.weights[keep][:, layer_slots],
            probs=None if self.probs is None else self.probs[keep][:, layer_slots],
            layers=np.asarray(new_layers),
            **{name: getattr(self, name)[keep] for name in _TOKEN_FIELDS if name not in ("experts", "weights")},
        )

    @staticmethod
    def concat(traces: Sequence["Trace"]) -> "Trace":
        """One Trace from several of the same model (e.g. a Japanese and an English one).
        Document ids (and word ids) of later traces are shifted past the earlier ones.

        Usage: ``both = Trace.concat([trace_ja, trace_en])``."""
        traces = list(traces)
        if not traces:
            raise ValueError("Trace.concat needs at least one trace")
        first = traces[0]
        for other in traces[1:]:
            if (other.n_experts, other.top_k, other.layers.tolist()) != (first.n_experts, first.top_k,
                                                                         first.layers.tolist()):
                raise ValueError("Trace.concat: traces differ in experts, top-k or layers "
                                 f"({first.n_experts}/{first.top_k}/{first.layers.tolist()} vs "
                                 f"{other.n_experts}/{other.top_k}/{other.layers.tolist()})")
            if other.model_name != first.model_name:
                raise ValueError(f"Trace.concat: traces come from different models ({first.model_name!r} vs "
                                 f"{other.model_name!r}); compare them with routerscope.compare instead")
        if len({t.probs is None for t in traces}) != 1:
            raise ValueError("Trace.concat: some traces stored router probabilities and some did not")
        doc_offsets = np.cumsum([0] + [t.n_docs for t in traces[:-1]])
        word_offsets = np.cumsum([0] + [len(t.word_doc) for t in traces[:-1]])
        pair_offsets = np.cumsum([0] + [int(t.pair_ids.max(initial=-1)) + 1 for t in traces[:-1]])
        cat = np.concatenate
        return replace(
            first,
            experts=cat([t.experts for t in traces]), weights=cat([t.weights for t in traces]),
            probs=None if first.probs is None else cat([t.probs for t in traces]),
            token_ids=cat([t.token_ids for t in traces]), tokens=cat([t.tokens for t in traces]),
            doc_ids=cat([t.doc_ids + off for t, off in zip(traces, doc_offsets)]).astype(np.int32),
            positions=cat([t.positions for t in traces]), special=cat([t.special for t in traces]),
            char_spans=cat([t.char_spans for t in traces]),
            word_ids=cat([np.where(t.word_ids >= 0, t.word_ids + off, -1)
                          for t, off in zip(traces, word_offsets)]).astype(np.int32),
            texts=cat([t.texts for t in traces]), doc_languages=cat([t.doc_languages for t in traces]),
            # Pair ids are only meaningful within one trace unless the caller made them global.
            pair_ids=cat([t.pair_ids for t in traces]) if _pairs_shared(traces) else cat(
                [np.where(t.pair_ids >= 0, t.pair_ids + off, -1) for t, off in zip(traces, pair_offsets)]),
            word_doc=cat([t.word_doc + off for t, off in zip(traces, doc_offsets)]).astype(np.int32),
            **{name: cat([getattr(t, name) for t in traces]) for name in _WORD_FIELDS if name != "word_doc"},
        )

    # -- analysis ---------------------------------------------------------------------------
    def utilization(self, normalize: bool = False) -> np.ndarray:
        """Assignments per layer and expert, [n_layers, n_experts]: every token counts once
        for each of its k experts, so rows sum to k x tokens. ``normalize=True`` gives the
        share of assignments (rows sum to 1; chance 1/n_experts)."""
        n, n_layers, k = self.experts.shape
        flat = self.experts.astype(np.int64) + (np.arange(n_layers, dtype=np.int64) * self.n_experts)[None, :, None]
        counts = np.bincount(flat.ravel(), minlength=n_layers * self.n_experts).reshape(n_layers, self.n_experts)
        if normalize:
            return counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        return counts

    def to_frame(self) -> pd.DataFrame:
        """Tidy table: one row per token, layer and rank (0 = first choice), with the token's
        document, language, position, text, word and part of speech."""
        n, n_layers, k = self.experts.shape
        token = np.repeat(np.arange(n), n_layers * k)
        has_words = len(self.word_surface) > 0
        word = np.maximum(self.word_ids, 0)
        frame = pd.DataFrame({
            "token_index": token,
            "doc_id": self.doc_ids[token],
            "language": self.languages[token],
            "position": self.positions[token],
            "token": self.tokens[token],
            "token_id": self.token_ids[token],
            "special": self.special[token],
            "word": np.where(self.word_ids >= 0, self.word_surface[word], "")[token] if has_words else "",
            "pos1": self.token_pos1[token],
            "layer": np.tile(np.repeat(self.layers, k), n),
            "rank": np.tile(np.arange(k), n * n_layers),
            "expert": self.experts.reshape(-1).astype(np.int64),
            "weight": self.weights.reshape(-1),
        })
        return frame

    # -- files --------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the trace to one ``.npz`` file atomically (temporary file, then rename)."""
        path = Path(path)
        header = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "n_experts": int(self.n_experts),
                  "top_k": int(self.top_k), "model_name": self.model_name, "has_probs": self.probs is not None}
        arrays = {name: getattr(self, name) for name in _TOKEN_FIELDS + _DOC_FIELDS + _WORD_FIELDS}
        arrays["layers"] = self.layers
        if self.probs is not None:
            arrays["probs"] = self.probs
        arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
        tmp = temporary_beside(path)
        try:
            with open(tmp, "wb") as handle:
                np.savez_compressed(handle, **arrays)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Trace":
        """Read a file written by :meth:`save`. Never unpickles anything.

        Usage: ``tr = Trace.load("out/trace.rstrace")``."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no trace file at {path}")
        hint = "write one with routerscope.trace(...).save(path) or `routerscope trace`"
        try:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files}
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
            raise TraceFileError(f"{path} is not a routerscope trace file or is corrupt ({err}); {hint}") from None
        if "header" not in arrays:
            raise TraceFileError(f"{path} is an npz archive but not a routerscope trace (no header); {hint}")
        try:
            header = json.loads(arrays.pop("header").tobytes().decode())
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise TraceFileError(f"{path}: the trace header is corrupt ({err}); {hint}") from None
        if header.get("format") != FORMAT_NAME:
            raise TraceFileError(f"{path} is not a routerscope trace (format {header.get('format')!r}); {hint}")
        if header.get("version") != FORMAT_VERSION:
            raise TraceFileError(f"{path} has trace format version {header.get('version')}, this routerscope reads "
                                 f"version {FORMAT_VERSION}; upgrade routerscope or re-create the trace")
        expected = set(_TOKEN_FIELDS + _DOC_FIELDS + _WORD_FIELDS + ("layers",))
        missing = sorted(expected - set(arrays))
        if missing:
            raise TraceFileError(f"{path} is missing arrays {missing}; the file is truncated or corrupt; {hint}")
        try:
            return cls(n_experts=header["n_experts"], top_k=header["top_k"], model_name=header["model_name"],
                       probs=arrays.pop("probs", None), **arrays)
        except (TypeError, ValueError) as err:
            raise TraceFileError(f"{path}: inconsistent trace ({err}); {hint}") from None

    def equals(self, other: "Trace") -> bool:
        """True when every field of both traces is identical (dtype and value)."""
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
                if a is None or b is None or a.dtype != b.dtype or a.shape != b.shape or not np.array_equal(a, b):
                    return False
            elif a != b:
                return False
        return True


def _pairs_shared(traces: Sequence[Trace]) -> bool:
    """Pair ids are kept as they are when each trace holds one side of the same pairs."""
    sets = [set(t.pair_ids[t.pair_ids >= 0].tolist()) for t in traces]
    return all(sets) and all(s == sets[0] for s in sets)
