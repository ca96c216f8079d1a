"""routerscope: see how Mixture-of-Experts language models route tokens to experts.

    import routerscope
    tr = routerscope.trace(model, texts, tokenizer, language="ja")   # exact top-k per token and layer
    tr.utilization()                                                 # assignments, layers x experts

Public names:
    trace               run a model over documents, record every real token's routing -> Trace
    Trace               the routing data (numpy), with select / concat / utilization / to_frame / save / load
    RouterCapture       context manager: hooks on every MoE router, removed on exit
    find_moe_layers     the MoE blocks of a model that routerscope can read
    segment, align      words and parts of speech (fugashi/UniDic for Japanese), token-to-word alignment
    routing_summary     per-layer routing entropy and expert load, per language
    NoRouterError, TraceFileError
"""

from .capture import MoELayer, NoRouterError, RouterCapture, find_moe_layers
from .metrics import routing_entropy, routing_summary
from .trace_data import Trace, TraceFileError
from .tracing import trace
from .words import Word, align, segment

__version__ = "0.1.0"

__all__ = [
    "MoELayer", "NoRouterError", "RouterCapture", "Trace", "TraceFileError", "Word", "align", "find_moe_layers",
    "routing_entropy", "routing_summary", "segment", "trace", "__version__",
]
