"""The seed experiment, reproduced in miniature: a Japanese-trained dense model copied into experts.

Usage: python examples/seed_experiment.py [--out figures/seed]

The original: japanese-stablelm-base-gamma-7b (Mistral-7B continued on Japanese) copied into
one expert of Mixtral-8x7B, hoping for a "Japanese expert"; the model broke. Here the zoo's
tiny-mistral-ja (same shapes and settings as tiny-mixtral-ja-en, continued on Japanese) goes
into tiny-mixtral-ja-en, in the seed's variants:
  all parts   MLP into expert 0, plus attention, norms, embeddings (tied to the LM head)
  attention   attention of every layer only, no expert touched
  MLP 1/2/4   the dense MLP into experts [0], [0, 1], [0, 1, 2, 3]; routers kept
For each: perplexity per language on the built-in corpus (text neither model was trained
on) and the routing shift per layer against the unmodified model. Writes seed_experiment.md
and three figures into --out (about a minute on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import routerscope  # noqa: E402
from routerscope import plots, zoo  # noqa: E402
from routerscope.corpus import builtin  # noqa: E402

VARIANTS = {
    "all parts → e0": dict(expert=0, parts=("mlp", "attention", "norms", "embeddings")),
    "attention only": dict(expert=0, parts=("attention",)),
    "MLP → e0": dict(expert=[0], parts=("mlp",)),
    "MLP → e0,1": dict(expert=[0, 1], parts=("mlp",)),
    "MLP → e0-3": dict(expert=[0, 1, 2, 3], parts=("mlp",)),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("figures/seed"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    moe, tokenizer = zoo.load("tiny-mixtral-ja-en")
    dense, _ = zoo.load("tiny-mistral-ja")
    corpus = builtin()
    print(routerscope.check_compatible(moe, dense))

    def measure(model):
        ppl = routerscope.perplexity(model, tokenizer, corpus.texts, language=corpus.languages)
        tr = routerscope.trace(model, corpus.texts, tokenizer, language=corpus.languages, pair_ids=corpus.pair_ids,
                               progress=False)
        return ppl, tr

    base_ppl, base_trace = measure(moe)
    dense_ppl = routerscope.perplexity(dense, tokenizer, corpus.texts, language=corpus.languages)
    results = {}
    for name, kwargs in VARIANTS.items():
        model = copy.deepcopy(moe)
        routerscope.swap_expert(model, dense, **kwargs)
        ppl, tr = measure(model)
        swapped = kwargs["expert"] if "mlp" in kwargs["parts"] else []
        swapped = [swapped] if isinstance(swapped, int) else swapped
        results[name] = (ppl, routerscope.compare(base_trace, tr, swapped=swapped), swapped)
        print(f"{name}: ja {ppl['ja']['perplexity']:.1f}, en {ppl['en']['perplexity']:.1f}")

    layers = base_trace.layers.tolist()
    lines = ["# The seed experiment in miniature", "",
             "tiny-mistral-ja (dense, continued on Japanese) copied into tiny-mixtral-ja-en. Perplexity on the "
             f"built-in corpus ({base_ppl['ja']['tokens']:,} ja and {base_ppl['en']['tokens']:,} en predicted tokens, "
             "text neither model saw in training); routing shift against the unmodified model, special tokens left "
             "out, all languages pooled by token.", "",
             "| model | ppl ja | ppl en | " + " | ".join(f"first-choice changed L{l}" for l in layers)
             + " | Jaccard (mean over layers) | swapped experts' share before → after (mean over layers) |",
             "|---|---|---|" + "---|" * len(layers) + "---|---|",
             f"| tiny-mixtral-ja-en (unmodified) | {base_ppl['ja']['perplexity']:.1f} | "
             f"{base_ppl['en']['perplexity']:.1f} | " + " | ".join("0" for _ in layers) + " | 1 | – |",
             f"| tiny-mistral-ja (the dense donor) | {dense_ppl['ja']['perplexity']:.1f} | "
             f"{dense_ppl['en']['perplexity']:.1f} | " + " | ".join("–" for _ in layers) + " | – | – |"]
    for name, (ppl, shift, swapped) in results.items():
        weights = {lang: shift.tokens[lang] for lang in shift.languages}
        total = sum(weights.values())
        pooled = lambda metric: sum(weights[l] * getattr(shift, metric)[l] for l in shift.languages) / total  # noqa
        first = pooled("first_changed")
        jac = pooled("jaccard").mean()
        before = sum(weights[l] * shift.share_before[l] for l in shift.languages) / total
        after = sum(weights[l] * shift.share_after[l] for l in shift.languages) / total
        share = (f"{before[:, swapped].sum(1).mean():.3f} → {after[:, swapped].sum(1).mean():.3f}" if swapped
                 else "–")
        lines.append(f"| {name} | {ppl['ja']['perplexity']:.1f} | {ppl['en']['perplexity']:.1f} | "
                     + " | ".join(f"{v:.3f}" for v in first) + f" | {jac:.3f} | {share} |")
    lines += ["", f"Chance for unrelated top-2 of 8 routing: Jaccard {routerscope.shift.chance_jaccard(8, 2):.3f}, "
              "first choice changed 0.875.", ""]
    (args.out / "seed_experiment.md").write_text("\n".join(lines) + "\n")

    # Figure 1: perplexity per variant and language.
    names = ["unmodified"] + list(results)
    fig, ax = plt.subplots(figsize=(8, 4), layout="constrained")
    x = np.arange(len(names))
    for i, lang in enumerate(("ja", "en")):
        values = [base_ppl[lang]["perplexity"]] + [results[n][0][lang]["perplexity"] for n in results]
        ax.bar(x + (i - 0.5) * 0.38, values, width=0.38, label=lang)
    ax.set_xticks(x, names, rotation=15)
    ax.set_yscale("log")
    ax.set_ylabel("perplexity on the built-in corpus (log scale)")
    ax.set_title("Seed experiment in miniature: perplexity after each swap\n(tiny-mistral-ja into "
                 "tiny-mixtral-ja-en; lower is better)", fontsize=10)
    ax.legend(title="language")
    plots.save_figure(ax, args.out / "perplexity.png")

    # Figure 2: first-choice change per layer for each variant.
    fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
    for name, (_, shift, _) in results.items():
        weights = np.array([shift.tokens[l] for l in shift.languages], float)
        first = sum(w * shift.first_changed[l] for w, l in zip(weights, shift.languages)) / weights.sum()
        ax.plot(layers, first, marker="o", label=name)
    ax.axhline(7 / 8, color="0.5", linestyle="--", label="chance if routing were unrelated (7/8)")
    ax.set_xticks(layers)
    ax.set_xlabel("MoE layer")
    ax.set_ylabel("share of tokens whose first-choice expert changed")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("Routing shift after each swap (0 = unchanged); layer 0 cannot move\nunless attention, norms or "
                 "embeddings were copied", fontsize=10)
    plots.save_figure(ax, args.out / "routing_shift.png")

    # Figure 3: where routing moved when four experts' MLPs were replaced.
    plots.save_figure(plots.shift_heatmap(results["MLP → e0-3"][1],
                                          title="MLP → experts 0-3: share of assignments after − before"),
                      args.out / "share_change_mlp_e0-3.png")
    print(f"wrote {args.out}/seed_experiment.md, perplexity.png, routing_shift.png, share_change_mlp_e0-3.png")


if __name__ == "__main__":
    main()
