"""The zoo: tiny trained models that ship inside routerscope, loadable offline.

    model, tokenizer = routerscope.zoo.load("tiny-mixtral-ja-en")
    routerscope.zoo.names()      # ['tiny-mistral-ja', 'tiny-mixtral-ja-en']

tiny-mixtral-ja-en  MixtralForCausalLM, 4 layers, 8 experts, top-2, hidden 96, trained on
                    Japanese and English (Sōseki, LibreOffice help) with the load-balancing loss.
tiny-mistral-ja     MistralForCausalLM of exactly the same dimensions and configuration,
                    trained on the same mix, then continued on Japanese only.
Both use the real Mixtral-8x7B tokenizer (``zoo/tokenizer``; it adds BOS like the hub's).
``scripts/train_zoo.py`` re-creates them; each folder's eval.json holds held-out perplexity.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

TOKENIZER = "tokenizer"


def _root() -> Path:
    return Path(str(resources.files("routerscope.zoo")))


def names() -> list[str]:
    """Names of the models in the zoo."""
    return sorted(p.name for p in _root().iterdir() if (p / "config.json").is_file() and p.name != TOKENIZER)


def path(name: str) -> Path:
    """Folder of a zoo model (a Hugging Face checkpoint: config.json + model.safetensors)."""
    folder = _root() / name
    if name == TOKENIZER or not (folder / "config.json").is_file():
        raise KeyError(f"no zoo model {name!r}; the zoo has {names()}")
    return folder


def tokenizer_path() -> Path:
    return _root() / TOKENIZER


def evaluation(name: str) -> dict:
    """Held-out perplexity per language and the unigram baseline, as measured by the training script."""
    return json.loads((path(name) / "eval.json").read_text())


def load(name: str, dtype=None, device: str | None = None):
    """``(model, tokenizer)`` for a zoo model, offline. ``dtype`` defaults to float32.

    Usage: ``model, tok = routerscope.zoo.load("tiny-mixtral-ja-en")``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..models import dtype_kwarg

    folder = path(name)
    model = AutoModelForCausalLM.from_pretrained(folder, **dtype_kwarg(dtype or torch.float32))
    model.config._name_or_path = name
    if device:
        model.to(device)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path())
    return model.eval(), tokenizer
