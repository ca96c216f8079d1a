"""routerscope.specialization on synthetic traces with a known answer, and the closed forms."""

from __future__ import annotations

import numpy as np
import pytest

from routerscope import Trace, specialization
from routerscope.language_specialization import (INCONCLUSIVE, SPECIALISED, benjamini_hochberg, chance_any_shared,
                                        consecutive_agreement, controls, equivalent_label, holm, token_script)


def synthetic_trace(seed, docs_per_language=40, tokens_per_doc=40, layers=4, n_experts=8, top_k=2, planted=None,
                    paired=True, doc_noise=0.5):
    """Top-k routing drawn per token from a per-document preference (so tokens within a document
    are correlated, as in real models). ``planted=(layer, expert, boost)`` adds probability mass for
    Japanese documents in one layer."""
    rng = np.random.default_rng(seed)
    n_docs = 2 * docs_per_language
    languages = np.array(["ja"] * docs_per_language + ["en"] * docs_per_language)
    experts = np.empty((n_docs * tokens_per_doc, layers, top_k), dtype=np.uint8)
    base = rng.dirichlet(np.full(n_experts, 5.0), size=layers)
    for d in range(n_docs):
        for layer in range(layers):
            p = base[layer] * np.exp(doc_noise * rng.standard_normal(n_experts))
            if planted and layer == planted[0] and languages[d] == "ja":
                p = p / p.sum()
                p[planted[1]] += planted[2]
            p = p / p.sum()
            gumbel = np.log(p)[None, :] - np.log(-np.log(rng.random((tokens_per_doc, n_experts))))
            experts[d * tokens_per_doc:(d + 1) * tokens_per_doc, layer] = np.argsort(-gumbel, axis=1)[:, :top_k]
    n = len(experts)
    doc_ids = np.repeat(np.arange(n_docs), tokens_per_doc).astype(np.int32)
    pair_ids = np.concatenate([np.arange(docs_per_language)] * 2) if paired else np.full(n_docs, -1)
    return Trace(experts=experts, weights=np.full(experts.shape, 1 / top_k, np.float32),
                 token_ids=rng.integers(3, 100, n).astype(np.int32), tokens=np.full(n, "x"), doc_ids=doc_ids,
                 positions=np.tile(np.arange(tokens_per_doc), n_docs).astype(np.int32), special=np.zeros(n, bool),
                 char_spans=np.full((n, 2), -1, np.int32), word_ids=np.full(n, -1, np.int32),
                 texts=np.array([f"doc {i}" for i in range(n_docs)]), doc_languages=languages, pair_ids=pair_ids,
                 layers=np.arange(layers, dtype=np.int32), n_experts=n_experts, top_k=top_k, model_name="synthetic")


@pytest.mark.parametrize("paired", [True, False], ids=["paired-flips", "shuffled-labels"])
def test_null_false_positive_rate_is_at_most_alpha(paired):
    verdicts, raw = [], []
    seeds = 60
    for seed in range(seeds):
        res = specialization(synthetic_trace(seed, paired=paired), permutations=199, bootstraps=100, split_halves=20,
                             seed=seed)
        verdicts += res.verdicts
        raw += res.p_layer.tolist()
    n = len(verdicts)
    rate = verdicts.count(SPECIALISED) / n
    # Binomial simulation error at alpha = 0.05 over n layer-tests: 3 standard errors.
    allowance = 0.05 + 3 * np.sqrt(0.05 * 0.95 / n)
    assert rate <= allowance
    assert np.mean(np.asarray(raw) < 0.05) <= allowance  # the uncorrected test is calibrated too
    assert np.mean(np.asarray(raw) < 0.5) > 0.3  # and not degenerate (p-values are spread out)


def test_planted_bias_is_found_in_its_layer_only():
    trace = synthetic_trace(1, docs_per_language=60, planted=(2, 3, 0.09))
    res = specialization(trace, permutations=999, bootstraps=400)
    planted = res.delta[2, 3]
    assert 0.12 <= planted <= 0.18, planted  # about +0.15 share of tokens for Japanese
    assert res.verdicts[2] == SPECIALISED
    assert all(v != SPECIALISED for i, v in enumerate(res.verdicts) if i != 2)
    assert res.q_cell[2, 3] < 0.05 and (np.delete(res.q_cell[2], 3) > 0.05).sum() >= 5
    assert res.ci_delta[2, 3, 0] > 0.05


