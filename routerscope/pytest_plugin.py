"""routerscope's pytest plugin (registered through the ``pytest11`` entry point).

    def test_routing(routing_baseline):
        trace = routerscope.trace(model, texts, tokenizer, progress=False)
        routing_baseline("tiny-mixtral", trace, metrics=("entropy", "dead"), tolerances={"entropy": 0.1})

Baselines live in ``routing_baselines/`` beside the test file (set ``routerscope_baselines``
in the pytest ini to put them elsewhere, relative to the rootdir). ``pytest
--routerscope-update`` writes or refreshes them and lists which; without it, a missing
baseline fails with the instruction to create one.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .testing import DEFAULT_METRICS, BaselineError, check_routing, write_baseline


def pytest_addoption(parser):
    group = parser.getgroup("routerscope", "routing regression checks")
    group.addoption("--routerscope-update", action="store_true", default=False,
                    help="write or refresh routerscope routing baselines instead of checking against them")
    parser.addini("routerscope_baselines", "folder for routing baselines, relative to the rootdir "
                  "(default: routing_baselines/ beside each test file)", default="")


def pytest_configure(config):
    config._routerscope_updated = []


@pytest.fixture
def routing_baseline(request):
    """Check a Trace against the named baseline (or write it under --routerscope-update).

    Call it as ``routing_baseline(name, trace, metrics=..., tolerances=..., texts=...)``;
    it returns the RoutingCheck (or the written path when updating)."""
    config = request.config
    folder_option = config.getini("routerscope_baselines")
    folder = Path(config.rootpath) / folder_option if folder_option else Path(request.path).parent / "routing_baselines"

    def check(name: str, trace, *, metrics=DEFAULT_METRICS, tolerances=None, texts=None, languages=None):
        path = folder / f"{name}.json"
        if config.getoption("routerscope_update"):
            write_baseline(trace, path, texts=texts, languages=languages)
            config._routerscope_updated.append(str(path))
            return path
        try:
            result = check_routing(trace, path, metrics=metrics, tolerances=tolerances, texts=texts,
                                   languages=languages)
        except BaselineError as err:
            pytest.fail(str(err), pytrace=False)
        if not result.ok:
            pytest.fail(result.message(), pytrace=False)
        return result

    return check


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    updated = getattr(config, "_routerscope_updated", [])
    if updated:
        terminalreporter.section("routerscope baselines written")
        for path in updated:
            terminalreporter.write_line(f"  {path}")
        terminalreporter.write_line("Review them and commit them with your tests.")
