"""Routing regression checks: compare a Trace's per-layer routing metrics with a baseline file.

    from routerscope.testing import write_baseline, check_routing
    write_baseline(trace, "routing_baselines/my-model.json", corpus=corpus_texts)
    result = check_routing(trace, "routing_baselines/my-model.json", metrics=("entropy", "dead"))
    assert result.ok, result.table()

With pytest (the plugin comes with routerscope; nothing to copy)::

    def test_routing(routing_baseline):
        trace = routerscope.trace(model, texts, tokenizer, progress=False)
        routing_baseline("my-model", trace, texts=texts)      # fails with a per-layer table

    pytest --routerscope-update       # writes or refreshes baselines

Metrics, per MoE layer, on real tokens (special tokens left out), loads as share of
assignments N_e / (k * tokens):
  entropy    routing entropy of the load, bits (collapse drives it down; at most log2 E)
  max_share  the largest expert's load (chance 1/E)
  dead       number of experts whose load is below ``dead_threshold`` (default 0.1 / E)
  jsd        Jensen-Shannon divergence (bits) between the observed and the baseline load
A value fails when it is outside both its absolute and its relative tolerance
(``|obs - base| > max(abs, rel * |base|)``); jsd compares against ``abs`` only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ._io import atomic_write_text
from .metrics import js_divergence, routing_entropy
from .trace_data import Trace

METRICS = ("entropy", "max_share", "dead", "jsd")
DEFAULT_METRICS = ("entropy", "max_share", "dead")
DEFAULT_TOLERANCES = {
    "entropy": {"abs": 0.05, "rel": 0.02},
    "max_share": {"abs": 0.05, "rel": 0.0},
    "dead": {"abs": 0, "rel": 0.0},
    "jsd": {"abs": 0.01, "rel": 0.0},
}
BASELINE_FORMAT = "routerscope-routing-baseline"


class BaselineError(AssertionError):
    """A baseline that is missing, unreadable, or from an incompatible model or corpus."""


def corpus_fingerprint(texts: Iterable[str], languages: Iterable[str] | None = None) -> str:
    """sha256 of the documents (and their languages), so a baseline knows what it was measured on."""
    digest = hashlib.sha256()
    languages = list(languages) if languages is not None else None
    for i, text in enumerate(texts):
        digest.update(text.encode("utf-8"))
        digest.update(b"\x1f" + (languages[i].encode() if languages else b"") + b"\x1e")
    return "sha256:" + digest.hexdigest()


def routing_metrics(trace: Trace, dead_threshold: float | None = None) -> dict:
    """Per-layer metrics of a trace (see the module docstring)."""
    real = trace.select(exclude_special=True)
    if len(real) == 0:
        raise ValueError("the trace has no real tokens; routing metrics need at least one")
    shares = real.utilization(normalize=True)
    threshold = 0.1 / trace.n_experts if dead_threshold is None else dead_threshold
    return {
        "entropy": routing_entropy(shares).round(6).tolist(),
        "max_share": shares.max(axis=1).round(6).tolist(),
        "dead": (shares < threshold).sum(axis=1).astype(int).tolist(),
        "load": shares.round(8).tolist(),
        "dead_threshold": threshold,
        "tokens": int(len(real)),
    }


def write_baseline(trace: Trace, path: str | os.PathLike, *, texts: Sequence[str] | None = None,
                   languages: Sequence[str] | None = None) -> Path:
    """Write the trace's routing metrics as a small JSON baseline (atomically)."""
    from . import __version__

    texts = list(trace.texts) if texts is None else list(texts)
    languages = list(trace.doc_languages) if languages is None and texts == list(trace.texts) else languages
    baseline = {
        "format": BASELINE_FORMAT,
        "routerscope_version": __version__,
        "model": trace.model_name,
        "corpus_fingerprint": corpus_fingerprint(texts, languages),
        "n_experts": int(trace.n_experts),
        "top_k": int(trace.top_k),
        "layers": trace.layers.tolist(),
        "metrics": routing_metrics(trace),
    }
    return atomic_write_text(path, _readable_json(baseline))


def _readable_json(data: dict) -> str:
    """JSON with one line per scalar and per list of numbers, so diffs show which layer moved."""
    text = json.dumps(data, indent=2, ensure_ascii=False)
    # Collapse every innermost list (numbers only) onto one line.
    return re.sub(r"\[\s*([-0-9.eE+,\s]*?)\s*\]",
                  lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",") if x.strip()) + "]", text) + "\n"


