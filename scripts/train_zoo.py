"""Train the two tiny models of routerscope's zoo from ../shared/data.

Usage:
    python scripts/train_zoo.py --data ../shared/data --out routerscope/zoo

Builds, trains and writes:
  tiny-mixtral-ja-en  MixtralForCausalLM, 8 experts, top-2, trained on Japanese and English
                      with the load-balancing auxiliary loss on (as Mixtral is trained);
  tiny-mistral-ja     MistralForCausalLM of exactly the same dimensions and configuration,
                      trained on the same mix, then continued on Japanese only (the miniature
                      of japanese-stablelm-base-gamma-7b, which is Mistral-7B continued on
                      Japanese).
Both use the real Mixtral-8x7B tokenizer (32,000 SentencePiece tokens, byte fallback), read
from routerscope/zoo/tokenizer. Each document gets a BOS token, as Mixtral's tokenizer adds.

Held-out text: every 20th document of each source (Botchan paragraphs, 吾輩は猫である
paragraphs, LibreOffice-help pairs: both sides of a held-out pair are held out) is never
trained on. The script prints held-out perplexity per language for each model next to an
add-one-smoothed unigram baseline fitted on the training tokens, and writes them to
<out>/<name>/eval.json. Seeded; 3,400 optimiser steps with the defaults, about 0.6 s each on
2 CPU cores (the committed models' run took 66 minutes on cores shared with other work).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from transformers import (
    AutoTokenizer,
    MistralConfig,
    MistralForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
)

# One shape for both models, so that an expert of the MoE and the dense MLP are swappable and
# attention, norms and rotary settings mean the same function in both.
SHARED_CONFIG = dict(
    vocab_size=32000,
    hidden_size=96,
    intermediate_size=192,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=24,
    hidden_act="silu",
    max_position_embeddings=1024,
    rms_norm_eps=1e-5,
    rope_theta=1e6,
    sliding_window=None,
    tie_word_embeddings=True,
    bos_token_id=1,
    eos_token_id=2,
    attention_dropout=0.0,
)
MOE_CONFIG = dict(num_local_experts=8, num_experts_per_tok=2, router_aux_loss_coef=0.02,
                  output_router_logits=False, router_jitter_noise=0.0)


def read_documents(data: Path) -> list[dict]:
    """Every document of the three sources as {"source", "lang", "text", "held_out"}."""
    docs = []
    ja_lines = (data / "soseki" / "wagahai.ja.txt").read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(x for x in ja_lines if len(x.strip()) > 1):
        docs.append({"source": "wagahai", "lang": "ja", "text": line.strip(), "held_out": i % 20 == 19})
    en_text = (data / "soseki" / "botchan.en.txt").read_text(encoding="utf-8")
    paragraphs = [" ".join(p.split()) for p in en_text.split("\n\n")]
    for i, p in enumerate(x for x in paragraphs if x):
        docs.append({"source": "botchan", "lang": "en", "text": p, "held_out": i % 20 == 19})
    with open(data / "lohelp" / "pairs.en-ja.jsonl", encoding="utf-8") as f:
        for i, line in enumerate(f):
            pair = json.loads(line)
            for lang in ("en", "ja"):
                docs.append({"source": "lohelp", "lang": lang, "text": pair[lang], "held_out": i % 20 == 19})
    return docs


def token_stream(tokenizer, texts: list[str]) -> np.ndarray:
    ids = tokenizer(texts, add_special_tokens=True)["input_ids"]
    return np.concatenate([np.asarray(x, dtype=np.int64) for x in ids])


def blocks(stream: np.ndarray, seq_len: int) -> torch.Tensor:
    n = len(stream) // seq_len
    return torch.from_numpy(stream[: n * seq_len].reshape(n, seq_len))


@torch.no_grad()
def perplexity(model, stream: np.ndarray, seq_len: int, batch_size: int = 16) -> float:
    model.eval()
    data = blocks(stream, seq_len)
    total, count = 0.0, 0
    for i in range(0, len(data), batch_size):
        x = data[i : i + batch_size]
        logits = model(input_ids=x).logits.float()
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum")
        total += loss.item()
        count += x[:, 1:].numel()
    model.train()
    return math.exp(total / count)


def unigram_perplexity(train_stream: np.ndarray, eval_stream: np.ndarray, vocab: int, seq_len: int) -> float:
    """Add-one unigram model fitted on the training tokens, scored on the same targets as the models."""
    counts = np.bincount(train_stream, minlength=vocab).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    targets = blocks(eval_stream, seq_len)[:, 1:].numpy().ravel()
    return float(math.exp(-logp[targets].mean()))


def train(model, batches: torch.Tensor, steps: int, lr: float, batch_size: int, seed: int,
          aux: bool, label: str, warmup: int = 100) -> None:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    model.train()
    start = time.time()
    for step in range(steps):
        idx = torch.randint(len(batches), (batch_size,), generator=gen)
        x = batches[idx]
        kwargs = {"output_router_logits": True} if aux else {}
        out = model(input_ids=x, labels=x, **kwargs)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 100 == 0 or step == steps - 1:
            extra = f" aux {out.aux_loss.item():.3f}" if aux else ""
            print(f"[{label}] step {step}/{steps} loss {out.loss.item():.3f}{extra} "
                  f"({time.time() - start:.0f}s)", flush=True)


def save(model, out: Path, name: str, metrics: dict) -> None:
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(folder)
    (folder / "eval.json").write_text(json.dumps(metrics, indent=2) + "\n")
    model.to(torch.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--out", type=Path, default=Path("routerscope/zoo"))
    ap.add_argument("--tokenizer", type=Path, default=Path("routerscope/zoo/tokenizer"))
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--moe-steps", type=int, default=1800)
    ap.add_argument("--dense-steps", type=int, default=1200)
    ap.add_argument("--ja-steps", type=int, default=400, help="continued training of the dense model on Japanese")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    random.seed(args.seed); np.random.seed(args.seed); torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    docs = read_documents(args.data)
    streams = {}
    for lang in ("ja", "en"):
        for split in ("train", "eval"):
            texts = [d["text"] for d in docs if d["lang"] == lang and d["held_out"] == (split == "eval")]
            streams[lang, split] = token_stream(tokenizer, texts)
            print(f"{lang} {split}: {len(texts)} documents, {len(streams[lang, split])} tokens", flush=True)
    mix = torch.cat([blocks(streams["ja", "train"], args.seq_len), blocks(streams["en", "train"], args.seq_len)])
    ja_only = blocks(streams["ja", "train"], args.seq_len)
    train_all = np.concatenate([streams["ja", "train"], streams["en", "train"]])
    baseline = {lang: unigram_perplexity(train_all, streams[lang, "eval"], 32000, args.seq_len) for lang in ("ja", "en")}
    print("unigram baseline perplexity:", baseline, flush=True)

    def evaluate(model, name: str, recipe: str) -> dict:
        model_bf16 = type(model)(model.config)
        model_bf16.load_state_dict(model.state_dict())
        model_bf16.to(torch.bfloat16)  # score the weights as they are shipped
        ppl = {lang: perplexity(model_bf16, streams[lang, "eval"], args.seq_len) for lang in ("ja", "en")}
        metrics = {"model": name, "recipe": recipe, "heldout_perplexity": ppl,
                   "unigram_baseline_perplexity": baseline,
                   "heldout_tokens": {lang: int(len(streams[lang, "eval"])) for lang in ("ja", "en")},
                   "seq_len": args.seq_len, "seed": args.seed}
        print(json.dumps(metrics), flush=True)
        return metrics

    torch.manual_seed(args.seed)
    moe = MixtralForCausalLM(MixtralConfig(**SHARED_CONFIG, **MOE_CONFIG))
    train(moe, mix, args.moe_steps, args.lr, args.batch_size, args.seed, aux=True, label="mixtral")
    save(moe, args.out, "tiny-mixtral-ja-en", evaluate(
        moe, "tiny-mixtral-ja-en", f"{args.moe_steps} steps on ja+en, aux loss coef 0.02"))

    torch.manual_seed(args.seed + 1)
    dense = MistralForCausalLM(MistralConfig(**SHARED_CONFIG))
    train(dense, mix, args.dense_steps, args.lr, args.batch_size, args.seed + 1, aux=False, label="mistral")
    train(dense, ja_only, args.ja_steps, args.lr / 3, args.batch_size, args.seed + 2, aux=False,
          label="mistral-ja", warmup=20)
    save(dense, args.out, "tiny-mistral-ja", evaluate(
        dense, "tiny-mistral-ja", f"{args.dense_steps} steps on ja+en, then {args.ja_steps} on ja only"))


if __name__ == "__main__":
    main()
