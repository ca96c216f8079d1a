"""Routing before vs after a change (an expert swap, a fine-tune), and perplexity per language.

    shift = compare(trace_before, trace_after, swapped=[0])
    shift.to_frame()            # one row per language, layer and metric, with its chance value
    perplexity(model, tokenizer, texts, language=langs)   # {"ja": {...}, "en": {...}}

Per layer and language (special tokens left out):
  first_changed     share of tokens whose first-choice expert changed
  set_agreement     share of tokens with exactly the same top-k set (chance 1 / C(E, k))
  jaccard           mean Jaccard index of the top-k sets (chance for two uniform random
                    k-sets: sum_i P(|A∩B| = i) i / (2k - i); 5/28 for top-2 of 8)
  share_change_e    after - before share of assignments of expert e (swapped experts first)
  jsd_bits          Jensen-Shannon divergence of the two utilisations, bits
  entropy_change    H(after) - H(before) of the utilisation, bits
  kl_probs          mean KL(p_before || p_after) of router distributions, nats (only when
                    both traces stored probabilities)
"""

from __future__ import annotations

from dataclasses import dataclass
from math import comb

import numpy as np
import pandas as pd

from .metrics import js_divergence, routing_entropy
from .trace_data import Trace


def chance_set_agreement(n_experts: int, top_k: int) -> float:
    """Probability that two independent uniform top-k sets are identical: 1 / C(E, k)."""
    return 1.0 / comb(n_experts, top_k)


def chance_jaccard(n_experts: int, top_k: int) -> float:
    """Expected Jaccard index of two independent uniform k-subsets of E experts."""
    total = comb(n_experts, top_k)
    return sum(comb(top_k, i) * comb(n_experts - top_k, top_k - i) / total * i / (2 * top_k - i)
               for i in range(0, top_k + 1))


@dataclass(frozen=True)
class RoutingShift:
    """How routing moved between two traces of the same tokens. See the module docstring."""

    layers: np.ndarray
    languages: list[str]
    n_experts: int
    top_k: int
    swapped: tuple[int, ...]
    first_changed: dict[str, np.ndarray]
    set_agreement: dict[str, np.ndarray]
    jaccard: dict[str, np.ndarray]
    share_before: dict[str, np.ndarray]
    share_after: dict[str, np.ndarray]
    jsd_bits: dict[str, np.ndarray]
    entropy_change: dict[str, np.ndarray]
    kl_probs: dict[str, np.ndarray] | None
    tokens: dict[str, int]

    @property
    def chance(self) -> dict[str, float]:
        return {"set_agreement": chance_set_agreement(self.n_experts, self.top_k),
                "jaccard": chance_jaccard(self.n_experts, self.top_k)}

    def share_change(self, language: str) -> np.ndarray:
        return self.share_after[language] - self.share_before[language]

    def to_frame(self) -> pd.DataFrame:
        rows = []
        chance = self.chance
        order = list(self.swapped) + [e for e in range(self.n_experts) if e not in self.swapped]
        for lang in self.languages:
            metrics = {"first_changed": self.first_changed[lang], "set_agreement": self.set_agreement[lang],
                       "jaccard": self.jaccard[lang], "jsd_bits": self.jsd_bits[lang],
                       "entropy_change": self.entropy_change[lang]}
            if self.kl_probs is not None:
                metrics["kl_probs"] = self.kl_probs[lang]
            change = self.share_change(lang)
            for e in order:
                metrics[f"share_change_{e}"] = change[:, e]
            for name, values in metrics.items():
                for layer, value in zip(self.layers.tolist(), values):
                    rows.append({"language": lang, "layer": layer, "metric": name, "value": float(value),
                                 "chance": chance.get(name, np.nan), "tokens": self.tokens[lang]})
        return pd.DataFrame(rows)

    def to_markdown(self) -> str:
        lines = [f"Chance (uniform routing): set agreement {self.chance['set_agreement']:.3f}, "
                 f"Jaccard {self.chance['jaccard']:.3f}.", ""]
        swapped = ", ".join(f"Δshare e{e}" for e in self.swapped)
        head = "| language | layer | first changed | set agreement | Jaccard | JSD (bits) | ΔH (bits) |"
        head += (f" {swapped} |" if swapped else "")
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        for lang in self.languages:
            change = self.share_change(lang)
            for i, layer in enumerate(self.layers.tolist()):
                cells = [lang, str(layer), f"{self.first_changed[lang][i]:.3f}", f"{self.set_agreement[lang][i]:.3f}",
                         f"{self.jaccard[lang][i]:.3f}", f"{self.jsd_bits[lang][i]:.4f}",
                         f"{self.entropy_change[lang][i]:+.3f}"] + [f"{change[i, e]:+.3f}" for e in self.swapped]
                lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"


