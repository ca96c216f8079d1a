"""Figures: per-layer expert utilisation heatmaps and their differences.

    ax = utilization_heatmap(trace.select(language="ja"), title="tiny-mixtral on built-in [ja]")
    ax.figure.savefig("ja.png")
    difference_heatmap(trace, "ja", "en")

Each function draws into ``ax`` (a new figure when None) and returns the axes; nothing is
shown. Values are the *share of assignments* N_e / (k * tokens), rows summing to 1; the
chance level 1/E is written under the title. Special tokens (BOS/EOS) are left out.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from ._io import temporary_beside
from .trace_data import Trace


def _axes(ax, n_layers: int, n_experts: int):
    if ax is not None:
        return ax
    width = min(4.0 + 0.55 * n_experts, 18)
    height = min(2.2 + 0.42 * n_layers, 16)
    return plt.subplots(figsize=(width, height), layout="constrained")[1]


def _labels(ax, trace: Trace) -> None:
    ax.set_xlabel("expert")
    ax.set_ylabel("MoE layer")
    ax.set_xticks(np.arange(trace.n_experts) + 0.5, [str(e) for e in range(trace.n_experts)], rotation=0)
    step = max(1, trace.n_layers // 16)
    ticks = np.arange(0, trace.n_layers, step)
    ax.set_yticks(ticks + 0.5, [str(trace.layers[i]) for i in ticks], rotation=0)


def utilization_heatmap(trace: Trace, *, title: str | None = None, ax=None, annotate: bool | None = None,
                        vmax: float | None = None):
    """Share of assignments per layer (rows) and expert (columns).

    Usage: ``utilization_heatmap(tr.select(language="ja")).figure.savefig("ja.png")``."""
    real = trace.select(exclude_special=True)
    shares = real.utilization(normalize=True)
    ax = _axes(ax, trace.n_layers, trace.n_experts)
    chance = 1.0 / trace.n_experts
    annotate = trace.n_experts <= 16 and trace.n_layers <= 32 if annotate is None else annotate
    sns.heatmap(shares, ax=ax, cmap="viridis", vmin=0.0, vmax=vmax or max(2 * chance, float(shares.max())),
                annot=annotate, fmt=".2f", annot_kws={"fontsize": 7},
                cbar_kws={"label": f"share of assignments (chance 1/{trace.n_experts} = {chance:.3f})"})
    _labels(ax, trace)
    n_tokens, n_docs = len(real), len(np.unique(real.doc_ids))
    ax.set_title((title or f"{trace.model_name}: expert utilisation")
                 + f"\n{n_tokens:,} tokens, {n_docs:,} documents, top-{trace.top_k} of {trace.n_experts}; "
                 f"chance share = {chance:.3f}", fontsize=10)
    return ax


def difference_heatmap(trace: Trace, language_a: str = "ja", language_b: str = "en", *, title: str | None = None,
                       ax=None, annotate: bool | None = None):
    """Share of assignments in ``language_a`` minus ``language_b``, per layer and expert.

    Usage: ``difference_heatmap(tr, "ja", "en").figure.savefig("ja-minus-en.png")``."""
    real = trace.select(exclude_special=True)
    a = real.select(language=language_a).utilization(normalize=True)
    b = real.select(language=language_b).utilization(normalize=True)
    diff = a - b
    ax = _axes(ax, trace.n_layers, trace.n_experts)
    limit = max(float(np.abs(diff).max()), 0.02)
    annotate = trace.n_experts <= 16 and trace.n_layers <= 32 if annotate is None else annotate
    sns.heatmap(diff, ax=ax, cmap="RdBu_r", center=0.0, vmin=-limit, vmax=limit, annot=annotate, fmt="+.2f",
                annot_kws={"fontsize": 7},
                cbar_kws={"label": f"share of assignments, {language_a} − {language_b}"})
    _labels(ax, trace)
    ax.set_title((title or f"{trace.model_name}: {language_a} − {language_b} utilisation")
                 + f"\nred: more {language_a}, blue: more {language_b}; 0 = same share "
                 f"(chance share 1/{trace.n_experts} in each)", fontsize=10)
    return ax


def shift_heatmap(shift, *, title: str | None = None, ax=None):
    """After − before share of assignments per layer and expert, all languages together
    (token-weighted), from a :class:`routerscope.shift.RoutingShift`."""
    weights = np.array([shift.tokens[lang] for lang in shift.languages], dtype=float)
    diff = sum(w * shift.share_change(lang) for w, lang in zip(weights, shift.languages)) / weights.sum()
    n_layers, n_experts = diff.shape
    ax = _axes(ax, n_layers, n_experts)
    limit = max(float(np.abs(diff).max()), 0.02)
    sns.heatmap(diff, ax=ax, cmap="PuOr_r", center=0.0, vmin=-limit, vmax=limit, annot=n_experts <= 16, fmt="+.2f",
                annot_kws={"fontsize": 7}, cbar_kws={"label": "share of assignments, after − before"})
    ax.set_xlabel("expert")
    ax.set_ylabel("MoE layer")
    ax.set_xticks(np.arange(n_experts) + 0.5, [f"{e}*" if e in shift.swapped else str(e) for e in range(n_experts)])
    ax.set_yticks(np.arange(n_layers) + 0.5, [str(x) for x in shift.layers], rotation=0)
    ax.set_title((title or "routing shift") + f"\n{sum(shift.tokens.values()):,} tokens; * = swapped expert; "
                 f"chance share 1/{n_experts}", fontsize=10)
    return ax


def save_figure(ax, path: str | os.PathLike, dpi: int = 130) -> Path:
    """Save the axes' figure as PNG atomically and close it."""
    path = Path(path)
    tmp = temporary_beside(path)
    try:
        ax.figure.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or "png")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        plt.close(ax.figure)
    return path


