"""Shared fixtures: tiny real Hugging Face MoE models built from configs, the real Mixtral
tokenizer (from the mistral-common package), and ../shared/data when it is there."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(os.environ.get("ROUTERSCOPE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))

pytest_plugins = ["pytester"]


def tiny_mixtral(n_experts=8, top_k=2, layers=3, hidden=64, dtype=torch.float32, seed=0, vocab=32000, **extra):
    """A randomly initialised MixtralForCausalLM, in whatever layout the installed transformers uses."""
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(seed)
    config = MixtralConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                           num_attention_heads=4, num_key_value_heads=2, num_local_experts=n_experts,
                           num_experts_per_tok=top_k, max_position_embeddings=512, **extra)
    model = MixtralForCausalLM(config).to(dtype).eval()
    return model


@pytest.fixture(scope="session")
def mixtral_tokenizer(tmp_path_factory):
    """The real Mixtral-8x7B tokenizer (32,000 pieces, byte fallback) as a fast tokenizer, adding BOS
    as the hub's Mixtral tokenizer configuration does."""
    spec = importlib.util.find_spec("mistral_common")
    if spec is None:
        pytest.fail("the tests need the Mixtral tokenizer from mistral-common: pip install -e '.[test]'")
    source = Path(spec.origin).parent / "data" / "tokenizer.model.v1"
    folder = tmp_path_factory.mktemp("mixtral-tokenizer")
    (folder / "tokenizer.model").write_bytes(source.read_bytes())
    # Without a config, transformers 4.x cannot tell which tokenizer class the file is for.
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizerFast", "add_bos_token": True, "add_eos_token": False, "legacy": False,
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"../shared/data is not beside this checkout ({SHARED_DATA}); set ROUTERSCOPE_SHARED_DATA")
    return SHARED_DATA
