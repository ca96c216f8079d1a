"""The ``routerscope`` command line.

    routerscope run                                   # the main job, offline, on the embedded default
    routerscope trace --model DIR_OR_HUB_ID --corpus ja=wagahai.txt --corpus en=botchan.txt --out out/

Every command writes into an output folder: the trace (``trace.npz``), one utilisation
heatmap per language, the ja − en difference map, per-layer entropy and load
(``routing.json``) and a Markdown summary.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

DEFAULT_MODEL = "tiny-mixtral-ja-en"


def _corpus_arg(value: str) -> tuple[str | None, str]:
    """``LANG=SOURCE`` or ``SOURCE``."""
    if "=" in value and not value.startswith("hf:"):
        language, source = value.split("=", 1)
        return language or None, source
    return None, value


def _add_corpus_options(p: argparse.ArgumentParser, default: list[str] | None) -> None:
    p.add_argument("--corpus", action="append", metavar="[LANG=]SOURCE", default=None,
                   help="a corpus, repeatable. SOURCE: a .txt file (one document per line or per blank-line "
                        "paragraph), a .jsonl file, a folder written by datasets' save_to_disk, 'hf:NAME' (hub, "
                        "needs network) or 'builtin' (the built-in ja/en pairs). LANG labels its documents, "
                        "e.g. ja=wagahai.txt" + (f" (default: {' '.join(default)})" if default else ""))
    p.add_argument("--text-field", default="text", help="JSONL/dataset field holding the text (default: text)")
    p.add_argument("--language-field", default=None,
                   help="JSONL/dataset field holding each document's language, instead of LANG=")
    p.add_argument("--split", default=None,
                   help="text files: auto|lines|paragraphs (default auto); datasets: the split name")
    p.add_argument("--config", default=None, help="hub datasets: the configuration name")
    p.add_argument("--max-docs", type=int, default=None, help="at most this many documents per corpus")


def _add_model_options(p: argparse.ArgumentParser, default: str | None) -> None:
    p.add_argument("--model", default=default, required=default is None,
                   help="a zoo model name, a local Hugging Face checkpoint folder, or a hub id"
                        + (f" (default: {default})" if default else ""))
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "auto"],
                   help="dtype to load the model in (default float32)")
    p.add_argument("--device", default=None, help="device to run on, e.g. cpu or cuda:0 (default: where it loads)")
    p.add_argument("--device-map", default=None, help="accelerate device map, e.g. auto, for models larger than one GPU")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow the checkpoint's own Python code to run (off by default; only for sources you trust)")


def _add_trace_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=int, default=8, help="documents per forward pass (default 8)")
    p.add_argument("--max-length", type=int, default=1024,
                   help="longest window in tokens; longer documents are split into windows (default 1024)")
    p.add_argument("--store-probs", action="store_true", help="also store every token's full router probabilities")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_tracing_options(p: argparse.ArgumentParser, model_default: str | None,
                         corpus_default: list[str] | None) -> None:
    """Model, corpus and trace options: every command that traces takes the same ones."""
    _add_model_options(p, model_default)
    _add_corpus_options(p, corpus_default)
    _add_trace_options(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="routerscope",
        description="See how Mixture-of-Experts language models route tokens to experts.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Start with `routerscope run` (offline; seconds on a laptop CPU).")
    parser.add_argument("--version", action="version", version=f"routerscope {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="the main job on the embedded default: trace, heatmaps, summary",
                         description="Trace a model on a corpus and write heatmaps, per-layer statistics and a "
                                     "Markdown summary. With no arguments: the zoo's tiny-mixtral-ja-en on the "
                                     "built-in Japanese/English corpus, offline.")
    _add_tracing_options(run, DEFAULT_MODEL, ["builtin"])
    run.add_argument("--out", type=Path, default=Path("routerscope-out"),
                     help="output folder (default ./routerscope-out)")
    run.set_defaults(handler=cmd_trace)

    trace = sub.add_parser("trace", help="trace a model on corpora and write the trace, heatmaps and statistics",
                           description="Record every token's top-k experts in every MoE layer and write trace.npz, "
                                       "utilisation heatmaps per language, the difference map, routing.json and "
                                       "summary.md into --out.")
    _add_tracing_options(trace, None, None)
    trace.add_argument("--out", type=Path, required=True, help="output folder")
    trace.set_defaults(handler=cmd_trace)

    check = sub.add_parser("check", help="routing regression check against a baseline file (exit 1 on regression)",
                           description="Trace a model on a corpus and compare per-layer routing metrics with a "
                                       "baseline JSON; exit 0 when within tolerance, 1 on a regression (printing "
                                       "each layer out of tolerance), 2 on an error. --update writes the baseline.")
    _add_tracing_options(check, DEFAULT_MODEL, ["builtin"])
    check.add_argument("--baseline", type=Path, required=True, help="baseline JSON file")
    check.add_argument("--update", action="store_true", help="write or refresh the baseline instead of checking")
    check.add_argument("--metrics", default="entropy,max_share,dead",
                       help="comma-separated: entropy, max_share, dead, jsd (default entropy,max_share,dead)")
    check.add_argument("--tol", action="append", default=[], metavar="METRIC=ABS[,REL]",
                       help="tolerance for a metric, absolute and optionally relative, e.g. entropy=0.1,0.05 "
                            "(defaults: entropy 0.05 bits or 2%%, max_share 0.05, dead 0, jsd 0.01 bits)")
    check.set_defaults(handler=cmd_check)

    swap = sub.add_parser("swap", help="streaming expert swap on safetensors checkpoints (never loads a model)",
                          description="Copy a dense checkpoint's MLP (and optionally attention, norms, lm_head, "
                                      "embeddings) into experts of a MoE checkpoint, tensor by tensor, writing a "
                                      "new sharded checkpoint with swap_manifest.json (sha256 of every shard).")
    swap.add_argument("--moe", type=Path, required=True, help="MoE checkpoint folder (e.g. Mixtral)")
    swap.add_argument("--dense", type=Path, required=True, help="dense checkpoint folder (e.g. a Mistral-7B)")
    swap.add_argument("--expert", default="0", help="expert index, or several comma-separated (default 0)")
    swap.add_argument("--parts", default="mlp",
                      help="comma-separated: mlp, attention, norms, lm_head, embeddings (default mlp)")
    swap.add_argument("--layers", default=None, help="comma-separated layer indices (default: every layer)")
    swap.add_argument("--router", default="keep",
                      help="router row of each swapped expert: keep, copy:J, mean or zero (default keep)")
    swap.add_argument("--allow", default="",
                      help="comma-separated config settings that may differ although they change the function, "
                           "e.g. rope_theta,rms_norm_eps (default: none)")
    swap.add_argument("--out", type=Path, required=True, help="output folder (must be new or empty)")
    swap.add_argument("--force", action="store_true", help="replace a checkpoint already in --out")
    swap.add_argument("--no-progress", action="store_true", help="no progress bar")
    swap.set_defaults(handler=cmd_swap)

    compare = sub.add_parser("compare", help="routing shift between two trace files of the same tokens",
                             description="Compare two traces of the same tokens (e.g. before and after a swap): "
                                         "per layer and language, first-choice changes, top-k agreement and Jaccard "
                                         "with chance values, share changes, JS divergence; writes before/after/"
                                         "difference heatmaps, shift.md and shift.csv.")
    compare.add_argument("before", type=Path, help="trace file before (trace.npz)")
    compare.add_argument("after", type=Path, help="trace file after")
    compare.add_argument("--swapped", default="", help="comma-separated swapped experts, listed first")
    compare.add_argument("--out", type=Path, required=True, help="output folder")
    compare.set_defaults(handler=cmd_compare)

    report = sub.add_parser("report", help="test language specialisation; write a Markdown and HTML report",
                            description="Test whether experts specialise by language with document-level "
                                        "permutations, bootstrap intervals, a split-half noise floor and an "
                                        "equivalence test, under controls; write report.md, report.html, CSV tables "
                                        "and figures. Give a trace file, or a model and corpora to trace.")
    report.add_argument("--trace", type=Path, default=None, help="an existing trace file (else --model/--corpus)")
    _add_tracing_options(report, DEFAULT_MODEL, ["builtin"])
    report.add_argument("--bound", type=float, default=0.05,
                        help="equivalence bound on max |Δ_e|, share of tokens (default 0.05)")
    report.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")
    report.add_argument("--permutations", type=int, default=2000, help="document-level permutations (default 2000)")
    report.add_argument("--bootstraps", type=int, default=1000, help="bootstrap resamples (default 1000)")
    report.add_argument("--seed", type=int, default=0, help="random seed for resampling (default 0)")
    report.add_argument("--out", type=Path, default=Path("routerscope-report"), help="output folder")
    report.set_defaults(handler=cmd_report)
    return parser


def cmd_report(args) -> int:
    from .report import write_report
    from .trace_data import Trace

    if args.trace is not None:
        tr = Trace.load(args.trace)
        title = f"Language specialisation: {tr.model_name} ({args.trace.name})"
    else:
        tr, corpus = _trace_from_args(args)
        title = f"Language specialisation: {args.model} on {corpus.name}"
    files = write_report(tr, args.out, title=title, bound=args.bound, alpha=args.alpha,
                         permutations=args.permutations, bootstraps=args.bootstraps, seed=args.seed)
    _say(f"wrote {len(files)} files to {args.out}/ (open report.html)")
    return 0


def _ints(text: str | None) -> list[int] | None:
    if text is None or text == "":
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{text!r}: expected comma-separated integers") from None


def cmd_swap(args) -> int:
    from .checkpoint_swap import swap_checkpoint
    from .compat import SwapError

    try:
        manifest = swap_checkpoint(args.moe, args.dense, args.out, experts=_ints(args.expert) or [],
                                   parts=[p.strip() for p in args.parts.split(",") if p.strip()],
                                   layers=_ints(args.layers), router=args.router,
                                   allow=[a.strip() for a in args.allow.split(",") if a.strip()], force=args.force,
                                   progress=not args.no_progress)
    except SwapError as err:
        _say(f"routerscope swap: error: {err}")
        return 2
    _say(f"wrote {args.out}: {len(manifest['changed'])} tensor ranges replaced in {len(manifest['shards'])} shard(s); "
         "see swap_manifest.json")
    return 0


def cmd_compare(args) -> int:
    from . import plots
    from ._io import atomic_write_text
    from .shift import compare
    from .trace_data import Trace

    before, after = Trace.load(args.before), Trace.load(args.after)
    shift = compare(before, after, swapped=_ints(args.swapped) or ())
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    plots.save_figure(plots.utilization_heatmap(before, title=f"before: {before.model_name}"), out / "before.png")
    plots.save_figure(plots.utilization_heatmap(after, title=f"after: {after.model_name}"), out / "after.png")
    plots.save_figure(plots.shift_heatmap(shift), out / "difference.png")
    atomic_write_text(out / "shift.md", shift.to_markdown())
    atomic_write_text(out / "shift.csv", shift.to_frame().to_csv(index=False))
    print(shift.to_markdown())
    _say(f"wrote before.png, after.png, difference.png, shift.md, shift.csv to {out}/")
    return 0


def _version() -> str:
    from . import __version__

    return __version__


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cmd_trace(args) -> int:
    started = time.time()
    if not args.corpus and args.command == "trace":
        raise SystemExit("routerscope trace: give at least one --corpus [LANG=]SOURCE")
    tr, corpus = _trace_from_args(args)
    written = write_outputs(tr, args.out, corpus_name=corpus.name, model_name=args.model)
    _say(f"done in {time.time() - started:.1f}s; wrote to {args.out}/:")
    for path in written:
        _say(f"  {path.name}")
    return 0


def _trace_from_args(args):
    from .corpus import Corpus, load_corpus
    from .models import load_model
    from .tracing import trace

    specs = [_corpus_arg(c) for c in (args.corpus or ["builtin"])]
    _say(f"loading {args.model} ...")
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device, device_map=args.device_map,
                                  trust_remote_code=args.trust_remote_code)
    corpora = [load_corpus(source, language, text_field=args.text_field, language_field=args.language_field,
                           split=args.split, config=args.config, max_docs=args.max_docs) for language, source in specs]
    corpus = Corpus.concat(corpora)
    counts = {lang: corpus.languages.count(lang) for lang in dict.fromkeys(corpus.languages)}
    _say(f"tracing {len(corpus)} documents ({', '.join(f'{k}: {v}' for k, v in counts.items())}) ...")
    tr = trace(model, corpus.texts, tokenizer, language=corpus.languages, pair_ids=corpus.pair_ids,
               batch_size=args.batch_size, max_length=args.max_length, store_probs=args.store_probs,
               progress=not args.no_progress)
    return tr, corpus


def cmd_check(args) -> int:
    from .testing import BaselineError, check_routing, write_baseline

    tolerances = {}
    for item in args.tol:
        name, _, values = item.partition("=")
        try:
            numbers = [float(v) for v in values.split(",")]
        except ValueError:
            raise ValueError(f"--tol {item!r}: expected METRIC=ABS or METRIC=ABS,REL with numbers") from None
        tolerances[name] = {"abs": numbers[0], **({"rel": numbers[1]} if len(numbers) > 1 else {})}
    tr, _ = _trace_from_args(args)
    if args.update:
        write_baseline(tr, args.baseline)
        _say(f"wrote baseline {args.baseline}")
        return 0
    try:
        result = check_routing(tr, args.baseline, metrics=[m.strip() for m in args.metrics.split(",") if m.strip()],
                               tolerances=tolerances)
    except BaselineError as err:
        _say(f"routerscope check: {err}")
        return 2
    print(result.table(only_failures=False))
    print(result.message())
    return 0 if result.ok else 1


def write_outputs(tr, out: Path, *, corpus_name: str, model_name: str) -> list[Path]:
    """trace.npz, utilisation heatmaps per language, the difference map, routing.json, summary.md."""
    from . import plots
    from ._io import atomic_write_text
    from .metrics import routing_summary

    out.mkdir(parents=True, exist_ok=True)
    written = [tr.save(out / "trace.npz")]
    languages = sorted(set(tr.doc_languages[tr.doc_ids].tolist()))
    for language in languages:
        ax = plots.utilization_heatmap(tr.select(language=language),
                                       title=f"{model_name} on {corpus_name}: {language} utilisation")
        written.append(plots.save_figure(ax, out / f"utilization_{language}.png"))
    pair = ("ja", "en") if {"ja", "en"} <= set(languages) else tuple(languages[:2])
    if len(pair) == 2:
        ax = plots.difference_heatmap(tr, *pair, title=f"{model_name} on {corpus_name}: {pair[0]} − {pair[1]}")
        written.append(plots.save_figure(ax, out / f"difference_{pair[0]}-minus-{pair[1]}.png"))
    summary = routing_summary(tr)
    summary["corpus"] = corpus_name
    written.append(atomic_write_text(out / "routing.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n"))
    written.append(atomic_write_text(out / "summary.md", _markdown_summary(tr, summary, model_name, corpus_name,
                                                                            [p.name for p in written], pair)))
    return written


def _markdown_summary(tr, summary: dict, model_name: str, corpus_name: str, files: list[str], pair) -> str:
    import numpy as np

    langs = summary["languages"]
    lines = [f"# routerscope: {model_name} on {corpus_name}", "",
             f"{len(tr):,} tokens in {len(np.unique(tr.doc_ids)):,} documents; {tr.n_layers} MoE layers, "
             f"top-{tr.top_k} of {tr.n_experts} experts. Special tokens (BOS/EOS) are left out of every number.",
             "", "Load is the share of assignments N_e / (k · tokens): chance "
             f"1/{tr.n_experts} = {1 / tr.n_experts:.3f}. Entropy of the load in bits, at most "
             f"log2 {tr.n_experts} = {np.log2(tr.n_experts):.2f}.", "",
             "| layer | " + " | ".join(f"{lang} entropy (bits) | {lang} max load" for lang in langs) + " |",
             "|---|" + "---|---|" * len(langs)]
    for i, layer in enumerate(summary["layers"]):
        cells = [f"{langs[lang]['entropy_bits'][i]:.3f} | {langs[lang]['max_load'][i]:.3f}" for lang in langs]
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    if len(pair) == 2 and all(p in langs for p in pair):
        a = np.asarray(langs[pair[0]]["load"])
        b = np.asarray(langs[pair[1]]["load"])
        diff = a - b
        layer, expert = np.unravel_index(np.abs(diff).argmax(), diff.shape)
        lines += ["", f"Largest {pair[0]} − {pair[1]} difference in share of assignments: "
                      f"{diff[layer, expert]:+.3f} (layer {summary['layers'][layer]}, expert {expert}). "
                      "This is a description of this corpus, not a test: tokens are not independent, so no "
                      "p-value is given here."]
    lines += ["", "Files: " + ", ".join(f"`{f}`" for f in files + ["summary.md"]), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import matplotlib

    matplotlib.use("Agg")  # the CLI only writes files; never open a window
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.handler(args) or 0
    except KeyboardInterrupt:
        _say("interrupted")
        return 130
    except (ValueError, KeyError, TypeError, OSError) as err:  # OSError: files, and hub downloads offline
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        _say(f"routerscope {args.command}: error: {message}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
