"""Permutation speed: 10,000 document-level permutations for 1 M tokens x 32 layers x 8 experts.

Usage: python benchmarks/bench_specialization.py [--tokens 1000000] [--docs 5000] [--permutations 10000]

Builds a synthetic top-2 trace (random routing, two languages, translation pairs), times the
per-document aggregation (done once), then the permutation null of routerscope.specialization
alone (each permutation re-sums the documents x layers x experts counts with one matrix
product). Target: under 60 s on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from routerscope import Trace
from routerscope.language_specialization import DocumentCounts, _labelled_sums, _null_labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=1_000_000)
    ap.add_argument("--docs", type=int, default=5000)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--permutations", type=int, default=10_000)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    n, d, n_layers = args.tokens, args.docs, args.layers
    experts = np.argsort(rng.random((n, n_layers, 8), dtype=np.float32), axis=-1)[..., :2].astype(np.uint8)
    doc_ids = np.sort(rng.integers(0, d, n)).astype(np.int32)
    languages = np.array(["ja", "en"] * (d // 2))
    trace = Trace(experts=experts, weights=np.full(experts.shape, 0.5, np.float32), token_ids=np.zeros(n, np.int32),
                  tokens=np.full(n, "x"), doc_ids=doc_ids, positions=np.zeros(n, np.int32), special=np.zeros(n, bool),
                  char_spans=np.full((n, 2), -1, np.int32), word_ids=np.full(n, -1, np.int32),
                  texts=np.full(d, "d"), doc_languages=languages, pair_ids=np.repeat(np.arange(d // 2), 2),
                  layers=np.arange(n_layers, dtype=np.int32), n_experts=8, top_k=2)
    start = time.perf_counter()
    dc = DocumentCounts.from_trace(trace, "ja", "en")
    aggregate = time.perf_counter() - start
    observed = np.abs(_labelled_sums(dc, dc.is_a[None])[0][0])
    start = time.perf_counter()
    exceed = np.zeros_like(observed)
    for chunk in range(0, args.permutations, 500):
        labels = _null_labels(dc, rng, min(500, args.permutations - chunk))
        ca, ta, cb, tb = _labelled_sums(dc, labels)
        null = np.abs(ca / ta[:, None, None] - cb / tb[:, None, None])
        exceed += (null >= observed).sum(0)
    permute = time.perf_counter() - start
    print(f"{n:,} tokens, {d:,} documents ({'paired' if dc.pairs is not None else 'unpaired'}), {n_layers} layers, "
          f"8 experts, top-2")
    print(f"aggregate per document (once): {aggregate:.2f} s")
    print(f"{args.permutations:,} permutations: {permute:.2f} s  (target < 60 s; ratio to target {permute / 60:.3f})")


if __name__ == "__main__":
    main()
