"""Finding every MoE router of a model and capturing, with hooks, what its experts received.

    layers = find_moe_layers(model)            # one MoELayer per sparse MoE block
    with RouterCapture(model) as cap:           # hooks live only inside the block
        model(**batch)
        routing = cap.collect()                 # [N, L, k] experts and weights, on one device

Two router kinds are understood:

``experts-call`` (transformers 5.x: Mixtral, Qwen-MoE, OLMoE, ...)
    The block calls ``experts(hidden [N, H], top_k_index [N, k], top_k_weights [N, k])``.
    A forward pre-hook on the experts module sees exactly the experts and weights used; no
    routing rule is recomputed.
``linear-gate`` (transformers 4.x Mixtral: ``block_sparse_moe.gate`` is an ``nn.Linear``)
    The hook sees router logits only; the block's own rule is replayed on them: softmax in
    fp32, top-k, renormalise (unless the block says ``norm_topk_prob=False``), cast to the
    hidden dtype, exactly as ``MixtralSparseMoeBlock.forward`` in 4.46-4.57 does.

Hooks do no per-token Python work and never synchronise with the device: tensors are kept
as they arrive and leave the device once, when :meth:`RouterCapture.collect` is called.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass

import torch
import transformers
from packaging.version import Version
from torch import nn

# transformers 5.0-5.5 routers returned softmax probabilities where 5.6+ return raw logits.
_ROUTER_OUTPUT_IS_PROBS = Version("5.0") <= Version(transformers.__version__.split("+")[0]) < Version("5.6")

SUPPORTED_ROUTERS = (
    "transformers 5.x sparse MoE blocks whose experts module is called as "
    "experts(hidden_states, top_k_index, top_k_weights) (Mixtral `layers[i].mlp`, Qwen2/3-MoE, OLMoE, ...)",
    "transformers 4.x Mixtral-style blocks with an nn.Linear `gate` and an nn.ModuleList of `experts` "
    "(`layers[i].block_sparse_moe`)",
)


class NoRouterError(ValueError):
    """The model has no MoE router that routerscope knows how to read."""


@dataclass(frozen=True)
class MoELayer:
    """One sparse MoE block of a model.

    ``index`` is the decoder layer number, ``name`` the block's module path, ``kind`` one of
    ``"experts-call"`` or ``"linear-gate"`` (see the module docstring).
    """

    index: int
    name: str
    kind: str
    block: nn.Module
    router: nn.Module
    experts: nn.Module
    n_experts: int
    top_k: int


def _experts_take_routing(experts: nn.Module) -> bool:
    if isinstance(experts, nn.ModuleList):
        return False
    try:
        params = list(inspect.signature(experts.forward).parameters)
    except (TypeError, ValueError):
        return False
    return "top_k_index" in params


def _top_k(block: nn.Module, router: nn.Module, config) -> int | None:
    for owner, attr in ((router, "top_k"), (block, "top_k"), (config, "num_experts_per_tok")):
        value = getattr(owner, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def find_moe_layers(model: nn.Module) -> list[MoELayer]:
    """Every sparse MoE block of ``model``, in layer order.

    Usage: ``[(l.index, l.kind) for l in find_moe_layers(model)]``.
    Raises :class:`NoRouterError` naming the model class and the supported router kinds when
    there is none (a dense model, or an architecture routerscope cannot read yet).
    """
    config = getattr(model, "config", None)
    found: list[MoELayer] = []
    for name, block in model.named_modules():
        experts = getattr(block, "experts", None)
        router = getattr(block, "gate", None)
        if router is None:
            router = getattr(block, "router", None)
        if not isinstance(experts, nn.Module) or not isinstance(router, nn.Module):
            continue
        top_k = _top_k(block, router, config)
        if _experts_take_routing(experts):
            kind = "experts-call"
            n_experts = getattr(experts, "num_experts", None) or getattr(router, "num_experts", None)
            if n_experts is None and getattr(router, "weight", None) is not None:
                n_experts = router.weight.shape[0]
        elif isinstance(experts, nn.ModuleList) and isinstance(router, nn.Linear):
            kind = "linear-gate"
            n_experts = router.out_features
        else:
            continue
        if top_k is None or not n_experts:
            continue
        match = re.search(r"(?:^|\.)layers?\.(\d+)(?:\.|$)", name)
        index = int(match.group(1)) if match else len(found)
        found.append(MoELayer(index, name, kind, block, router, experts, int(n_experts), int(top_k)))
    if not found:
        raise NoRouterError(
            f"{type(model).__name__} has no MoE router that routerscope can read. Supported router kinds:\n  - "
            + "\n  - ".join(SUPPORTED_ROUTERS)
            + "\nA dense model (e.g. MistralForCausalLM) has no router to trace; pass a sparse MoE model such as "
            "MixtralForCausalLM."
        )
    found.sort(key=lambda layer: layer.index)
    return found


class RouterCapture:
    """Context manager recording, for every MoE layer, the experts and weights each token got.

    Usage::

        with RouterCapture(model, store_probs=True) as cap:
            model(input_ids=ids, attention_mask=mask)
            experts, weights, probs = cap.collect()   # [B*T, L, k], [B*T, L, k], [B*T, L, E]

    Experts are ordered by weight, slot 0 the highest, whatever order the router returned.
    Every hook is removed on exit, also when the forward raises or is interrupted.
    ``collect()`` expects exactly one forward pass per layer since the last call.
    """

    def __init__(self, model: nn.Module, *, store_probs: bool = False, layers: list[MoELayer] | None = None):
        self.model = model
        self.store_probs = store_probs
        self.layers = layers if layers is not None else find_moe_layers(model)
        if len({(layer.n_experts, layer.top_k) for layer in self.layers}) != 1:
            raise NoRouterError("routerscope needs the same number of experts and top-k in every MoE layer")
        self.n_experts = self.layers[0].n_experts
        self.top_k = self.layers[0].top_k
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._routing: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in self.layers]
        self._probs: list[list[torch.Tensor]] = [[] for _ in self.layers]

    # -- hooks -------------------------------------------------------------------------------
    def _experts_pre_hook(self, slot: int):
        def hook(module, args, kwargs):
            index = kwargs["top_k_index"] if "top_k_index" in kwargs else args[1]
            weights = kwargs["top_k_weights"] if "top_k_weights" in kwargs else args[2]
            self._routing[slot].append((index.detach(), weights.detach()))

        return hook

    def _router_logits_hook(self, slot: int, replay: bool, renormalise: bool):
        already_probs = _ROUTER_OUTPUT_IS_PROBS and not replay

        def hook(module, args, output):
            scores = (output[0] if isinstance(output, tuple) else output).detach().float()
            probs = scores if already_probs else torch.softmax(scores, dim=-1)
            if replay:  # transformers 4.x Mixtral: the block does this to the gate's logits
                weights, index = torch.topk(probs, self.top_k, dim=-1)
                if renormalise:
                    weights = weights / weights.sum(dim=-1, keepdim=True)
                self._routing[slot].append((index, weights.to(args[0].dtype)))
            if self.store_probs:
                self._probs[slot].append(probs)

        return hook

    def __enter__(self) -> "RouterCapture":
        try:
            for slot, layer in enumerate(self.layers):
                if layer.kind == "experts-call":
                    self._handles.append(
                        layer.experts.register_forward_pre_hook(self._experts_pre_hook(slot), with_kwargs=True))
                    if self.store_probs:
                        self._handles.append(layer.router.register_forward_hook(
                            self._router_logits_hook(slot, replay=False, renormalise=True)))
                else:
                    renormalise = bool(getattr(layer.block, "norm_topk_prob", True))
                    self._handles.append(layer.router.register_forward_hook(
                        self._router_logits_hook(slot, replay=True, renormalise=renormalise)))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove every hook this capture installed (idempotent)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def clear(self) -> None:
        """Forget what was recorded since the last :meth:`collect`."""
        for records in self._routing + self._probs:
            records.clear()

    # -- results -----------------------------------------------------------------------------
    def collect(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Stack what the last forward routed: experts [N, L, k] (int64), weights [N, L, k] (fp32),
        probabilities [N, L, E] (fp32) or None. All on the device of the first MoE layer."""
        calls = {len(records) for records in self._routing}
        if calls != {1}:
            self.clear()
            raise RuntimeError(
                f"expected one forward pass per MoE layer since the last collect(), saw {sorted(calls)}; "
                "call collect() after every forward (generation with a KV cache routes once per step)")
        device = self._routing[0][0][0].device
        index = torch.stack([records[0][0].to(device, non_blocking=True) for records in self._routing], dim=1)
        weights = torch.stack([records[0][1].to(device, non_blocking=True).float() for records in self._routing], dim=1)
        # Slot 0 must be the first choice even for routers that return top-k unsorted.
        weights, order = torch.sort(weights, dim=-1, descending=True, stable=True)
        index = torch.gather(index, -1, order)
        probs = None
        if self.store_probs:
            probs = torch.stack([records[0].to(device, non_blocking=True) for records in self._probs], dim=1)
        self.clear()
        return index, weights, probs
