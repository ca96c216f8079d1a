"""routerscope's own routing regression check, through its pytest plugin, on the embedded model.
Refresh the baseline with `python -m pytest tests/test_own_routing.py --routerscope-update`."""

import routerscope
from routerscope import zoo
from routerscope.corpus import builtin


def test_embedded_model_routing_matches_its_baseline(routing_baseline):
    model, tokenizer = zoo.load("tiny-mixtral-ja-en")
    corpus = builtin()
    trace = routerscope.trace(model, corpus.texts[:200], tokenizer, language=corpus.languages[:200], progress=False)
    routing_baseline("tiny-mixtral-ja-en", trace, metrics=("entropy", "max_share", "dead", "jsd"))
