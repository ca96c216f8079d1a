"""The zoo: both tiny models load offline, share every dimension and setting, and beat the
unigram baseline on held-out text in both languages (numbers written by the training script)."""

from __future__ import annotations

import pytest
import torch

import routerscope
from routerscope import zoo


def test_names_and_offline_load(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert zoo.names() == ["tiny-mistral-ja", "tiny-mixtral-ja-en"]
    moe, tok = zoo.load("tiny-mixtral-ja-en")
    dense, tok2 = zoo.load("tiny-mistral-ja")
    assert type(moe).__name__ == "MixtralForCausalLM" and type(dense).__name__ == "MistralForCausalLM"
    assert moe.config.num_local_experts == 8 and moe.config.num_experts_per_tok == 2
    assert tok.get_vocab() == tok2.get_vocab() and len(tok) == 32000
    assert tok("猫")["input_ids"][0] == tok.bos_token_id == 1  # BOS, as the hub's Mixtral tokenizer
    report = routerscope.check_compatible(moe, dense, tokenizers=(tok, tok2))
    assert report.ok and report.differences == [], str(report)
    with pytest.raises(KeyError, match="no zoo model 'tiny-gpt'"):
        zoo.load("tiny-gpt")


@pytest.mark.parametrize("name", ["tiny-mixtral-ja-en", "tiny-mistral-ja"])
def test_beats_the_unigram_baseline(name):
    result = zoo.evaluation(name)
    for lang in ("ja", "en"):
        assert result["heldout_perplexity"][lang] < result["unigram_baseline_perplexity"][lang] / 5
    assert (zoo.path(name) / "model.safetensors").stat().st_size < 12_000_000


def test_the_dense_model_was_continued_on_japanese():
    mixtral, mistral = zoo.evaluation("tiny-mixtral-ja-en"), zoo.evaluation("tiny-mistral-ja")
    ratio = {n: r["heldout_perplexity"]["en"] / r["heldout_perplexity"]["ja"] for n, r in
             (("moe", mixtral), ("dense", mistral))}
    assert ratio["dense"] > ratio["moe"]  # relatively weaker in English after the Japanese-only phase
    model, tok = zoo.load("tiny-mistral-ja")
    with torch.no_grad():
        assert torch.isfinite(model(**tok("吾輩は猫である。", return_tensors="pt")).logits).all()
