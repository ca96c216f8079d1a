"""The specialisation report: Markdown and HTML with figures, for any trace with two languages.

    write_report(trace, "report/", title="tiny-mixtral-ja-en on the built-in corpus")

Writes report.md, report.html, layers.csv, experts.csv, controls.csv and the figures
(mi_jsd.png, delta.png, utilization_<lang>.png).
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pandas as pd

from . import plots
from ._io import atomic_write_text
from .language_specialization import controls, specialization, token_scripts, utilization_by_class
from .trace_data import Trace


def _table(frame: pd.DataFrame, floatfmt: str = "{:.4g}") -> str:
    cols = list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in frame.iterrows():
        cells = [floatfmt.format(v) if isinstance(v, (float, np.floating)) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(trace: Trace, out: str | Path, *, title: str | None = None, bound: float = 0.05,
                 alpha: float = 0.05, permutations: int = 2000, bootstraps: int = 1000, seed: int = 0) -> list[Path]:
    """Run the specialisation test with its controls and write the report; returns the files."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    res = specialization(trace, bound=bound, alpha=alpha, permutations=permutations, bootstraps=bootstraps,
                         seed=seed)
    a, b = res.languages
    title = title or f"Language specialisation of {trace.model_name}"
    files = [plots.save_figure(plots.specialization_curves(res, title=title), out / "mi_jsd.png"),
             plots.save_figure(plots.delta_heatmap(res), out / "delta.png")]
    for lang in (a, b):
        files.append(plots.save_figure(plots.utilization_heatmap(trace.select(language=lang),
                                                                 title=f"{trace.model_name}: {lang} utilisation"),
                                       out / f"utilization_{lang}.png"))
    layers = res.to_frame()
    experts = res.expert_frame()
    ctrl = controls(trace, bound=bound, alpha=alpha, permutations=min(permutations, 1000),
                    bootstraps=min(bootstraps, 500), seed=seed)
    scripts = utilization_by_class(trace, token_scripts(trace))
    japanese = trace.select(language="ja") if "ja" in (a, b) else None
    pos = utilization_by_class(japanese, japanese.token_pos1) if japanese is not None and len(japanese.word_pos1) \
        else pd.DataFrame()
    files += [atomic_write_text(out / "layers.csv", layers.to_csv(index=False)),
              atomic_write_text(out / "experts.csv", experts.to_csv(index=False)),
              atomic_write_text(out / "controls.csv", ctrl.to_csv(index=False)),
              atomic_write_text(out / "scripts.csv", scripts.to_csv(index=False)),
              atomic_write_text(out / "pos.csv", pos.to_csv(index=False))]
    counts = {v: res.verdicts.count(v) for v in dict.fromkeys(res.verdicts)}
    summary = "; ".join(f"{n} layer(s) {v}" for v, n in counts.items())
    verdict_table = layers[["layer", "verdict", "max_abs_delta", "bound", "p_perm_holm", "mi_bits", "mi_ci_low",
                            "mi_ci_high", "jsd_bits", "jsd_noise_floor_95", "cramers_v"]]
    stats_table = layers[["layer", f"entropy_{a}_bits", f"entropy_{b}_bits", "entropy_max_bits",
                          f"entropy_{a}_normalized", f"entropy_{b}_normalized", "mi_over_H_language",
                          "consecutive_first", "chance_consecutive_first", "chance_consecutive_first_matched",
                          "consecutive_any", "chance_consecutive_any", "chance_consecutive_any_matched"]]
    top = experts.reindex(experts["delta"].abs().sort_values(ascending=False).index).head(8)
    ctrl_pivot = ctrl.dropna(subset=["layer"]).pivot(index="layer", columns="control", values="verdict").reset_index() \
        if ctrl["layer"].notna().any() else ctrl
    skipped = ctrl[ctrl["layer"].isna()]
    script_summary = scripts.groupby("class").agg(tokens=("tokens", "first"),
                                                  mean_jsd_from_all_bits=("jsd_from_all_bits", "mean")).reset_index()
    md = [f"# {title}", "",
          f"**Verdict:** {summary}.", "",
          f"Claim tested: experts do not specialise by language ({a} vs {b}). Settings: equivalence bound "
          f"max |Δ_e| < {bound:g} (share of tokens), α = {alpha:g}, {res.permutations} document-level permutations "
          f"({'label flips within translation pairs' if res.paired else 'labels shuffled across documents'}), "
          f"{res.bootstraps} bootstrap resamples of {'pairs' if res.paired else 'documents'}, split-half noise floor. "
          f"Data: {res.n_docs[a]} {a} and {res.n_docs[b]} {b} documents; {res.n_tokens[a]:,} {a} and "
          f"{res.n_tokens[b]:,} {b} tokens (special tokens left out). {trace.n_layers} MoE layers, top-{trace.top_k} "
          f"of {trace.n_experts} experts.", "",
          "Verdict per layer: *equivalent* when every expert's 90% bootstrap interval of Δ_e lies inside ±bound "
          "(TOST as an intersection–union test); else *language-specialised* when the permutation test of "
          "max_e |Δ_e| rejects at α after Holm correction across layers; else *inconclusive*. "
          "Token-level χ² p-values are not reported: tokens within a document are not independent "
          "(see the consecutive-token agreement below).", "",
          "## Per layer", "", _table(verdict_table), "",
          f"Chance values: share of assignments 1/{trace.n_experts} = {1 / trace.n_experts:.3f}; share of tokens "
          f"k/E = {trace.top_k / trace.n_experts:.3f}; MI and JSD 0 bits; Cramér's V is an effect size only.", "",
          "![MI and JSD per layer](mi_jsd.png)", "", "## Entropy and consecutive-token agreement (Mixtral Table 5)",
          "", _table(stats_table), "", "## Experts with the largest |Δ_e|", "",
          _table(top[["layer", "expert", "delta", "delta_ci_low", "delta_ci_high", "q_bh", f"purity_{a}",
                      f"{a}_share_of_all_tokens"]]), "",
          f"Purity: share of the expert's assignments that come from {a}, against {a}'s share of all tokens.", "",
          "![Delta heatmap](delta.png)", "", "## Controls", "", _table(ctrl_pivot), ""]
    if len(skipped):
        md += ["Controls not computed: " + "; ".join(f"{r.control} ({r.verdict})" for r in skipped.itertuples()), ""]
    if len(pos):
        pos_summary = pos.groupby("class").agg(tokens=("tokens", "first"),
                                               mean_jsd_from_all_ja_bits=("jsd_from_all_bits", "mean")).reset_index()
        md += ["## By Japanese part of speech (descriptive)", "",
               "UniDic pos1 of the word each Japanese token belongs to (fugashi + unidic-lite); JS divergence of its "
               "utilisation from that of all Japanese tokens, averaged over layers (classes with 20+ tokens).", "",
               _table(pos_summary.sort_values("tokens", ascending=False)), ""]
    md += ["## By script (descriptive)", "",
           "JS divergence of each script class's utilisation from that of all tokens, averaged over layers. Byte-"
           "fallback tokens (rare kanji split into bytes) can look like a 'Japanese expert'.", "",
           _table(script_summary), "",
           f"![{a} utilisation](utilization_{a}.png) ![{b} utilisation](utilization_{b}.png)", "",
           "Files: layers.csv, experts.csv, controls.csv, scripts.csv, pos.csv.", ""]
    markdown = "\n".join(md)
    files.append(atomic_write_text(out / "report.md", markdown))
    files.append(atomic_write_text(out / "report.html", _html(markdown, title)))
    return files


def _html(markdown: str, title: str) -> str:
    """A self-contained page from the report's Markdown (tables, images, paragraphs, headings)."""
    body, table = [], []

    def flush_table():
        if table:
            rows = [r.strip("|").split("|") for r in table if not set(r.replace("|", "").strip()) <= {"-"}]
            head, *rest = rows
            body.append("<table><tr>" + "".join(f"<th>{html.escape(c.strip())}</th>" for c in head) + "</tr>"
                        + "".join("<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in r) + "</tr>"
                                  for r in rest) + "</table>")
            table.clear()

    for line in markdown.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush_table()
        if line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("!["):
            for part in line.split(") "):
                src = part[part.index("(") + 1:].rstrip(")")
                alt = part[2:part.index("]")]
                body.append(f'<img src="{html.escape(src)}" alt="{html.escape(alt)}">')
        elif line.strip():
            text = html.escape(line).replace("**", "")
            body.append(f"<p>{text}</p>")
    flush_table()
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.45}"
             "table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 7px}"
             "img{max-width:100%;margin:0.5em 0}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>" + "\n".join(body) + "</body></html>\n")