def specialization_curves(result, *, ax=None, title: str | None = None):
    """Per-layer mutual information I(expert; language) and JS divergence, with 95% bootstrap
    bands (documents resampled) and the split-half noise floor (95th percentile)."""
    layers = result.layers
    if ax is None:
        ax = plt.subplots(figsize=(7.5, 4.2), layout="constrained")[1]
    ax.plot(layers, result.mutual_information, marker="o", color="C0", label="I(expert; language), Miller–Madow")
    ax.fill_between(layers, result.ci_mi[:, 0], result.ci_mi[:, 1], color="C0", alpha=0.2)
    ax.plot(layers, result.jsd_bits, marker="s", color="C1", label=f"JSD({result.languages[0]} ‖ {result.languages[1]})")
    ax.fill_between(layers, result.ci_jsd[:, 0], result.ci_jsd[:, 1], color="C1", alpha=0.2)
    ax.plot(layers, result.noise_jsd_95, linestyle="--", color="0.4",
            label="JSD noise floor (split halves, 95th pct)")
    ax.axhline(0.0, color="0.7", linewidth=0.8)
    ax.set_xlabel("MoE layer")
    ax.set_ylabel("bits (0 = no language information)")
    ax.set_xticks(layers)
    ax.legend(fontsize=8, loc="upper left")
    a, b = result.languages
    ax.set_title((title or "Language information in routing")
                 + f"\n{result.n_docs[a]} {a} / {result.n_docs[b]} {b} documents, "
                 f"{sum(result.n_tokens.values()):,} tokens; bands: 95% bootstrap over "
                 f"{'pairs' if result.paired else 'documents'}", fontsize=10)
    return ax


def delta_heatmap(result, *, ax=None, title: str | None = None, q: float | None = None):
    """Δ_e = share of tokens (language a) − share of tokens (language b), layers × experts;
    cells significant after Benjamini–Hochberg (q < alpha) are marked with *."""
    q = result.alpha if q is None else q
    delta = result.delta
    n_layers, n_experts = delta.shape
    ax = _axes(ax, n_layers, n_experts)
    marks = np.where(result.q_cell < q, "*", "")
    labels = np.char.add(np.char.mod("%+.2f", delta), marks)
    limit = max(float(np.abs(delta).max()), result.bound * 2)
    a, b = result.languages
    sns.heatmap(delta, ax=ax, cmap="RdBu_r", center=0.0, vmin=-limit, vmax=limit, annot=labels, fmt="",
                annot_kws={"fontsize": 7}, cbar_kws={"label": f"Δ share of tokens, {a} − {b} (chance 0)"})
    ax.set_xlabel("expert")
    ax.set_ylabel("MoE layer")
    ax.set_xticks(np.arange(n_experts) + 0.5, [str(e) for e in range(n_experts)])
    ax.set_yticks(np.arange(n_layers) + 0.5, [str(x) for x in result.layers], rotation=0)
    ax.set_title((title or f"Per-expert language difference Δ_e ({a} − {b})")
                 + f"\n* = BH q < {q:g} over {delta.size} cells, {result.permutations} document-level permutations; "
                 f"equivalence bound ±{result.bound:g}", fontsize=10)
    return ax
