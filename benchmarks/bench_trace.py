"""Tracing overhead: routerscope.trace() time / bare forward time on the same batches.

Usage: python benchmarks/bench_trace.py [--repeats 5]

A small randomly initialised Mixtral (hidden 384, 4 layers, 8 experts, top-2, the real
vocabulary size) on CPU, over the built-in corpus (624 documents). "Bare" runs exactly the
batches trace() builds, through the same module (the base model: trace() skips the LM head,
which routing does not need), with no hooks and nothing recorded. trace() is timed whole:
tokenization, batching, hooks, the one transfer per batch, and building the Trace, with and
without word segmentation. Runs alternate and the median of each is reported, so both see
the same machine load; medians and bests are both printed, since this machine is shared
and noisy. "forward + hooks + collect" isolates the capture itself (hooks, stacking, one
transfer per batch) from tokenization and word alignment. The last ratio compares trace()
with a plain full-model forward (LM head included), which is what a user would otherwise run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from transformers import MixtralConfig, MixtralForCausalLM

import routerscope
from routerscope import zoo
from routerscope.corpus import builtin
from routerscope.tracing import padded_batch, routing_body


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = MixtralForCausalLM(MixtralConfig(
        vocab_size=32000, hidden_size=384, intermediate_size=768, num_hidden_layers=4, num_attention_heads=8,
        num_key_value_heads=4, num_local_experts=8, num_experts_per_tok=2)).eval()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(zoo.tokenizer_path())
    corpus = builtin()
    ids = tokenizer(corpus.texts)["input_ids"]
    order = np.argsort([-len(x) for x in ids], kind="stable")
    batches = [[np.asarray(ids[i]) for i in order[j:j + args.batch_size]] for j in range(0, len(order), args.batch_size)]
    prepared = [padded_batch(b, 0, False, torch.device("cpu"))[:3] for b in batches]
    body = routing_body(model)
    n_tokens = sum(len(x) for x in ids)

    def bare(module):
        def run():
            with torch.no_grad():
                for input_ids, attention_mask, position_ids in prepared:
                    module(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                           use_cache=False)
        return run

    def captured():
        from routerscope import RouterCapture

        with RouterCapture(model) as capture, torch.no_grad():
            for input_ids, attention_mask, position_ids in prepared:
                body(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
                index, weights, _ = capture.collect()
                torch.cat([index.float(), weights], -1).cpu()

    def traced(words: bool):
        return lambda: routerscope.trace(model, corpus.texts, tokenizer, language=corpus.languages,
                                         batch_size=args.batch_size, words=words, progress=False)

    runs = {"bare base-model forward": bare(body), "bare full-model forward": bare(model),
            "forward + hooks + collect": captured,
            "trace(words=False)": traced(False), "trace() (default, words=True)": traced(True)}
    for run in runs.values():  # warm-up
        run()
    times = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t) for name, t in times.items()}
    best = {name: min(t) for name, t in times.items()}
    print(f"{len(corpus)} documents, {n_tokens} tokens, {len(batches)} batches of {args.batch_size}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats}")
    for name, seconds in median.items():
        print(f"  {name:32s} median {seconds * 1000:8.1f} ms   best {best[name] * 1000:8.1f} ms")
    for label, stats in (("median", median), ("best", best)):
        base = stats["bare base-model forward"]
        print(f"[{label}] ratio hooks+collect / bare forward:             "
              f"{stats['forward + hooks + collect'] / base:.3f}")
        print(f"[{label}] ratio trace(words=False) / bare forward:        {stats['trace(words=False)'] / base:.3f}")
        print(f"[{label}] ratio trace() / bare forward (same batches):    "
              f"{stats['trace() (default, words=True)'] / base:.3f}")
        print(f"[{label}] ratio trace() / bare full-model forward:        "
              f"{stats['trace() (default, words=True)'] / stats['bare full-model forward']:.3f}")


if __name__ == "__main__":
    main()
