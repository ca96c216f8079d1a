"""Is a dense model swappable into a MoE model's experts? Torch-free: works on configs too.

    print(check_compatible(mixtral, mistral))            # models, configs, or config dicts
    check_compatible(moe_cfg, dense_cfg, allow=("rope_theta",)).raise_for_errors()

Shape differences are errors. Settings that change the computed function while keeping every
shape (rope_theta, rms_norm_eps, sliding_window, activation, rope scaling) are errors unless
allowed: the default MistralConfig and MixtralConfig differ in exactly rope_theta (1e4 vs 1e6),
rms_norm_eps (1e-6 vs 1e-5) and sliding_window (4096 vs None).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Iterable


# What a swap can copy from the dense model (see routerscope.swap for each part's meaning).
PARTS = ("mlp", "attention", "norms", "lm_head", "embeddings")


class SwapError(ValueError):
    """A swap that cannot be done as asked; nothing was changed."""


# Config fields that change the computed function without changing any shape.
FUNCTION_FIELDS = ("rope_theta", "rms_norm_eps", "sliding_window", "hidden_act", "rope_scaling",
                   "max_position_embeddings")
SHAPE_FIELDS = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
                "num_key_value_heads", "head_dim", "vocab_size")


def _config_value(config, name):
    if name == "head_dim":
        value = getattr(config, "head_dim", None)
        if value is None and getattr(config, "hidden_size", None) is None:
            return None
        return value if value is not None else config.hidden_size // config.num_attention_heads
    if name == "rope_theta":
        value = getattr(config, "rope_theta", None)
        if value is None:  # transformers 5 keeps it in rope_parameters
            params = getattr(config, "rope_parameters", None) or {}
            value = params.get("rope_theta") if isinstance(params, dict) else None
        return value
    if name == "rope_scaling":
        params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
        if isinstance(params, dict):
            params = {k: v for k, v in params.items() if k != "rope_theta"}
            return None if params in ({}, {"rope_type": "default"}) else params
        return params
    return getattr(config, name, None)


@dataclass(frozen=True)
class Difference:
    field: str
    moe: object
    dense: object
    severity: str  # "error" (shapes), "function" (same shapes, different function), "note"


@dataclass(frozen=True)
class CompatibilityReport:
    """Every difference between two configurations that matters for a swap."""

    differences: list[Difference]
    allowed: tuple[str, ...] = ()

    @property
    def errors(self) -> list[Difference]:
        return [d for d in self.differences
                if d.severity == "error" or (d.severity == "function" and d.field not in self.allowed)]

    @property
    def ok(self) -> bool:
        return not self.errors

    def __str__(self) -> str:
        if not self.differences:
            return "compatible: every shape and every function-changing setting matches"
        lines = [f"{'field':<26} {'moe':>18} {'dense':>18}  verdict"]
        for d in self.differences:
            verdict = {"error": "ERROR (shapes differ)", "note": "note"}.get(d.severity, "allowed" if d.field in
                                                                               self.allowed else "ERROR (changes the function)")
            lines.append(f"{d.field:<26} {str(d.moe):>18} {str(d.dense):>18}  {verdict}")
        return "\n".join(lines)

    def raise_for_errors(self) -> None:
        if self.errors:
            function = [d.field for d in self.errors if d.severity == "function"]
            hint = (f"\nTo accept settings that change the function, pass allow={tuple(function)!r}." if function
                    else "")
            raise SwapError(f"the models are not swap-compatible:\n{self}{hint}")


def check_compatible(moe, dense, *, allow: Iterable[str] = (), tokenizers=None) -> CompatibilityReport:
    """Compare a MoE model (or its config) with a dense one for an expert swap.

    Usage: ``print(check_compatible(mixtral, mistral))``.
    Shape mismatches are errors. Settings that change the function (rope_theta,
    rms_norm_eps, sliding_window, activation, rope scaling) are errors unless named in
    ``allow``. ``tokenizers=(moe_tok, dense_tok)`` also compares vocabularies."""
    mc = getattr(moe, "config", moe)
    dc = getattr(dense, "config", dense)
    mc = SimpleNamespace(**mc) if isinstance(mc, dict) else mc
    dc = SimpleNamespace(**dc) if isinstance(dc, dict) else dc
    diffs = []
    for name in SHAPE_FIELDS:
        a, b = _config_value(mc, name), _config_value(dc, name)
        if a != b:
            diffs.append(Difference(name, a, b, "error"))
    for name in FUNCTION_FIELDS:
        a, b = _config_value(mc, name), _config_value(dc, name)
        if name == "max_position_embeddings":
            if a != b:
                diffs.append(Difference(name, a, b, "note"))
            continue
        if a != b and not (isinstance(a, float) and isinstance(b, float) and abs(a - b) <= 1e-12 * max(abs(a), 1)):
            diffs.append(Difference(name, a, b, "function"))
    if tokenizers is not None:
        ta, tb = tokenizers
        if ta.get_vocab() != tb.get_vocab():
            diffs.append(Difference("tokenizer vocabulary", len(ta), len(tb), "error"))
    if hasattr(moe, "parameters") and hasattr(dense, "parameters"):
        da, db = next(moe.parameters()).dtype, next(dense.parameters()).dtype
        if da != db:
            diffs.append(Difference("dtype", str(da).replace("torch.", ""), str(db).replace("torch.", ""), "note"))
    unknown = sorted(set(allow) - set(FUNCTION_FIELDS))
    if unknown:
        raise SwapError(f"allow= names {unknown}, which are not allowable settings; allowable: {list(FUNCTION_FIELDS)}")
    return CompatibilityReport(diffs, tuple(allow))


