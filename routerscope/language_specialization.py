"""Do experts specialise by language? Effect sizes with chance values, and document-level inference.

    res = specialization(trace, bound=0.05, alpha=0.05, permutations=2000)
    res.verdicts            # per layer: "language-specialised" / "equivalent to no specialisation
                            #            within ±0.05" / "inconclusive"
    res.to_frame()          # one row per layer (and per expert) with every number and its chance value

Conventions (see ../shared/notes/routing-statistics.md): u_L(e) is the share of assignments
of language L (sums to 1, chance 1/E); f_L(e) = k u_L(e) is the share of tokens having e in
their top-k (sums to k, chance k/E). Δ_e = f_a(e) − f_b(e) for the two languages a, b.

Per layer: entropy of u_L (bits and / log2 E); mutual information I(expert; language) with
the Miller–Madow correction, also / H(language); JS divergence of u_a and u_b; Cramér's V
(an effect size only); Δ_e and language purity per expert; consecutive-token agreement within
documents (Mixtral paper, Table 5) with its uniform and utilisation-matched chance values.

Inference never treats tokens as independent. Counts are aggregated per document once
(documents × layers × experts); then
  * permutation tests shuffle language labels across documents, or flip them within
    translation pairs when every document has a pair id; each permutation re-sums the
    document counts (one matrix product). p = (1 + #{null ≥ observed}) / (1 + B).
    Layer statistic: max_e |Δ_e|, Holm-corrected across layers; cell p-values (layer ×
    expert, |Δ_e|) are Benjamini–Hochberg-corrected across all cells.
  * bootstrap confidence intervals resample documents (pairs when paired) with replacement.
  * the split-half noise floor splits each language's documents in random halves and
    measures JSD and max|Δ| between the halves (95th percentile reported).
  * the equivalence test (TOST, as an intersection–union test over experts): a layer is
    equivalent to no specialisation when every expert's (1 − 2α) bootstrap interval of Δ_e
    lies inside (−bound, +bound).
Verdict per layer: "equivalent ..." if the equivalence test passes; else "language-specialised"
if the Holm-corrected permutation p-value is below α; else "inconclusive".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from math import comb

import numpy as np
import pandas as pd

from .metrics import js_divergence, routing_entropy
from .trace_data import Trace

SPECIALISED = "language-specialised"
INCONCLUSIVE = "inconclusive"


def equivalent_label(bound: float) -> str:
    return f"equivalent to no specialisation within ±{bound:g}"


def chance_any_shared(n_experts: int, top_k: int) -> float:
    """P(two uniform random top-k sets share an expert) = 1 − C(E−k, k) / C(E, k)."""
    return 1.0 - comb(n_experts - top_k, top_k) / comb(n_experts, top_k)


@dataclass
class DocumentCounts:
    """Assignments per document, layer and expert ([D, L, E]), tokens per document, and labels."""

    counts: np.ndarray
    tokens: np.ndarray
    is_a: np.ndarray  # True for documents of the first language
    pairs: np.ndarray | None  # [P, 2] document rows of each translation pair (a, b), or None
    doc_ids: np.ndarray

    @classmethod
    def from_trace(cls, trace: Trace, language_a: str, language_b: str, use_pairs: bool = True) -> "DocumentCounts":
        docs, inverse = np.unique(trace.doc_ids, return_inverse=True)
        n_docs, (n, n_layers, k) = len(docs), trace.experts.shape
        flat = (inverse[:, None, None] * n_layers + np.arange(n_layers)[None, :, None]) * trace.n_experts \
            + trace.experts.astype(np.int64)
        counts = np.bincount(flat.ravel(), minlength=n_docs * n_layers * trace.n_experts).reshape(
            n_docs, n_layers, trace.n_experts)
        tokens = np.bincount(inverse, minlength=n_docs)
        languages = trace.doc_languages[docs]
        is_a = languages == language_a
        pairs = None
        if use_pairs:
            pair_ids = trace.pair_ids[docs]
            rows_a = {p: i for i, (p, lang) in enumerate(zip(pair_ids, languages)) if p >= 0 and lang == language_a}
            rows_b = {p: i for i, (p, lang) in enumerate(zip(pair_ids, languages)) if p >= 0 and lang == language_b}
            common = sorted(set(rows_a) & set(rows_b))
            # Paired resampling only when every document belongs to exactly one complete pair.
            if common and 2 * len(common) == n_docs and len(rows_a) == len(rows_b) == len(common):
                pairs = np.array([[rows_a[p], rows_b[p]] for p in common])
        return cls(counts.astype(np.float64), tokens.astype(np.float64), is_a, pairs, docs)


def _shares_from(counts_a, tokens_a, counts_b, tokens_b):
    """Share of tokens f for each side: counts [..., L, E] / tokens [...]."""
    fa = counts_a / np.maximum(tokens_a, 1)[..., None, None]
    fb = counts_b / np.maximum(tokens_b, 1)[..., None, None]
    return fa, fb


def _mutual_information(ca, cb, k):
    """Miller–Madow corrected I(expert; language) in bits, per layer, from assignment counts
    [..., L, E] of each language; also returns H(language)."""
    na, nb = ca.sum(-1), cb.sum(-1)
    n = na + nb
    pooled = ca + cb

    def h_mm(c, total):
        p = c / np.maximum(total, 1)[..., None]
        m = (c > 0).sum(-1)
        return routing_entropy(p) + (m - 1) / (2 * np.maximum(total, 1) * np.log(2))

    pa, pb = na / np.maximum(n, 1), nb / np.maximum(n, 1)
    mi = h_mm(pooled, n) - pa * h_mm(ca, na) - pb * h_mm(cb, nb)
    h_lang = routing_entropy(np.stack([pa, pb], -1))
    return mi, h_lang


def _labelled_sums(dc: DocumentCounts, labels: np.ndarray):
    """Re-sum document counts under label matrices [B, D] (1 = language a): counts [B, L, E] and tokens [B]."""
    flat = dc.counts.reshape(len(dc.tokens), -1)
    total_counts, total_tokens = flat.sum(0), dc.tokens.sum()
    labels = labels.astype(np.float64)
    ca = (labels @ flat).reshape((len(labels),) + dc.counts.shape[1:])
    ta = labels @ dc.tokens
    return ca, ta, total_counts.reshape(dc.counts.shape[1:]) - ca, total_tokens - ta


def _null_labels(dc: DocumentCounts, rng, size: int) -> np.ndarray:
    n_docs = len(dc.tokens)
    if dc.pairs is not None:
        flips = rng.random((size, len(dc.pairs))) < 0.5
        labels = np.zeros((size, n_docs), dtype=bool)
        labels[:, dc.pairs[:, 0]] = ~flips
        labels[:, dc.pairs[:, 1]] = flips
        return labels
    keys = rng.random((size, n_docs))
    ranks = np.argsort(keys, axis=1)
    labels = np.zeros((size, n_docs), dtype=bool)
    np.put_along_axis(labels, ranks[:, : int(dc.is_a.sum())], True, axis=1)
    return labels


def _bootstrap_weights(dc: DocumentCounts, rng, size: int):
    """Resampling weights [B, D] for language a's and b's documents (pairs resampled jointly)."""
    n_docs = len(dc.tokens)
    wa = np.zeros((size, n_docs))
    wb = np.zeros((size, n_docs))
    if dc.pairs is not None:
        draws = rng.integers(0, len(dc.pairs), (size, len(dc.pairs)))
        for b in range(size):
            counts = np.bincount(draws[b], minlength=len(dc.pairs))
            wa[b, dc.pairs[:, 0]] = counts
            wb[b, dc.pairs[:, 1]] = counts
        return wa, wb
    rows_a, rows_b = np.flatnonzero(dc.is_a), np.flatnonzero(~dc.is_a)
    for rows, w in ((rows_a, wa), (rows_b, wb)):
        draws = rng.integers(0, len(rows), (size, len(rows)))
        for b in range(size):
            w[b, rows] = np.bincount(draws[b], minlength=len(rows))
    return wa, wb


def _weighted_sums(dc: DocumentCounts, w: np.ndarray):
    flat = dc.counts.reshape(len(dc.tokens), -1)
    return (w @ flat).reshape((len(w),) + dc.counts.shape[1:]), w @ dc.tokens


def holm(p: np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values."""
    p = np.asarray(p, dtype=float)
    order = np.argsort(p)
    m = len(p)
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order]).clip(max=1.0)
    out = np.empty(m)
    out[order] = adjusted
    return out


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (q-values) of a flat array."""
    p = np.asarray(p, dtype=float).ravel()
    m = len(p)
    order = np.argsort(p)
    ranked = p[order] * m / np.arange(1, m + 1)
    adjusted = np.minimum.accumulate(ranked[::-1])[::-1].clip(max=1.0)
    out = np.empty(m)
    out[order] = adjusted
    return out


def consecutive_agreement(trace: Trace) -> dict:
    """Mixtral Table 5 within documents: share of consecutive token pairs with the same first
    choice and with any shared top-k expert, per layer, with chance values."""
    same_doc = (trace.doc_ids[1:] == trace.doc_ids[:-1]) & (trace.positions[1:] == trace.positions[:-1] + 1)
    a, b = trace.experts[:-1][same_doc].astype(np.int64), trace.experts[1:][same_doc].astype(np.int64)
    first = (a[..., 0] == b[..., 0]).mean(0) if len(a) else np.full(trace.n_layers, np.nan)
    any_shared = (a[..., :, None] == b[..., None, :]).any(-1).any(-1).mean(0) if len(a) else first
    e, k = trace.n_experts, trace.top_k
    first_dist = np.stack([np.bincount(trace.experts[:, layer, 0].astype(np.int64), minlength=e)
                           for layer in range(trace.n_layers)]) / max(len(trace), 1)
    return {"pairs": int(same_doc.sum()), "first_choice": first, "any_shared": any_shared,
            "chance_first_uniform": 1.0 / e, "chance_any_uniform": chance_any_shared(e, k),
            "chance_first_matched": (first_dist ** 2).sum(1),
            "chance_any_matched": np.array([_matched_any_shared(trace.experts[:, layer], e)
                                            for layer in range(trace.n_layers)])}


def _matched_any_shared(experts: np.ndarray, n_experts: int) -> float:
    """P(two tokens drawn independently from the observed top-k sets share an expert)."""
    if comb(n_experts, experts.shape[1]) > 5000 or len(experts) == 0:
        return float("nan")  # too many possible sets to enumerate
    hot = np.zeros((len(experts), n_experts), dtype=bool)
    np.put_along_axis(hot, experts.astype(np.int64), True, axis=1)
    sets, counts = np.unique(hot, axis=0, return_counts=True)
    p = counts / counts.sum()
    disjoint = (sets.astype(np.int64) @ sets.T.astype(np.int64)) == 0
    return float(1.0 - p @ disjoint @ p)


@dataclass
class SpecializationResult:
    """Everything :func:`specialization` measured; ``to_frame()`` for a tidy table."""

    layers: np.ndarray
    languages: tuple[str, str]
    n_experts: int
    top_k: int
    bound: float
    alpha: float
    n_docs: dict
    n_tokens: dict
    paired: bool
    permutations: int
    bootstraps: int
    share_of_assignments: dict  # language -> [L, E]
    share_of_tokens: dict  # language -> [L, E]
    entropy_bits: dict  # language -> [L]
    mutual_information: np.ndarray
    mi_normalized: np.ndarray
    jsd_bits: np.ndarray
    cramers_v: np.ndarray
    delta: np.ndarray  # [L, E]
    purity: np.ndarray  # [L, E]: share of the expert's assignments from language a
    language_a_share: float
    max_abs_delta: np.ndarray
    p_layer: np.ndarray
    p_layer_holm: np.ndarray
    p_cell: np.ndarray
    q_cell: np.ndarray
    ci_mi: np.ndarray  # [L, 2]
    ci_jsd: np.ndarray
    ci_delta: np.ndarray  # [L, E, 2] at 1 - 2 alpha (the TOST interval)
    noise_jsd_95: np.ndarray
    noise_max_delta_95: np.ndarray
    consecutive: dict = field(default_factory=dict)  # see consecutive_agreement()
    verdicts: list = field(default_factory=list)

    def to_frame(self) -> pd.DataFrame:
        """One row per layer with its numbers, chance values and verdict."""
        a, b = self.languages
        k_over_e = self.top_k / self.n_experts
        rows = []
        for i, layer in enumerate(self.layers.tolist()):
            rows.append({
                "layer": layer, "verdict": self.verdicts[i],
                f"entropy_{a}_bits": self.entropy_bits[a][i], f"entropy_{b}_bits": self.entropy_bits[b][i],
                "entropy_max_bits": np.log2(self.n_experts),
                f"entropy_{a}_normalized": self.entropy_bits[a][i] / np.log2(self.n_experts),
                f"entropy_{b}_normalized": self.entropy_bits[b][i] / np.log2(self.n_experts),
                "mi_bits": self.mutual_information[i], "mi_ci_low": self.ci_mi[i, 0], "mi_ci_high": self.ci_mi[i, 1],
                "mi_over_H_language": self.mi_normalized[i],
                "jsd_bits": self.jsd_bits[i], "jsd_ci_low": self.ci_jsd[i, 0], "jsd_ci_high": self.ci_jsd[i, 1],
                "jsd_noise_floor_95": self.noise_jsd_95[i], "cramers_v": self.cramers_v[i],
                "max_abs_delta": self.max_abs_delta[i], "max_abs_delta_noise_95": self.noise_max_delta_95[i],
                "bound": self.bound, "p_perm": self.p_layer[i], "p_perm_holm": self.p_layer_holm[i],
                "chance_share_of_tokens": k_over_e, "chance_share_of_assignments": 1 / self.n_experts,
                "consecutive_first": self.consecutive["first_choice"][i],
                "consecutive_any": self.consecutive["any_shared"][i],
                "chance_consecutive_first": 1 / self.n_experts,
                "chance_consecutive_first_matched": self.consecutive["chance_first_matched"][i],
                "chance_consecutive_any": chance_any_shared(self.n_experts, self.top_k),
                "chance_consecutive_any_matched": self.consecutive["chance_any_matched"][i],
            })
        return pd.DataFrame(rows)

    def expert_frame(self) -> pd.DataFrame:
        """One row per layer and expert: Δ_e with its interval, q-value, purity, shares."""
        a, b = self.languages
        rows = []
        for i, layer in enumerate(self.layers.tolist()):
            for e in range(self.n_experts):
                rows.append({"layer": layer, "expert": e, "delta": self.delta[i, e],
                             "delta_ci_low": self.ci_delta[i, e, 0], "delta_ci_high": self.ci_delta[i, e, 1],
                             "p_perm": self.p_cell[i, e], "q_bh": self.q_cell[i, e],
                             f"share_of_tokens_{a}": self.share_of_tokens[a][i, e],
                             f"share_of_tokens_{b}": self.share_of_tokens[b][i, e],
                             f"purity_{a}": self.purity[i, e], f"{a}_share_of_all_tokens": self.language_a_share})
        return pd.DataFrame(rows)


def specialization(trace: Trace, by: str = "language", *, languages: tuple[str, str] | None = None,
                   bound: float = 0.05, alpha: float = 0.05, permutations: int = 2000, bootstraps: int = 1000,
                   split_halves: int = 200, exclude_special: bool = True, paired: bool = True,
                   seed: int = 0) -> SpecializationResult:
    """Test whether routing differs between two languages, layer by layer.

    Usage: ``specialization(trace, bound=0.05).to_frame()``; see the module docstring."""
    if by != "language":
        raise ValueError(f"by={by!r}: only by='language' is supported; use controls() for scripts and parts of speech")
    tr = trace.select(exclude_special=True) if exclude_special else trace
    present = sorted(set(tr.languages.tolist()))
    if languages is None:
        if len(present) != 2:
            raise ValueError(f"specialization compares two languages; this trace has {present}: pass languages=(a, b)")
        languages = ("ja", "en") if set(present) == {"ja", "en"} else tuple(present)
    a, b = languages
    missing = [lang for lang in (a, b) if lang not in present]
    if missing:
        raise ValueError(f"no tokens of language {missing} in this trace (it has {present})")
    tr = tr.select(language=[a, b])
    dc = DocumentCounts.from_trace(tr, a, b, use_pairs=paired)
    if dc.is_a.sum() < 2 or (~dc.is_a).sum() < 2:
        raise ValueError("each language needs at least 2 documents for document-level inference")
    rng = np.random.default_rng(seed)
    k, e_count = tr.top_k, tr.n_experts

    ca, ta, cb, tb = _labelled_sums(dc, dc.is_a[None, :])
    ca, cb, ta, tb = ca[0], cb[0], float(ta[0]), float(tb[0])
    fa, fb = ca / ta, cb / tb
    delta = fa - fb
    mi, h_lang = _mutual_information(ca, cb, k)
    jsd = js_divergence(fa / k, fb / k)
    table = np.stack([ca, cb], axis=-2)  # [L, 2, E]
    n = table.sum((-1, -2))
    expected = table.sum(-1, keepdims=True) * table.sum(-2, keepdims=True) / n[:, None, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        chi2 = np.where(expected > 0, (table - expected) ** 2 / expected, 0.0).sum((-1, -2))
    cramers_v = np.sqrt(chi2 / (n * (min(2, e_count) - 1)))
    with np.errstate(divide="ignore", invalid="ignore"):
        purity = np.where(ca + cb > 0, ca / (ca + cb), np.nan)

    # Permutation null, in chunks to bound memory.
    observed_cell = np.abs(delta)
    observed_max = observed_cell.max(-1)
    exceed_cell = np.zeros_like(observed_cell)
    exceed_max = np.zeros_like(observed_max)
    for start in range(0, permutations, 500):
        labels = _null_labels(dc, rng, min(500, permutations - start))
        pa, pta, pb, ptb = _labelled_sums(dc, labels)
        null = np.abs(pa / pta[:, None, None] - pb / ptb[:, None, None])
        exceed_cell += (null >= observed_cell - 1e-12).sum(0)
        exceed_max += (null.max(-1) >= observed_max - 1e-12).sum(0)
    p_cell = (1 + exceed_cell) / (1 + permutations)
    p_layer = (1 + exceed_max) / (1 + permutations)

    # Bootstrap over documents (pairs), chunked.
    boot_delta, boot_mi, boot_jsd = [], [], []
    for start in range(0, bootstraps, 250):
        wa, wb = _bootstrap_weights(dc, rng, min(250, bootstraps - start))
        ba, bta = _weighted_sums(dc, wa)
        bb, btb = _weighted_sums(dc, wb)
        sa, sb = _shares_from(ba, bta, bb, btb)
        boot_delta.append(sa - sb)
        boot_mi.append(_mutual_information(ba, bb, k)[0])
        boot_jsd.append(js_divergence(sa / k, sb / k))
    boot_delta, boot_mi, boot_jsd = (np.concatenate(x) for x in (boot_delta, boot_mi, boot_jsd))
    ci = lambda x, level: np.stack(np.percentile(x, [100 * (1 - level) / 2, 100 * (1 + level) / 2], axis=0),  # noqa: E731
                                   axis=-1)
    ci_delta = ci(boot_delta, 1 - 2 * alpha)

    # Split-half noise floor: each language split in random halves.
    noise_jsd, noise_delta = [], []
    for rows in (np.flatnonzero(dc.is_a), np.flatnonzero(~dc.is_a)):
        sub = DocumentCounts(dc.counts[rows], dc.tokens[rows], np.zeros(len(rows), bool), None, dc.doc_ids[rows])
        for _ in range(max(1, split_halves // 2)):
            half = np.zeros(len(rows), bool)
            half[rng.permutation(len(rows))[: len(rows) // 2]] = True
            ha, hta, hb, htb = _labelled_sums(sub, half[None, :])
            sa, sb = ha[0] / hta[0], hb[0] / htb[0]
            noise_jsd.append(js_divergence(sa / k, sb / k))
            noise_delta.append(np.abs(sa - sb).max(-1))
    noise_jsd_95 = np.percentile(np.stack(noise_jsd), 95, axis=0)
    noise_delta_95 = np.percentile(np.stack(noise_delta), 95, axis=0)

    p_holm = holm(p_layer)
    q_cell = benjamini_hochberg(p_cell).reshape(p_cell.shape)
    equivalent = ((ci_delta[..., 0] > -bound) & (ci_delta[..., 1] < bound)).all(-1)
    verdicts = [equivalent_label(bound) if eq else SPECIALISED if p < alpha else INCONCLUSIVE
                for eq, p in zip(equivalent, p_holm)]
    doc_langs = tr.doc_languages[dc.doc_ids]
    return SpecializationResult(
        layers=tr.layers, languages=(a, b), n_experts=e_count, top_k=k, bound=bound, alpha=alpha,
        n_docs={a: int((doc_langs == a).sum()), b: int((doc_langs == b).sum())},
        n_tokens={a: int(ta), b: int(tb)}, paired=dc.pairs is not None, permutations=permutations,
        bootstraps=bootstraps, share_of_assignments={a: fa / k, b: fb / k}, share_of_tokens={a: fa, b: fb},
        entropy_bits={a: routing_entropy(fa / k), b: routing_entropy(fb / k)}, mutual_information=mi,
        mi_normalized=mi / np.maximum(h_lang, 1e-12), jsd_bits=jsd, cramers_v=cramers_v, delta=delta, purity=purity,
        language_a_share=ta / (ta + tb), max_abs_delta=observed_max, p_layer=p_layer, p_layer_holm=p_holm,
        p_cell=p_cell, q_cell=q_cell, ci_mi=ci(boot_mi, 0.95), ci_jsd=ci(boot_jsd, 0.95), ci_delta=ci_delta,
        noise_jsd_95=noise_jsd_95, noise_max_delta_95=noise_delta_95, consecutive=consecutive_agreement(tr),
        verdicts=verdicts)


# -- controls -----------------------------------------------------------------------------------
_BYTE = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")


def token_script(token: str) -> str:
    """Script class of a token string: byte (byte fallback), kanji, hiragana, katakana, latin,
    digit, space (a lone "▁"), or other (punctuation and symbols)."""
    if _BYTE.match(token):
        return "byte"
    text = token.replace("▁", "")
    if not text:
        return "space"
    if any("\u4e00" <= c <= "\u9fff" or "\u3400" <= c <= "\u4dbf" for c in text):
        return "kanji"
    if all("\u3040" <= c <= "\u309f" for c in text):
        return "hiragana"
    if all("\u30a0" <= c <= "\u30ff" or c == "ー" for c in text):
        return "katakana"
    if any(c.isascii() and c.isalpha() for c in text):
        return "latin"
    if all(c.isdigit() for c in text):
        return "digit"
    return "other"


def token_scripts(trace: Trace) -> np.ndarray:
    """Script class of every token of a trace (computed once per distinct token)."""
    unique, inverse = np.unique(trace.tokens, return_inverse=True)
    return np.array([token_script(t) for t in unique.tolist()], dtype="<U8")[inverse]


def _first_token_of_each_word(trace: Trace) -> np.ndarray:
    starts = np.ones(len(trace), dtype=bool)
    starts[1:] = (trace.word_ids[1:] != trace.word_ids[:-1]) | (trace.doc_ids[1:] != trace.doc_ids[:-1])
    return starts & (trace.word_ids >= 0)


def _shared_tokens(trace: Trace, a: str, b: str) -> np.ndarray:
    langs = trace.languages
    both = np.intersect1d(trace.token_ids[langs == a], trace.token_ids[langs == b])
    return np.isin(trace.token_ids, both)


def controls(trace: Trace, *, skip_first: int = 3, bound: float = 0.05, alpha: float = 0.05,
             permutations: int = 1000, bootstraps: int = 500, seed: int = 0) -> pd.DataFrame:
    """The language test under controls, side by side: all tokens; without BOS and the first
    ``skip_first`` tokens of each document; only tokens (ids) that occur in both languages;
    word level (each word counted once, by its first token). One row per control and layer.

    Usage: ``controls(trace).pivot(index="layer", columns="control", values="verdict")``."""
    real = trace.select(exclude_special=True)
    a, b = ("ja", "en") if {"ja", "en"} <= set(real.languages.tolist()) else tuple(sorted(set(real.languages))[:2])
    masks = {
        "all tokens": np.ones(len(real), bool),
        f"without the first {skip_first} tokens": real.positions >= skip_first + int(trace.special.any()),
        "tokens occurring in both languages": _shared_tokens(real, a, b),
    }
    if (real.word_ids >= 0).any():
        masks["word level (first token of each word)"] = _first_token_of_each_word(real)
    rows = []
    for name, mask in masks.items():
        sub = real.select(tokens=mask)
        try:
            res = specialization(sub, languages=(a, b), bound=bound, alpha=alpha, permutations=permutations,
                                 bootstraps=bootstraps, split_halves=50, seed=seed, exclude_special=False)
        except ValueError as err:
            rows.append({"control": name, "layer": None, "verdict": f"not computed: {err}"})
            continue
        for i, layer in enumerate(res.layers.tolist()):
            rows.append({"control": name, "layer": layer, "tokens": sum(res.n_tokens.values()),
                         "mi_bits": res.mutual_information[i], "jsd_bits": res.jsd_bits[i],
                         "max_abs_delta": res.max_abs_delta[i], "p_perm_holm": res.p_layer_holm[i],
                         "verdict": res.verdicts[i]})
    return pd.DataFrame(rows)


def utilization_by_class(trace: Trace, classes: np.ndarray, min_tokens: int = 20) -> pd.DataFrame:
    """Share of assignments per layer and expert for each token class (e.g. script or POS),
    with its JS divergence (bits) from the utilisation of all tokens of the trace."""
    real = trace.select(exclude_special=True, tokens=np.ones(len(trace), bool))
    classes = np.asarray(classes)[~trace.special] if len(classes) == len(trace) else np.asarray(classes)
    overall = real.utilization(normalize=True)
    rows = []
    for cls in sorted(set(classes.tolist())):
        mask = classes == cls
        if mask.sum() < min_tokens:
            continue
        shares = real.select(tokens=mask).utilization(normalize=True)
        jsd = js_divergence(shares, overall)
        for i, layer in enumerate(real.layers.tolist()):
            rows.append({"class": cls, "layer": layer, "tokens": int(mask.sum()), "jsd_from_all_bits": jsd[i],
                         "top_expert": int(shares[i].argmax()), "top_share": shares[i].max()})
    return pd.DataFrame(rows)