def compare(before: Trace, after: Trace, swapped=()) -> RoutingShift:
    """Routing shift between two traces of the same tokens (e.g. before and after a swap).

    Usage: ``compare(tr_before, tr_after, swapped=[0]).to_frame()``."""
    if len(before) != len(after) or not np.array_equal(before.token_ids, after.token_ids) \
            or not np.array_equal(before.doc_ids, after.doc_ids):
        raise ValueError("compare() needs two traces of the same tokens (same documents, tokenizer and max_length); "
                         f"got {len(before)} and {len(after)} tokens that differ")
    if (before.n_experts, before.top_k, before.layers.tolist()) != (after.n_experts, after.top_k,
                                                                     after.layers.tolist()):
        raise ValueError("compare() needs traces with the same experts, top-k and MoE layers")
    keep = ~before.special
    swapped = tuple(int(e) for e in ([swapped] if isinstance(swapped, int) else swapped))
    languages = sorted(set(before.languages[keep].tolist()))
    out = {name: {} for name in ("first_changed", "set_agreement", "jaccard", "share_before", "share_after",
                                 "jsd_bits", "entropy_change", "kl_probs")}
    tokens = {}
    both_probs = before.probs is not None and after.probs is not None
    for lang in languages:
        mask = keep & (before.languages == lang)
        a, b = before.experts[mask].astype(np.int64), after.experts[mask].astype(np.int64)
        tokens[lang] = int(mask.sum())
        out["first_changed"][lang] = (a[..., 0] != b[..., 0]).mean(axis=0)
        hot_a = _one_hot(a, before.n_experts)
        hot_b = _one_hot(b, before.n_experts)
        inter = (hot_a & hot_b).sum(-1)
        union = (hot_a | hot_b).sum(-1)
        out["set_agreement"][lang] = (inter == before.top_k).mean(axis=0)
        out["jaccard"][lang] = (inter / union).mean(axis=0)
        sa = before.select(docs=np.unique(before.doc_ids[mask]), exclude_special=True).utilization(normalize=True)
        sb = after.select(docs=np.unique(after.doc_ids[mask]), exclude_special=True).utilization(normalize=True)
        out["share_before"][lang], out["share_after"][lang] = sa, sb
        out["jsd_bits"][lang] = js_divergence(sa, sb)
        out["entropy_change"][lang] = routing_entropy(sb) - routing_entropy(sa)
        if both_probs:
            p = before.probs[mask].astype(np.float64).clip(1e-12)
            q = after.probs[mask].astype(np.float64).clip(1e-12)
            out["kl_probs"][lang] = (p * (np.log(p) - np.log(q))).sum(-1).mean(axis=0)
    return RoutingShift(before.layers, languages, before.n_experts, before.top_k, swapped,
                        kl_probs=out.pop("kl_probs") if both_probs else None, tokens=tokens,
                        **{k: v for k, v in out.items() if k != "kl_probs"})


def _one_hot(experts: np.ndarray, n_experts: int) -> np.ndarray:
    hot = np.zeros(experts.shape[:-1] + (n_experts,), dtype=bool)
    np.put_along_axis(hot, experts, True, axis=-1)
    return hot


def perplexity(model, tokenizer, texts, *, language=None, batch_size: int = 8, max_length: int = 512) -> dict:
    """Perplexity per language: exp(mean negative log-likelihood of every predicted real token).

    Usage: ``perplexity(model, tok, corpus.texts, language=corpus.languages)["ja"]["perplexity"]``.
    Each document is scored on its own (first ``max_length`` tokens); its first token has no
    prediction and is not counted."""
    import torch

    from .tracing import _check_texts, _input_device, _per_doc, padded_batch

    texts = _check_texts(texts)
    languages = [str(x) for x in _per_doc(language, len(texts), "language", "und")]
    ids = [np.asarray(x[:max_length]) for x in tokenizer(texts, add_special_tokens=True)["input_ids"]]
    device = _input_device(model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    nll = {lang: 0.0 for lang in set(languages)}
    count = {lang: 0 for lang in set(languages)}
    order = np.argsort([-len(x) for x in ids], kind="stable")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                batch = [i for i in order[start:start + batch_size] if len(ids[i]) > 1]
                if not batch:
                    continue
                input_ids, attention_mask, position_ids, _ = padded_batch([ids[i] for i in batch], pad_id, False,
                                                                          device)
                logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               use_cache=False).logits.float()
                losses = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), input_ids[:, 1:],
                                                           reduction="none")
                valid = attention_mask[:, 1:].bool()
                per_doc = (losses * valid).sum(1).cpu().numpy()
                per_count = valid.sum(1).cpu().numpy()
                for row, i in enumerate(batch):
                    nll[languages[i]] += float(per_doc[row])
                    count[languages[i]] += int(per_count[row])
    finally:
        model.train(was_training)
    return {lang: {"perplexity": float(np.exp(nll[lang] / count[lang])) if count[lang] else float("nan"),
                   "tokens": count[lang]} for lang in sorted(nll)}
