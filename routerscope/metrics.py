"""Descriptive routing metrics of a Trace: expert load and routing entropy per layer.

    routing_summary(trace)["languages"]["ja"]["entropy_bits"]   # one value per MoE layer

Load is the *share of assignments* u(e) = N_e / (k * N_tokens): it sums to 1 over experts
and its chance value is 1/E. Routing entropy is H(u) = -sum u log2 u, in bits, at most
log2 E; "normalized" divides by log2 E. Special tokens (BOS/EOS) are left out.
"""

from __future__ import annotations

import numpy as np

from .trace_data import Trace


def routing_entropy(shares: np.ndarray) -> np.ndarray:
    """Entropy in bits of each row of a [layers, experts] share matrix (0 log 0 = 0)."""
    shares = np.asarray(shares, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(shares > 0, shares * np.log2(shares), 0.0)
    return -terms.sum(axis=-1)


def js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen–Shannon divergence in bits between rows of two share matrices (0 = identical, at most 1)."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    return (routing_entropy((p + q) / 2) - (routing_entropy(p) + routing_entropy(q)) / 2).clip(min=0.0)


def routing_summary(trace: Trace) -> dict:
    """Per-language, per-layer expert load (share of assignments) and routing entropy.

    Usage: ``json.dumps(routing_summary(tr), indent=2)``."""
    real = trace.select(exclude_special=True)
    summary = {
        "model": trace.model_name,
        "layers": trace.layers.tolist(),
        "n_experts": trace.n_experts,
        "top_k": trace.top_k,
        "load_definition": "share of assignments N_e / (k * tokens); sums to 1 per layer",
        "chance_share": 1.0 / trace.n_experts,
        "max_entropy_bits": float(np.log2(trace.n_experts)),
        "languages": {},
    }
    for language in sorted(set(real.doc_languages.tolist())):
        part = real.select(language=language)
        if len(part) == 0:
            continue
        shares = part.utilization(normalize=True)
        entropy = routing_entropy(shares)
        summary["languages"][language] = {
            "documents": int(len(np.unique(part.doc_ids))),
            "tokens": int(len(part)),
            "entropy_bits": entropy.round(6).tolist(),
            "entropy_normalized": (entropy / np.log2(trace.n_experts)).round(6).tolist(),
            "load": shares.round(6).tolist(),
            "max_load": shares.max(axis=1).round(6).tolist(),
        }
    return summary