def read_baseline(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise BaselineError(f"no routing baseline at {path}. Create it with `pytest --routerscope-update` "
                            f"(or `routerscope check --update --baseline {path} ...`), review it, and commit it")
    try:
        baseline = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BaselineError(f"{path} is not valid JSON ({err}); re-create it with --routerscope-update") from None
    if not isinstance(baseline, dict) or baseline.get("format") != BASELINE_FORMAT:
        raise BaselineError(f"{path} is not a routerscope routing baseline; re-create it with --routerscope-update")
    return baseline


@dataclass(frozen=True)
class Deviation:
    layer: int
    metric: str
    baseline: float
    observed: float
    tolerance: float


@dataclass(frozen=True)
class RoutingCheck:
    """Outcome of :func:`check_routing`: ``ok``, the failing ``deviations``, and every ``row``."""

    rows: list[Deviation]
    deviations: list[Deviation]
    baseline_path: str

    @property
    def ok(self) -> bool:
        return not self.deviations

    def table(self, only_failures: bool = True) -> str:
        rows = self.deviations if only_failures else self.rows
        failing = {(d.layer, d.metric) for d in self.deviations}
        head = f"{'layer':>5}  {'metric':<10} {'baseline':>10} {'observed':>10} {'tolerance':>10}  status"
        lines = [head, "-" * len(head)]
        for d in rows:
            status = "FAIL" if (d.layer, d.metric) in failing else "ok"
            lines.append(f"{d.layer:>5}  {d.metric:<10} {d.baseline:>10.4f} {d.observed:>10.4f} {d.tolerance:>10.4f}"
                         f"  {status}")
        return "\n".join(lines)

    def message(self) -> str:
        if self.ok:
            return f"routing matches {self.baseline_path}"
        layers = sorted({d.layer for d in self.deviations})
        return (f"routing regression against {self.baseline_path}: {len(self.deviations)} value(s) out of tolerance "
                f"in layer(s) {layers}\n{self.table()}\nIf the change is intended, refresh the baseline with "
                "`pytest --routerscope-update` and commit it.")


def check_routing(trace: Trace, baseline: str | os.PathLike | dict, *, metrics: Sequence[str] = DEFAULT_METRICS,
                  tolerances: dict | None = None, texts: Sequence[str] | None = None,
                  languages: Sequence[str] | None = None) -> RoutingCheck:
    """Compare the trace's per-layer metrics with a baseline; never raises for a regression
    (look at ``.ok``), only for a baseline that cannot be compared at all."""
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {list(METRICS)}")
    path = str(baseline) if not isinstance(baseline, dict) else "<baseline>"
    data = baseline if isinstance(baseline, dict) else read_baseline(baseline)
    if (data["n_experts"], data["top_k"]) != (trace.n_experts, trace.top_k) or data["layers"] != trace.layers.tolist():
        raise BaselineError(
            f"{path} was made for a model with {data['n_experts']} experts, top-{data['top_k']}, MoE layers "
            f"{data['layers']}; this trace has {trace.n_experts} experts, top-{trace.top_k}, layers "
            f"{trace.layers.tolist()}. It is another model: make a baseline for it with --routerscope-update")
    texts = list(trace.texts) if texts is None else list(texts)
    languages = list(trace.doc_languages) if languages is None and texts == list(trace.texts) else languages
    if data.get("corpus_fingerprint") != corpus_fingerprint(texts, languages):
        raise BaselineError(f"{path} was measured on a different corpus (fingerprint {data.get('corpus_fingerprint')}); "
                            "check on the same documents, or refresh the baseline with --routerscope-update")
    tol = {name: dict(DEFAULT_TOLERANCES[name]) for name in METRICS}
    for name, value in (tolerances or {}).items():
        if name not in tol:
            raise ValueError(f"tolerance for unknown metric {name!r}; metrics are {list(METRICS)}")
        tol[name].update(value if isinstance(value, dict) else {"abs": value})
    observed = routing_metrics(trace, data["metrics"].get("dead_threshold"))
    rows, failures = [], []
    for metric in metrics:
        if metric == "jsd":
            base = np.zeros(len(trace.layers))
            obs = js_divergence(np.asarray(observed["load"]), np.asarray(data["metrics"]["load"]))
            allowed = np.full(len(base), tol["jsd"]["abs"])
        else:
            base = np.asarray(data["metrics"][metric], dtype=float)
            obs = np.asarray(observed[metric], dtype=float)
            allowed = np.maximum(tol[metric]["abs"], tol[metric]["rel"] * np.abs(base))
        for i, layer in enumerate(trace.layers.tolist()):
            row = Deviation(layer, metric, float(base[i]), float(obs[i]), float(allowed[i]))
            rows.append(row)
            if abs(obs[i] - base[i]) > allowed[i] + 1e-12:
                failures.append(row)
    return RoutingCheck(rows, failures, path)


def assert_routing_matches(trace: Trace, baseline: str | os.PathLike, **kwargs) -> RoutingCheck:
    """:func:`check_routing`, raising AssertionError with the per-layer table on a regression."""
    result = check_routing(trace, baseline, **kwargs)
    if not result.ok:
        raise AssertionError(result.message())
    return result
