"""Loading models by name: zoo models, local checkpoint folders, or hub ids.

    model, tokenizer = load_model("tiny-mixtral-ja-en")               # the zoo, offline
    model, tokenizer = load_model("mistralai/Mixtral-8x7B-v0.1", dtype="bfloat16", device_map="auto")

``trust_remote_code`` is never set unless the caller asks for it.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

_TRANSFORMERS_5 = int(transformers.__version__.split(".")[0]) >= 5
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


def dtype_kwarg(dtype) -> dict:
    """The from_pretrained keyword for a dtype: ``dtype`` in transformers 5, ``torch_dtype`` in 4."""
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
        dtype = DTYPES[dtype]
    return {"dtype" if _TRANSFORMERS_5 else "torch_dtype": dtype}


def load_model(spec: str, *, dtype="float32", device: str | None = None, device_map=None,
               trust_remote_code: bool = False):
    """``(model, tokenizer)`` from a zoo name (optionally ``zoo:NAME``), a folder or a hub id."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from . import zoo

    name = spec[4:] if spec.startswith("zoo:") else spec
    if name in zoo.names():
        return zoo.load(name, dtype=DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype, device=device)
    if spec.startswith("zoo:"):
        raise KeyError(f"no zoo model {name!r}; the zoo has {zoo.names()}")
    if not Path(spec).exists() and spec.count("/") != 1:
        raise FileNotFoundError(f"model {spec!r} is neither a zoo model ({', '.join(zoo.names())}), "
                                "a local folder, nor a hub id like 'mistralai/Mixtral-8x7B-v0.1'")
    kwargs = dtype_kwarg(dtype)
    if device_map is not None:
        kwargs["device_map"] = device_map
    model = AutoModelForCausalLM.from_pretrained(spec, trust_remote_code=trust_remote_code, **kwargs)
    if device and device_map is None:
        model.to(device)
    tokenizer = AutoTokenizer.from_pretrained(spec, trust_remote_code=trust_remote_code)
    return model.eval(), tokenizer
