"""``trace(model, texts)``: run a model over documents and record every token's routing.

    tr = routerscope.trace(model, ["吾輩は猫である。", "I am a cat."], tokenizer,
                           language=["ja", "en"], batch_size=8)

Documents are tokenized once (with the tokenizer's special tokens, e.g. Mixtral's BOS),
batched by length, padded, and run under ``torch.no_grad()`` in eval mode (the model's
training flag is restored afterwards). Position ids are computed from the attention mask,
so left and right padding give the same routing. Padding is never recorded.

Documents longer than ``max_length`` tokens are split into consecutive windows of
``max_length`` tokens (a warning says how many); every token is recorded, and a window starts
without the context of the previous one. Only the first window carries the tokenizer's BOS.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .capture import RouterCapture, find_moe_layers
from .trace_data import Trace, expert_dtype
from .words import align, segment


def _check_texts(texts) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("trace() takes a list of documents, got a single str; wrap it: trace(model, [text], ...)")
    try:
        texts = list(texts)
    except TypeError:
        raise TypeError(f"trace() takes a list of str documents, got {type(texts).__name__}") from None
    if not texts:
        raise ValueError("trace() got no documents: pass a non-empty list of strings")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"document {i} is a {type(text).__name__}, not a str; trace() takes plain strings "
                            "(decode bytes first, e.g. b.decode('utf-8'))")
    return texts


def _per_doc(value, n: int, name: str, default) -> list:
    if value is None or isinstance(value, (str, int)):
        return [default if value is None else value] * n
    value = list(value)
    if len(value) != n:
        raise ValueError(f"{name} has {len(value)} entries for {n} documents; give one per document or a single value")
    return value


def _resolve_tokenizer(model, tokenizer):
    if tokenizer is not None:
        if not callable(tokenizer):
            raise TypeError(f"tokenizer must be a Hugging Face tokenizer, got {type(tokenizer).__name__}")
        return tokenizer
    source = getattr(getattr(model, "config", None), "_name_or_path", "") or getattr(model, "name_or_path", "")
    from . import zoo

    if source in zoo.names():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(zoo.tokenizer_path())
    if source:
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(source)
        except Exception as err:  # noqa: BLE001 - any failure means the same fix
            raise ValueError(f"trace() needs a tokenizer and could not load one from {source!r} ({err}); pass "
                             "tokenizer=AutoTokenizer.from_pretrained(...)") from None
    raise ValueError("trace() needs a tokenizer: pass tokenizer=AutoTokenizer.from_pretrained(<model id or folder>)")


def _model_name(model) -> str:
    config = getattr(model, "config", None)
    return getattr(config, "_name_or_path", "") or getattr(model, "name_or_path", "") or type(model).__name__


def _input_device(model) -> torch.device:
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    device = None
    if embeddings is not None and getattr(embeddings, "weight", None) is not None:
        device = embeddings.weight.device
    else:
        device = next(model.parameters()).device
    if device.type == "meta":  # offloaded by accelerate: its hooks move weights to the execution device
        for module in (embeddings, model):
            hook_device = getattr(getattr(module, "_hf_hook", None), "execution_device", None)
            if hook_device is not None:
                return torch.device(hook_device)
        return torch.device("cpu")
    return device


def trace(model, texts: Sequence[str], tokenizer=None, *, language: str | Sequence[str] | None = None,
          pair_ids: Sequence[int] | None = None, batch_size: int = 8, max_length: int = 1024,
          store_probs: bool = False, words: bool = True, progress: bool = True) -> Trace:
    """Record the top-k experts and weights of every real token in every MoE layer.

    Usage: ``tr = trace(model, texts, tokenizer, language="ja")``.

    model        a transformers MoE causal LM (Mixtral 5.x or 4.x layout; see capture.py).
    texts        list of documents (str). Empty or whitespace-only documents are skipped
                 with a warning; their document ids stay reserved.
    tokenizer    the model's tokenizer; a fast one gives character offsets and words.
    language     one label for all documents or one per document (e.g. "ja", "en").
    pair_ids     translation-pair id per document (same id in both languages), or None.
    batch_size   documents (windows) per forward pass.
    max_length   longest window in tokens; longer documents are split into windows.
    store_probs  also keep the full router probability vector per token and layer.
    words        segment documents into words (fugashi for "ja") and align tokens to them.
    progress     show a progress bar over batches.
    """
    texts = _check_texts(texts)
    if batch_size < 1 or max_length < 1:
        raise ValueError(f"batch_size and max_length must be >= 1 (got {batch_size}, {max_length})")
    languages = [str(x) for x in _per_doc(language, len(texts), "language", "und")]
    pairs = [int(x) for x in _per_doc(pair_ids, len(texts), "pair_ids", -1)]
    moe_layers = find_moe_layers(model)  # fails early, with the fix, on a dense model
    tokenizer = _resolve_tokenizer(model, tokenizer)

    empty = [i for i, text in enumerate(texts) if not text.strip()]
    if empty:
        warnings.warn(f"skipping {len(empty)} empty document(s) (ids {empty[:10]}{'...' if len(empty) > 10 else ''})",
                      stacklevel=2)
    kept = [i for i, text in enumerate(texts) if text.strip()]
    if not kept:
        raise ValueError("every document is empty; nothing to trace")

    fast = bool(getattr(tokenizer, "is_fast", False))
    encoded = tokenizer([texts[i] for i in kept], add_special_tokens=True, return_offsets_mapping=fast,
                        return_attention_mask=False, truncation=False, verbose=False)
    special_ids = np.asarray(sorted(set(getattr(tokenizer, "all_special_ids", []) or [])), dtype=np.int64)

    # Per-token metadata in document order, built on the host without the model.
    doc_token_ids, doc_spans = [], []
    for j in range(len(kept)):
        ids = np.asarray(encoded["input_ids"][j], dtype=np.int64)
        doc_token_ids.append(ids)
        if fast:
            doc_spans.append(np.asarray(encoded["offset_mapping"][j], dtype=np.int64).reshape(-1, 2))
        else:
            doc_spans.append(np.full((len(ids), 2), -1, dtype=np.int64))

    # Windows of at most max_length tokens: (doc slot, start, ids).
    windows = [(j, s, ids[s:s + max_length]) for j, ids in enumerate(doc_token_ids)
               for s in range(0, len(ids), max_length) if len(ids[s:s + max_length])]
    n_split = sum(1 for ids in doc_token_ids if len(ids) > max_length)
    if n_split:
        warnings.warn(f"{n_split} document(s) are longer than max_length={max_length} tokens and were split into "
                      "windows; each window is routed without the previous window's context. Raise max_length to "
                      "avoid this.", stacklevel=2)

    token_counts = np.array([len(w[2]) for w in windows], dtype=np.int64)
    window_offsets = np.concatenate([[0], np.cumsum(token_counts)])  # windows are in document order
    order = np.argsort(-token_counts, kind="stable")  # longest first: least padding, OOM shows early
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    left = getattr(tokenizer, "padding_side", "right") == "left"
    device = _input_device(model)
    n_total = int(token_counts.sum())
    n_layers, k, n_experts = len(moe_layers), moe_layers[0].top_k, moe_layers[0].n_experts
    experts_out = np.empty((n_total, n_layers, k), dtype=expert_dtype(n_experts))
    weights_out = np.empty((n_total, n_layers, k), dtype=np.float32)
    probs_out = np.empty((n_total, n_layers, n_experts), dtype=np.float32) if store_probs else None

    was_training = model.training
    model.eval()
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    body = routing_body(model)
    try:
        with RouterCapture(model, store_probs=store_probs, layers=moe_layers) as capture, torch.no_grad():
            for batch in tqdm(batches, desc="routerscope.trace", unit="batch", disable=not progress):
                input_ids, attention_mask, position_ids, mask = padded_batch(
                    [windows[w][2] for w in batch], pad_id, left, device)
                body(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
                index, weights, probs = capture.collect()
                if index.shape[0] != input_ids.numel():
                    raise RuntimeError(f"the routers saw {index.shape[0]} tokens for a batch of {input_ids.numel()}; "
                                       "this model flattens tokens differently and is not supported yet")
                # Real-token rows are known on the host, so selecting them needs no device sync.
                real = torch.from_numpy(np.flatnonzero(mask.reshape(-1))).to(index.device)
                # Expert ids < 2**24 are exact in fp32: pack everything into one tensor so the
                # batch leaves the device in a single transfer.
                parts = [index.index_select(0, real).float(), weights.index_select(0, real)]
                if probs is not None:
                    parts.append(probs.index_select(0, real))
                host = torch.cat(parts, dim=-1).cpu().numpy()
                rows = np.concatenate([np.arange(window_offsets[w], window_offsets[w + 1]) for w in batch])
                experts_out[rows] = host[..., :k]
                weights_out[rows] = host[..., k:2 * k]
                if probs_out is not None:
                    probs_out[rows] = host[..., 2 * k:]
    finally:
        model.train(was_training)

    # Host-side per-token fields, in the same document/window order.
    token_ids = np.concatenate([w[2] for w in windows]).astype(np.int32)
    doc_slot = np.repeat([w[0] for w in windows], token_counts)
    positions = np.concatenate([np.arange(s, s + len(w)) for _, s, w in windows]).astype(np.int32)
    spans = np.concatenate([doc_spans[j][s:s + len(w)] for j, s, w in windows]).astype(np.int32)
    special = np.isin(token_ids, special_ids)
    spans[special] = -1
    tokens = np.asarray(tokenizer.convert_ids_to_tokens(token_ids.tolist()), dtype=str)
    kept_arr = np.asarray(kept, dtype=np.int32)

    word_fields: dict[str, np.ndarray] = {}
    word_ids = np.full(len(token_ids), -1, dtype=np.int32)
    if words and fast:
        word_fields, word_ids = _words_for(texts, kept, languages, doc_slot, spans)
    elif words:
        warnings.warn(f"{type(tokenizer).__name__} is not a fast tokenizer and gives no character offsets; "
                      "tokens are not aligned to words", stacklevel=2)

    return Trace(
        experts=experts_out, weights=weights_out, probs=probs_out, token_ids=token_ids, tokens=tokens,
        doc_ids=kept_arr[doc_slot], positions=positions, special=special, char_spans=spans, word_ids=word_ids,
        texts=np.asarray(texts, dtype=str), doc_languages=np.asarray(languages, dtype=str),
        pair_ids=np.asarray(pairs, dtype=np.int64), layers=np.asarray([m.index for m in moe_layers], dtype=np.int32),
        n_experts=n_experts, top_k=k, model_name=_model_name(model), **word_fields,
    )


def routing_body(model):
    """The part of the model that routing needs: the base model without the LM head (every
    router sits inside it, and the vocabulary projection is the costliest matmul of a small
    model), or the whole model when it has no separate base."""
    base = getattr(model, "base_model", None)
    if isinstance(base, torch.nn.Module) and base is not model:
        inside = {id(m) for m in base.modules()}
        if all(id(layer.block) in inside for layer in find_moe_layers(model)):
            return base
    return model


def padded_batch(sequences: list[np.ndarray], pad_id: int, left: bool, device):
    """(input_ids, attention_mask, position_ids) tensors on ``device`` and the host mask, for
    token sequences padded to the longest; positions count real tokens only."""
    lengths = [len(x) for x in sequences]
    width = max(lengths)
    ids = np.full((len(sequences), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(sequences), width), dtype=np.int64)
    for row, (seq, n) in enumerate(zip(sequences, lengths)):
        cols = slice(width - n, width) if left else slice(0, n)
        ids[row, cols] = seq
        mask[row, cols] = 1
    input_ids = torch.from_numpy(ids).to(device)
    attention_mask = torch.from_numpy(mask).to(device)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return input_ids, attention_mask, position_ids, mask


def _words_for(texts, kept, languages, doc_slot, spans):
    """Segment each kept document and align its tokens; returns the word table and word ids."""
    table = {name: [] for name in ("word_doc", "word_start", "word_end", "word_surface", "word_pos1", "word_pos2",
                                   "word_lemma")}
    word_ids = np.full(len(doc_slot), -1, dtype=np.int32)
    bounds = np.searchsorted(doc_slot, np.arange(len(kept) + 1))  # tokens are grouped by document
    n_words = 0
    for j, doc in enumerate(kept):
        text = texts[doc]
        doc_words = segment(text, languages[doc])
        local = align(spans[bounds[j]:bounds[j + 1]], doc_words, len(text))
        word_ids[bounds[j]:bounds[j + 1]] = np.where(local >= 0, local + n_words, -1)
        n_words += len(doc_words)
        table["word_doc"] += [doc] * len(doc_words)
        for name, values in zip(("word_start", "word_end", "word_surface", "word_pos1", "word_pos2", "word_lemma"),
                                zip(*[(w.start, w.end, w.surface, w.pos1, w.pos2, w.lemma) for w in doc_words])):
            table[name] += values
    ints = ("word_doc", "word_start", "word_end")
    return {name: np.asarray(v, dtype=np.int32 if name in ints else str) for name, v in table.items()}, word_ids
