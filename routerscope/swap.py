"""Expert swap on loaded models: copy a dense model's MLP (and optionally more) into experts.

    report = check_compatible(moe, dense)              # every difference that matters
    record = swap_expert(moe, dense, expert=0)         # dense MLP -> expert 0 of every layer
    record = swap_expert(moe, dense, expert=[0, 1], parts=("mlp", "attention"), layers=[0, 1],
                         router="copy:3")

Layouts: transformers 5.x fused experts (``gate_up_proj[e] = [gate; up]``, ``down_proj[e]``)
and 4.x per-expert modules (``experts[e].w1`` = gate, ``w3`` = up, ``w2`` = down).

Parts: "mlp" (gate/up/down into the chosen experts), "attention" (q/k/v/o of the chosen
layers), "norms" (input and post-attention norms of the chosen layers, and the final norm),
"lm_head", "embeddings". Everything but "mlp" replaces weights every token uses.

Router row of a swapped expert (``router=``):
  "keep"     leave it: the router keeps sending the expert the tokens it chose before,
             now processed by the dense MLP. Layer-0 routing cannot change with an MLP-only
             swap (its router input depends on no expert); later layers shift.
  "copy:J"   set it to expert J's row: the swapped expert gets exactly J's logits, so it
             ties with J and the two are picked together (top-k keeps the lower index first
             on an exact tie), roughly halving J's weight.
  "mean"     set it to the mean of the other experts' rows: a "typical" expert, picked for
             tokens with no strong preference.
  "zero"     all-zero row: logit 0 for every token, so it is picked only where every other
             logit is negative.

Everything is validated (configs, shapes, indices, options) before any weight is touched,
and the touched slices are backed up while copying: on any error the model is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch
from torch import nn

from .capture import find_moe_layers
from .compat import PARTS, SwapError, check_compatible



@dataclass
class SwapRecord:
    """What a swap copied: one (destination, source, shape) per tensor slice."""

    experts: list[int]
    layers: list[int]
    parts: tuple[str, ...]
    router: str
    copied: list[tuple[str, str, tuple[int, ...]]] = field(default_factory=list)

    def __str__(self) -> str:
        return (f"swapped experts {self.experts} in layers {self.layers}: parts {list(self.parts)}, router "
                f"{self.router!r}; {len(self.copied)} tensors copied")


def _decoder_layers(model) -> nn.ModuleList:
    base = getattr(model, "model", None) or getattr(model, "base_model", None)
    layers = getattr(base, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise SwapError(f"{type(model).__name__} has no `model.layers`; only Mistral/Mixtral-style decoders swap")
    return layers


def _expert_slices(block_experts: nn.Module, e: int, inter: int):
    """(name, tensor view) for gate, up, down of expert ``e``, in either layout."""
    if isinstance(block_experts, nn.ModuleList):
        expert = block_experts[e]
        return [("w1.weight", expert.w1.weight), ("w3.weight", expert.w3.weight), ("w2.weight", expert.w2.weight)]
    gate_up, down = block_experts.gate_up_proj, block_experts.down_proj
    return [(f"gate_up_proj[{e}, :{inter}]", gate_up[e, :inter]), (f"gate_up_proj[{e}, {inter}:]", gate_up[e, inter:]),
            (f"down_proj[{e}]", down[e])]


def _parse_router(router: str, n_experts: int, chosen: list[int]) -> str:
    if router in ("keep", "mean", "zero"):
        return router
    if router.startswith("copy:"):
        try:
            source = int(router[5:])
        except ValueError:
            raise SwapError(f"router={router!r}: expected copy:J with J an expert index") from None
        if not 0 <= source < n_experts or source in chosen:
            raise SwapError(f"router={router!r}: J must be an expert that is not being swapped (0..{n_experts - 1}, "
                            f"not {chosen})")
        return router
    raise SwapError(f"router={router!r}: choose 'keep', 'copy:J', 'mean' or 'zero'")


def swap_expert(moe, dense, expert: int | Sequence[int] = 0, parts: Sequence[str] = ("mlp",),
                layers: Sequence[int] | None = None, *, router: str = "keep", allow: Iterable[str] = ()) -> SwapRecord:
    """Copy parts of ``dense`` (a MistralForCausalLM-like model) into ``moe`` in place.

    Usage: ``swap_expert(mixtral, mistral, expert=0)``; see the module docstring for
    parts and router options. Returns a :class:`SwapRecord`."""
    parts = (parts,) if isinstance(parts, str) else tuple(parts)
    bad = sorted(set(parts) - set(PARTS))
    if bad or not parts:
        raise SwapError(f"parts={list(parts)}: choose from {list(PARTS)}")
    check_compatible(moe, dense, allow=allow).raise_for_errors()
    moe_layers = find_moe_layers(moe)
    n_experts = moe_layers[0].n_experts
    chosen = [expert] if isinstance(expert, int) else list(expert)
    if not chosen or len(set(chosen)) != len(chosen) or any(not 0 <= e < n_experts for e in chosen):
        raise SwapError(f"expert={expert!r}: give distinct expert indices in 0..{n_experts - 1}")
    decoder_moe, decoder_dense = _decoder_layers(moe), _decoder_layers(dense)
    all_layers = list(range(len(decoder_moe)))
    chosen_layers = all_layers if layers is None else list(layers)
    if not chosen_layers or any(layer not in all_layers for layer in chosen_layers):
        raise SwapError(f"layers={layers!r}: give layer indices in 0..{len(decoder_moe) - 1}")
    router = _parse_router(router, n_experts, chosen)
    by_index = {m.index: m for m in moe_layers}
    inter = moe.config.intermediate_size

    plan: list[tuple[str, torch.Tensor, str, torch.Tensor]] = []  # (dest name, dest view, src name, src)
    for li in chosen_layers:
        lm, ld = decoder_moe[li], decoder_dense[li]
        if "mlp" in parts:
            mlp = ld.mlp
            sources = [("gate_proj", mlp.gate_proj.weight), ("up_proj", mlp.up_proj.weight),
                       ("down_proj", mlp.down_proj.weight)]
            for e in chosen:
                for (dname, dview), (sname, src) in zip(_expert_slices(by_index[li].experts, e, inter), sources):
                    plan.append((f"layers.{li}.{by_index[li].name.split('.')[-1]}.experts.{e}.{dname}", dview,
                                 f"layers.{li}.mlp.{sname}.weight", src))
            rows = by_index[li].router.weight
            for e in chosen:
                if router == "keep":
                    continue
                if router == "zero":
                    src = torch.zeros_like(rows[e])
                elif router == "mean":
                    others = [j for j in range(n_experts) if j not in chosen]
                    src = rows[others].detach().float().mean(0)
                else:
                    src = rows[int(router[5:])].detach().clone()
                plan.append((f"layers.{li}.router.weight[{e}]", rows[e], f"router:{router}", src))
        if "attention" in parts:
            for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
                for kind in ("weight", "bias"):
                    dst = getattr(getattr(lm.self_attn, proj), kind, None)
                    src = getattr(getattr(ld.self_attn, proj), kind, None)
                    if (dst is None) != (src is None):
                        raise SwapError(f"layer {li} {proj}.{kind} exists in only one model")
                    if dst is not None:
                        plan.append((f"layers.{li}.self_attn.{proj}.{kind}", dst, f"layers.{li}.self_attn.{proj}.{kind}",
                                     src))
        if "norms" in parts:
            for norm in ("input_layernorm", "post_attention_layernorm"):
                plan.append((f"layers.{li}.{norm}.weight", getattr(lm, norm).weight, f"layers.{li}.{norm}.weight",
                             getattr(ld, norm).weight))
    if "norms" in parts:
        plan.append(("norm.weight", moe.model.norm.weight, "norm.weight", dense.model.norm.weight))
    if "embeddings" in parts:
        plan.append(("embed_tokens.weight", moe.get_input_embeddings().weight, "embed_tokens.weight",
                     dense.get_input_embeddings().weight))
    if "lm_head" in parts:
        plan.append(("lm_head.weight", moe.get_output_embeddings().weight, "lm_head.weight",
                     dense.get_output_embeddings().weight))
    for dname, dview, sname, src in plan:
        if tuple(dview.shape) != tuple(src.shape):
            raise SwapError(f"{sname} has shape {tuple(src.shape)} but {dname} has {tuple(dview.shape)}")

    backups = []
    try:
        with torch.no_grad():
            for dname, dview, sname, src in plan:
                backups.append((dview, dview.detach().clone()))
                dview.copy_(src.detach().to(device=dview.device, dtype=dview.dtype))
    except BaseException:
        with torch.no_grad():
            for dview, saved in reversed(backups):
                dview.copy_(saved)
        raise
    return SwapRecord(chosen, chosen_layers, parts, router,
                      [(d, s, tuple(v.shape)) for d, v, s, _ in plan])
