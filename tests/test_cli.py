"""The command line, run the way a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import routerscope
from routerscope.cli import main

from conftest import tiny_mixtral


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, mixtral_tokenizer):
    folder = tmp_path_factory.mktemp("tiny-mixtral")
    tiny_mixtral(layers=2).save_pretrained(folder)
    mixtral_tokenizer.save_pretrained(folder)
    return folder


def test_trace_command_writes_everything(checkpoint, tmp_path, capsys):
    ja = tmp_path / "ja.txt"
    ja.write_text("吾輩は猫である。\n名前はまだ無い。\n", encoding="utf-8")
    en = tmp_path / "en.jsonl"
    en.write_text(json.dumps({"body": "I am a cat."}) + "\n" + json.dumps({"body": "No name yet."}) + "\n")
    out = tmp_path / "out"
    code = main(["trace", "--model", str(checkpoint), "--corpus", f"ja={ja}", "--corpus", f"en={en}",
                 "--text-field", "body", "--out", str(out), "--no-progress"])
    assert code == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["difference_ja-minus-en.png", "routing.json", "summary.md", "trace.npz", "utilization_en.png",
                     "utilization_ja.png"]
    tr = routerscope.Trace.load(out / "trace.npz")
    assert sorted(set(tr.doc_languages.tolist())) == ["en", "ja"] and tr.n_docs == 4
    summary = json.loads((out / "routing.json").read_text())
    assert summary["chance_share"] == 1 / 8 and len(summary["languages"]["ja"]["entropy_bits"]) == 2
    # routing.json agrees with the trace it came from.
    shares = tr.select(language="ja", exclude_special=True).utilization(normalize=True)
    assert np.allclose(summary["languages"]["ja"]["load"], shares, atol=1e-6)
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_errors_are_one_clear_line(tmp_path, capsys):
    assert main(["trace", "--model", str(tmp_path / "nope"), "--corpus", "builtin", "--out", str(tmp_path)]) == 2
    assert "is neither a zoo model" in capsys.readouterr().err
    # A folder that is not a checkpoint: transformers raises OSError; one line, no traceback.
    (tmp_path / "empty").mkdir()
    assert main(["trace", "--model", str(tmp_path / "empty"), "--corpus", "builtin", "--out", str(tmp_path / "h")]) == 2
    assert "routerscope trace: error:" in capsys.readouterr().err
    assert main(["run", "--corpus", f"ja={tmp_path / 'missing.txt'}", "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_help_explains_every_option(capsys):
    for command in (["--help"], ["run", "--help"], ["trace", "--help"]):
        with pytest.raises(SystemExit) as info:
            main(command)
        assert info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--model", "--corpus", "--text-field", "--batch-size", "--max-length", "--store-probs", "--out"):
        assert option in text


@pytest.mark.slow
def test_run_offline_end_to_end(tmp_path):
    """The README's first command, offline, in a subprocess like a user's shell."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    result = subprocess.run([sys.executable, "-m", "routerscope.cli", "run", "--out", str(tmp_path / "out"),
                             "--no-progress"], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    for name in ("utilization_ja.png", "utilization_en.png", "difference_ja-minus-en.png", "routing.json",
                 "summary.md", "trace.npz"):
        assert (out / name).stat().st_size > 0
    summary = (out / "summary.md").read_text()
    assert "tiny-mixtral-ja-en" in summary and "| layer |" in summary
