"""`routerscope report`: the specialisation report on the embedded model, end to end."""

from __future__ import annotations

import routerscope
from routerscope import zoo
from routerscope.cli import main
from routerscope.corpus import builtin


def test_report_writes_markdown_html_tables_and_figures(tmp_path):
    model, tokenizer = zoo.load("tiny-mixtral-ja-en")
    corpus = builtin()
    tr = routerscope.trace(model, corpus.texts[:160], tokenizer, language=corpus.languages[:160],
                           pair_ids=corpus.pair_ids[:160], progress=False)
    tr.save(tmp_path / "trace.npz")
    assert main(["report", "--trace", str(tmp_path / "trace.npz"), "--permutations", "199", "--bootstraps", "100",
                 "--out", str(tmp_path / "rep")]) == 0
    out = tmp_path / "rep"
    for name in ("report.md", "report.html", "layers.csv", "experts.csv", "controls.csv", "scripts.csv", "pos.csv",
                 "mi_jsd.png", "delta.png", "utilization_ja.png", "utilization_en.png"):
        assert (out / name).stat().st_size > 0, name
    text = (out / "report.md").read_text()
    res = routerscope.specialization(tr, permutations=199, bootstraps=100)
    for verdict in set(res.verdicts):
        assert verdict in text
    assert "80 ja and 80 en documents" in text and "label flips within translation pairs" in text
    assert "## By Japanese part of speech" in text and "助詞" in text
    html = (out / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and '<img src="mi_jsd.png"' in html and "<table>" in html
