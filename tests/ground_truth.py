"""Ground truth for tracing tests, computed without routerscope: what each experts module
actually received, observed with hooks installed by the test itself.

transformers 5.x: the experts module is called with (hidden, top_k_index, top_k_weights).
transformers 4.x: each expert MLP receives the rows of the block input routed to it; the
block output equals sum_e w_e * expert_e(x), which pins down the weights.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def moe_blocks(model):
    return [m for m in model.modules() if hasattr(m, "experts") and (hasattr(m, "gate") or hasattr(m, "router"))]


class ExpertsReceived:
    """Records, for every forward of ``model``, the input ids, attention mask and, per MoE
    block, the set of (token row -> {expert: weight}) the experts were given."""

    def __init__(self, model):
        self.model = model
        self.calls = []  # one dict per forward: ids, mask, layers: list of [N] dicts expert->weight
        self._handles = []

    def __enter__(self):
        # The base model runs in every forward, whether or not the LM head is used.
        body = getattr(self.model, "base_model", self.model)
        self._handles.append(body.register_forward_pre_hook(self._model_hook, with_kwargs=True))
        for slot, block in enumerate(moe_blocks(self.model)):
            if isinstance(block.experts, nn.ModuleList):
                self._handles.append(block.register_forward_pre_hook(self._block_input(slot)))
                self._handles.append(block.register_forward_hook(self._block_output(slot)))
                for e, expert in enumerate(block.experts):
                    self._handles.append(expert.register_forward_pre_hook(self._legacy_expert(slot, e)))
            else:
                self._handles.append(block.experts.register_forward_pre_hook(self._fused(slot), with_kwargs=True))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()

    def _model_hook(self, module, args, kwargs):
        self.calls.append({"ids": kwargs["input_ids"].cpu(), "mask": kwargs["attention_mask"].cpu(), "layers": {},
                           "legacy": {}})

    def _fused(self, slot):
        def hook(module, args, kwargs):
            index, weights = args[1], args[2]
            rows = [dict(zip(i.tolist(), w.float().tolist())) for i, w in zip(index.cpu(), weights.cpu())]
            self.calls[-1]["layers"][slot] = rows

        return hook

    def _block_input(self, slot):
        def hook(module, args):
            hidden = args[0].reshape(-1, args[0].shape[-1]).detach().clone()
            self.calls[-1]["legacy"][slot] = {"hidden": hidden, "received": {}, "experts": module.experts}

        return hook

    def _legacy_expert(self, slot, e):
        def hook(module, args):
            self.calls[-1]["legacy"][slot]["received"][e] = args[0].detach().clone()

        return hook

    def _block_output(self, slot):
        def hook(module, args, output):
            state = self.calls[-1]["legacy"][slot]
            hidden = state["hidden"]
            n = hidden.shape[0]
            rows = [dict() for _ in range(n)]
            for e, received in state["received"].items():
                # Which token rows did expert e get? Match the rows it received to the block input.
                match = (received[:, None, :] == hidden[None, :, :]).all(-1)
                assert (match.sum(-1) >= 1).all(), "an expert received a row that is not a block input row"
                # Identical rows (e.g. BOS at position 0 of every document) route identically.
                for token in torch.nonzero(match.any(0)).flatten().tolist():
                    rows[token][e] = None
            self.calls[-1]["layers"][slot] = rows
            state["output"] = output[0].reshape(n, -1).detach()

        return hook


def routing_by_document(recorder: ExpertsReceived, token_lists: list[list[int]]):
    """Map each recorded real-token row back to its document (matched by token-id sequence).

    Returns {doc index: list over layers of list over tokens of {expert: weight}}."""
    by_ids = {tuple(ids): d for d, ids in enumerate(token_lists)}
    result = {}
    for call in recorder.calls:
        ids, mask = call["ids"], call["mask"].bool()
        width = ids.shape[1]
        for row in range(ids.shape[0]):
            real = ids[row][mask[row]].tolist()
            doc = by_ids[tuple(real)]
            cols = torch.nonzero(mask[row]).flatten().tolist()
            result[doc] = [[call["layers"][slot][row * width + c] for c in cols] for slot in sorted(call["layers"])]
    return result


def legacy_block_outputs(recorder: ExpertsReceived):
    """For transformers 4.x: per forward and block, (block input, block output, experts)."""
    return [[(s["hidden"], s["output"], s["experts"]) for _, s in sorted(call["legacy"].items())]
            for call in recorder.calls]


def all_hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
