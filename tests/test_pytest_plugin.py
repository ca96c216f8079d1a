"""The pytest plugin and `routerscope check`, exercised in temporary projects with pytester."""

from __future__ import annotations

import json

import pytest

from routerscope.cli import main

INNER = '''
import routerscope
from routerscope import find_moe_layers, zoo
from routerscope.corpus import builtin

MUTATION = {mutation!r}

def test_routing(routing_baseline):
    model, tokenizer = zoo.load("tiny-mixtral-ja-en")
    corpus = builtin()
    texts, languages = corpus.texts[:60], corpus.languages[:60]
    if MUTATION == "collapse-last-layer":
        # Zero router weights: equal logits, so every token goes to experts 0 and 1.
        find_moe_layers(model)[-1].router.weight.data.zero_()
    elif MUTATION == "swap-4-experts":
        dense, _ = zoo.load("tiny-mistral-ja")
        routerscope.swap_expert(model, dense, expert=[0, 1, 2, 3])
    trace = routerscope.trace(model, texts, tokenizer, language=languages, progress=False)
    routing_baseline("tiny", trace, metrics={metrics!r}, tolerances={tolerances!r})
'''


def make_test(pytester, mutation="", metrics=("entropy", "max_share", "dead"), tolerances=None):
    pytester.makepyfile(test_inner=INNER.format(mutation=mutation, metrics=tuple(metrics), tolerances=tolerances))


def test_update_writes_a_baseline_then_an_unchanged_model_passes(pytester):
    make_test(pytester)
    result = pytester.runpytest_subprocess("--routerscope-update")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*routerscope baselines written*", "*routing_baselines/tiny.json*"])
    baseline = json.loads((pytester.path / "routing_baselines" / "tiny.json").read_text())
    assert baseline["model"] == "tiny-mixtral-ja-en" and baseline["n_experts"] == 8 and baseline["top_k"] == 2
    assert baseline["corpus_fingerprint"].startswith("sha256:") and baseline["routerscope_version"]
    assert len(baseline["metrics"]["entropy"]) == 4
    pytester.runpytest_subprocess().assert_outcomes(passed=1)


def test_collapsed_router_fails_naming_the_layer(pytester):
    make_test(pytester)
    pytester.runpytest_subprocess("--routerscope-update").assert_outcomes(passed=1)
    make_test(pytester, mutation="collapse-last-layer")
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*routing regression*in layer(s) [[]3[]]*", "*    3  entropy*FAIL*",
                                 "*    3  dead*6.0000*FAIL*"])
    assert "    0  entropy" not in result.stdout.str()  # only layers out of tolerance are listed


def test_swapped_experts_fail_or_pass_by_tolerance(pytester):
    make_test(pytester, metrics=("entropy", "jsd"))
    pytester.runpytest_subprocess("--routerscope-update").assert_outcomes(passed=1)
    make_test(pytester, mutation="swap-4-experts", metrics=("entropy", "jsd"),
              tolerances={"entropy": {"abs": 0.001, "rel": 0.0}, "jsd": 0.0005})
    strict = pytester.runpytest_subprocess()
    strict.assert_outcomes(failed=1)
    strict.stdout.fnmatch_lines(["*routing regression*"])
    assert "    0  entropy" not in strict.stdout.str()  # layer 0 cannot move with an MLP-only swap
    make_test(pytester, mutation="swap-4-experts", metrics=("entropy", "jsd"),
              tolerances={"entropy": {"abs": 0.5, "rel": 0.0}, "jsd": 0.2})
    pytester.runpytest_subprocess().assert_outcomes(passed=1)


def test_missing_baseline_fails_with_the_instruction(pytester):
    make_test(pytester)
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*no routing baseline at*tiny.json*pytest --routerscope-update*"])


def test_baseline_of_another_model_is_refused(pytester):
    make_test(pytester)
    pytester.runpytest_subprocess("--routerscope-update").assert_outcomes(passed=1)
    path = pytester.path / "routing_baselines" / "tiny.json"
    baseline = json.loads(path.read_text())
    baseline["n_experts"] = 16
    path.write_text(json.dumps(baseline))
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*made for a model with 16 experts*this trace has 8 experts*"])
    baseline["n_experts"], baseline["layers"] = 8, [0, 1]
    path.write_text(json.dumps(baseline))
    result = pytester.runpytest_subprocess()
    result.stdout.fnmatch_lines(["*MoE layers [[]0, 1[]]*layers [[]0, 1, 2, 3[]]*"])


def test_check_command(tmp_path, capsys):
    baseline = tmp_path / "b.json"
    common = ["--baseline", str(baseline), "--max-docs", "30", "--no-progress"]
    assert main(["check", *common]) == 2
    assert "no routing baseline" in capsys.readouterr().err
    assert main(["check", "--update", *common]) == 0
    assert main(["check", *common]) == 0
    out = capsys.readouterr().out
    assert "routing matches" in out and "entropy" in out
    data = json.loads(baseline.read_text())
    data["metrics"]["entropy"][2] += 0.5
    baseline.write_text(json.dumps(data))
    assert main(["check", *common]) == 1
    out = capsys.readouterr().out
    assert "in layer(s) [2]" in out
    assert main(["check", *common, "--tol", "entropy=0.6"]) == 0


def test_assertion_helper_without_pytest_fixture(tmp_path, mixtral_tokenizer):
    import numpy as np

    import routerscope
    from routerscope.testing import assert_routing_matches, write_baseline

    from conftest import tiny_mixtral

    texts = ["吾輩は猫である。", "I am a cat.", "名前はまだ無い。"]
    model = tiny_mixtral(layers=2)
    trace = routerscope.trace(model, texts, mixtral_tokenizer, progress=False)
    write_baseline(trace, tmp_path / "b.json")
    assert assert_routing_matches(trace, tmp_path / "b.json").ok
    routerscope.find_moe_layers(model)[1].router.weight.data.zero_()
    collapsed = routerscope.trace(model, texts, mixtral_tokenizer, progress=False)
    assert np.array_equal(collapsed.experts[:, 0], trace.experts[:, 0])
    with pytest.raises(AssertionError, match=r"in layer\(s\) \[1\]"):
        assert_routing_matches(collapsed, tmp_path / "b.json")