def test_null_with_enough_documents_is_equivalent():
    trace = synthetic_trace(2, docs_per_language=400, tokens_per_doc=30, doc_noise=0.2)
    res = specialization(trace, permutations=199, bootstraps=300, bound=0.05)
    assert res.verdicts == [equivalent_label(0.05)] * 4
    assert (res.max_abs_delta < 0.05).all()


def test_few_documents_are_inconclusive_not_equivalent():
    trace = synthetic_trace(3, docs_per_language=4, tokens_per_doc=20)
    res = specialization(trace, permutations=199, bootstraps=200)
    assert SPECIALISED not in res.verdicts and INCONCLUSIVE in res.verdicts


def test_closed_forms_and_consecutive_agreement():
    assert chance_any_shared(8, 2) == pytest.approx(13 / 28)
    assert chance_any_shared(8, 2) == pytest.approx(0.464, abs=5e-4)
    # Independent uniform routing: Table-5 agreement equals the uniform chance values.
    rng = np.random.default_rng(0)
    tr = synthetic_trace(0, docs_per_language=2, tokens_per_doc=10)
    n = 40_000
    experts = np.argsort(rng.random((n, 2, 8)), axis=-1)[..., :2].astype(np.uint8)
    tr = Trace(experts=experts, weights=np.full(experts.shape, 0.5, np.float32), token_ids=np.zeros(n, np.int32),
               tokens=np.full(n, "x"), doc_ids=np.zeros(n, np.int32), positions=np.arange(n, dtype=np.int32),
               special=np.zeros(n, bool), char_spans=np.full((n, 2), -1, np.int32), word_ids=np.full(n, -1, np.int32),
               texts=np.array(["d"]), doc_languages=np.array(["ja"]), pair_ids=np.array([-1]),
               layers=np.arange(2, dtype=np.int32), n_experts=8, top_k=2)
    agreement = consecutive_agreement(tr)
    assert np.allclose(agreement["first_choice"], 1 / 8, atol=0.01)
    assert np.allclose(agreement["any_shared"], 13 / 28, atol=0.01)
    assert np.allclose(agreement["chance_first_matched"], 1 / 8, atol=0.002)
    assert np.allclose(agreement["chance_any_matched"], 13 / 28, atol=0.002)  # uniform sets: the closed form
    # A router that always picks {0, 1}: every consecutive pair shares an expert, and so would chance.
    stuck = np.zeros((500, 1, 2), np.uint8)
    stuck[:, 0, 1] = 1
    from routerscope.language_specialization import _matched_any_shared

    assert _matched_any_shared(stuck[:, 0], 8) == pytest.approx(1.0)


def test_mutual_information_equals_weighted_jsd_on_large_samples():
    res = specialization(synthetic_trace(4, docs_per_language=100, planted=(1, 0, 0.3)), permutations=99,
                         bootstraps=50)
    # I(E; L) is the π-weighted JS divergence; with balanced languages ≈ the plain JSD.
    assert res.mutual_information[1] == pytest.approx(res.jsd_bits[1], rel=0.1, abs=2e-3)
    assert 0 <= res.mi_normalized[1] <= 1
    assert (res.cramers_v >= 0).all() and (res.cramers_v <= 1).all()


def test_multiple_comparison_corrections():
    p = np.array([0.01, 0.04, 0.03, 0.005])
    assert holm(p).tolist() == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert benjamini_hochberg(p).tolist() == pytest.approx([0.02, 0.04, 0.04, 0.02])


def test_scripts_and_controls(mixtral_tokenizer):
    assert [token_script(t) for t in ["<0xE5>", "▁", "猫", "▁です", "ヘルプ", "▁Hello", "42", "。"]] == \
        ["byte", "space", "kanji", "hiragana", "katakana", "latin", "digit", "other"]
    import routerscope
    from routerscope import zoo
    from routerscope.corpus import builtin

    model, tokenizer = zoo.load("tiny-mixtral-ja-en")
    corpus = builtin()
    tr = routerscope.trace(model, corpus.texts[:120], tokenizer, language=corpus.languages[:120],
                           pair_ids=corpus.pair_ids[:120], progress=False)
    table = controls(tr, permutations=199, bootstraps=100)
    assert set(table["control"]) == {"all tokens", "without the first 3 tokens", "tokens occurring in both languages",
                                     "word level (first token of each word)"}
    for name, rows in table.groupby("control"):
        # A control can be too thin to test on 60 pairs (few shared tokens); it then says why.
        assert len(rows) == 4 or rows["verdict"].str.startswith("not computed: each language needs").all(), name
    assert (table[table.control == "all tokens"]["layer"].tolist()) == [0, 1, 2, 3]
