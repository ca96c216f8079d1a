"""routerscope: see how Mixture-of-Experts language models route tokens to experts.

    import routerscope
    tr = routerscope.trace(model, texts, tokenizer, language="ja")   # exact top-k per token and layer
    tr.utilization()                                                 # assignments, layers x experts

Public names (imported on first use, so `import routerscope` stays light):
    trace               run a model over documents, record every real token's routing -> Trace
    Trace               the routing data (numpy): select / concat / utilization / to_frame / save / load
    RouterCapture       context manager: hooks on every MoE router, removed on exit
    find_moe_layers     the MoE blocks of a model that routerscope can read
    segment, align      words and parts of speech (fugashi/UniDic for Japanese), token-to-word alignment
    routing_summary     per-layer routing entropy and expert load, per language
    check_compatible    what differs between a MoE and a dense model, for an expert swap
    swap_expert         copy a dense MLP (and optionally more) into experts of a loaded model
    swap_checkpoint     the same on safetensors checkpoints, streamed, never loading a model
    compare             routing shift between two traces of the same tokens -> RoutingShift
    perplexity          per-language perplexity of a causal LM on documents
    corpus, zoo         the built-in corpus and corpus loaders; the tiny trained models
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "trace": "tracing", "Trace": "trace_data", "TraceFileError": "trace_data",
    "RouterCapture": "capture", "find_moe_layers": "capture", "MoELayer": "capture", "NoRouterError": "capture",
    "segment": "words", "align": "words", "Word": "words",
    "routing_summary": "metrics", "routing_entropy": "metrics",
    "check_compatible": "compat", "SwapError": "compat",
    "swap_expert": "swap", "SwapRecord": "swap",
    "swap_checkpoint": "checkpoint_swap",
    "compare": "shift", "RoutingShift": "shift", "perplexity": "shift",
    "specialization": "language_specialization", "SpecializationResult": "language_specialization",
}
_SUBMODULES = ("corpus", "zoo", "plots", "testing", "cli", "models", "shift", "metrics")

__all__ = sorted(_EXPORTS) + list(_SUBMODULES) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'routerscope' has no attribute {name!r}")


def __dir__():
    return __all__
