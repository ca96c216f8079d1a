"""Trace: selection, concatenation, utilisation, tidy frame, and the safe file format."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

import routerscope
from routerscope import Trace, TraceFileError

from conftest import tiny_mixtral


@pytest.fixture(scope="module")
def traces(mixtral_tokenizer):
    model = tiny_mixtral(layers=3)
    ja = routerscope.trace(model, ["吾輩は猫である。", "名前はまだ無い。"], mixtral_tokenizer, language="ja",
                           pair_ids=[0, 1], store_probs=True, progress=False)
    en = routerscope.trace(model, ["I am a cat.", "I have no name yet."], mixtral_tokenizer, language="en",
                           pair_ids=[0, 1], store_probs=True, progress=False)
    return ja, en


def test_round_trip_is_exact(traces, tmp_path):
    both = Trace.concat(traces)
    path = both.save(tmp_path / "t.rstrace")
    again = Trace.load(path)
    assert again.equals(both)
    assert again.experts.dtype == np.uint8 and again.weights.dtype == np.float32
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_corrupt_and_foreign_files(traces, tmp_path):
    good = traces[0].save(tmp_path / "good.rstrace")
    data = good.read_bytes()
    (tmp_path / "truncated").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage").write_bytes(b"\x00not a trace at all" * 10)
    np.savez(tmp_path / "foreign.npz", x=np.arange(3))
    for name in ("truncated", "garbage", "foreign.npz"):
        with pytest.raises(TraceFileError, match="not a routerscope trace|corrupt"):
            Trace.load(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="no trace file"):
        Trace.load(tmp_path / "missing")
    # An archive whose arrays would need pickle is refused, never unpickled.
    with zipfile.ZipFile(good) as z, zipfile.ZipFile(tmp_path / "evil.npz", "w") as out:
        for item in z.namelist():
            if item != "texts.npy":
                out.writestr(item, z.read(item))
        np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
        out.write(tmp_path / "obj.npy", "texts.npy")
    with pytest.raises(TraceFileError):
        Trace.load(tmp_path / "evil.npz")


def test_concat_select_and_utilization(traces):
    ja, en = traces
    both = Trace.concat([ja, en])
    assert len(both) == len(ja) + len(en) and both.n_docs == 4
    only_ja = both.select(language="ja")
    assert np.array_equal(only_ja.experts, ja.experts) and np.array_equal(only_ja.token_ids, ja.token_ids)
    assert only_ja.n_docs == 4  # document ids stay valid after a selection
    assert both.pair_ids.tolist() == [0, 1, 0, 1]  # one side of the same pairs each
    counts = both.utilization()
    assert counts.shape == (3, 8)
    assert (counts == ja.utilization() + en.utilization()).all()
    assert np.allclose(both.utilization(normalize=True).sum(1), 1.0)
    sub = both.select(layers=[2, 0], exclude_special=True)
    assert sub.layers.tolist() == [2, 0] and not sub.special.any()
    assert np.array_equal(sub.experts[:, 0], both.experts[~both.special][:, 2])
    with pytest.raises(ValueError, match="not MoE layers"):
        both.select(layers=[7])
    with pytest.raises(ValueError, match="no document has language"):
        both.select(language="fr")


def test_concat_refuses_other_models(traces, mixtral_tokenizer):
    other = routerscope.trace(tiny_mixtral(layers=2), ["猫"], mixtral_tokenizer, progress=False)
    with pytest.raises(ValueError, match="differ in experts, top-k or layers"):
        Trace.concat([traces[0], other])


def test_to_frame_is_tidy(traces):
    ja = traces[0]
    frame = ja.to_frame()
    assert len(frame) == len(ja) * 3 * 2
    first = frame[(frame["rank"] == 0) & (frame["layer"] == 1)]
    assert first["expert"].tolist() == ja.experts[:, 1, 0].tolist()
    assert set(frame.loc[~frame["special"], "pos1"]) >= {"名詞", "助詞"}
    counts = frame.groupby(["layer", "expert"]).size().unstack(fill_value=0).reindex(columns=range(8), fill_value=0)
    assert (counts.to_numpy() == ja.utilization()).all()
