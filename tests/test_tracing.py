"""routerscope.trace against ground truth: what every experts module actually received.

These tests run with whatever transformers is installed: CI runs them with 5.x (fused
experts, `layers[i].mlp`) and again with 4.57 (`layers[i].block_sparse_moe`)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import transformers

import routerscope
from routerscope import NoRouterError, RouterCapture, find_moe_layers

from conftest import tiny_mixtral
from ground_truth import ExpertsReceived, all_hooks, legacy_block_outputs, routing_by_document

TRANSFORMERS_5 = int(transformers.__version__.split(".")[0]) >= 5

TEXTS = [
    "吾輩は猫である。名前はまだ無い。",
    "I am a cat. As yet I have no name.",
    "どこで生れたかとんと見当がつかぬ。",
    "The Help menu allows you to start and control the LibreOffice Help system.",
    "鬱蒼とした森",
    "Short.",
    "「ヘルプ」メニューから LibreOffice ヘルプシステムの起動と管理ができます。",
]


def check_against_ground_truth(model, tokenizer, texts, **kwargs):
    token_lists = [tokenizer(t)["input_ids"] for t in texts]
    with ExpertsReceived(model) as received:
        tr = routerscope.trace(model, texts, tokenizer, progress=False, **kwargs)
    truth = routing_by_document(received, token_lists)
    assert sorted(truth) == list(range(len(texts)))
    n_layers = len(find_moe_layers(model))
    for doc, layers in truth.items():
        rows = np.flatnonzero(tr.doc_ids == doc)
        assert len(rows) == len(token_lists[doc])
        assert tr.token_ids[rows].tolist() == token_lists[doc]
        for slot in range(n_layers):
            for row, given in zip(rows, layers[slot]):
                recorded = dict(zip(tr.experts[row, slot].tolist(), tr.weights[row, slot].tolist()))
                assert set(recorded) == set(given), (doc, slot, row)
                if TRANSFORMERS_5:  # 4.x weights are checked by reconstructing the block output
                    assert all(recorded[e] == np.float32(w) for e, w in given.items())
    return tr, received


CONFIGS = [
    dict(n_experts=8, top_k=2, layers=3),
    dict(n_experts=16, top_k=4, layers=2),
    dict(n_experts=4, top_k=1, layers=2),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"E{c['n_experts']}k{c['top_k']}")
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
def test_recorded_routing_is_what_the_experts_received(config, side, dtype, mixtral_tokenizer):
    model = tiny_mixtral(**config, dtype=dtype)
    mixtral_tokenizer.padding_side = side
    try:
        tr, received = check_against_ground_truth(model, mixtral_tokenizer, TEXTS, batch_size=3)
    finally:
        mixtral_tokenizer.padding_side = "right"
    n_real = sum(len(mixtral_tokenizer(t)["input_ids"]) for t in TEXTS)
    assert len(tr) == n_real  # padding never recorded
    assert (tr.utilization().sum(axis=1) == config["top_k"] * n_real).all()
    assert (np.diff(tr.weights, axis=-1) <= 0).all()  # slot 0 is the first choice
    assert np.allclose(tr.weights.sum(-1), 1.0, atol=1e-2)
    padded = sum(int(call["mask"].numel()) for call in received.calls)
    assert padded > n_real  # the batches really had padding to leave out
    if not TRANSFORMERS_5:
        check_legacy_weights(tr, received, mixtral_tokenizer, dtype)


def check_legacy_weights(tr, received, tokenizer, dtype):
    """4.x: the block output of every real token equals sum_slots w * expert(x) with the
    recorded experts and weights."""
    token_lists = [tokenizer(t)["input_ids"] for t in TEXTS]
    by_ids = {tuple(ids): d for d, ids in enumerate(token_lists)}
    for call, blocks in zip(received.calls, legacy_block_outputs(received)):
        ids, mask = call["ids"], call["mask"].bool()
        for row in range(ids.shape[0]):
            doc = by_ids[tuple(ids[row][mask[row]].tolist())]
            rows = np.flatnonzero(tr.doc_ids == doc)
            cols = torch.nonzero(mask[row]).flatten().tolist()
            flat = [row * ids.shape[1] + c for c in cols]
            for slot, (hidden, output, experts) in enumerate(blocks):
                x = hidden[flat]
                every = torch.stack([expert(x) for expert in experts])  # [E, T, H]
                chosen = torch.from_numpy(tr.experts[rows, slot].astype(np.int64))  # [T, k]
                weights = torch.from_numpy(tr.weights[rows, slot]).to(dtype)
                picked = every[chosen, torch.arange(len(rows))[:, None]]  # [T, k, H]
                expected = (picked * weights[..., None]).float().sum(1)
                tol = 1e-5 if dtype == torch.float32 else 2e-2
                assert torch.allclose(expected, output[flat].float(), atol=tol, rtol=tol)


@pytest.mark.parametrize("implementation", ["eager", "grouped_mm", "batched_mm"])
def test_every_experts_implementation(implementation, mixtral_tokenizer):
    if not TRANSFORMERS_5:
        pytest.skip("experts implementations exist from transformers 5.0")
    model = tiny_mixtral()
    model.set_experts_implementation(implementation)
    check_against_ground_truth(model, mixtral_tokenizer, TEXTS[:4], batch_size=2)


def test_under_accelerate_offload(mixtral_tokenizer):
    """Weights offloaded by accelerate (moved in by its own hooks at each forward)."""
    accelerate = pytest.importorskip("accelerate")
    model = tiny_mixtral()
    reference = routerscope.trace(model, TEXTS, mixtral_tokenizer, progress=False)
    accelerate.cpu_offload(model, execution_device=torch.device("cpu"))
    tr, _ = check_against_ground_truth(model, mixtral_tokenizer, TEXTS)
    assert np.array_equal(tr.experts, reference.experts)


def test_layout_is_found(mixtral_tokenizer):
    layers = find_moe_layers(tiny_mixtral(layers=3))
    assert [layer.index for layer in layers] == [0, 1, 2]
    expected = ("experts-call", "mlp") if TRANSFORMERS_5 else ("linear-gate", "block_sparse_moe")
    assert {(layer.kind, layer.name.split(".")[-1]) for layer in layers} == {expected}


def test_padding_side_and_batch_size_do_not_change_routing(mixtral_tokenizer):
    model = tiny_mixtral()
    one = routerscope.trace(model, TEXTS, mixtral_tokenizer, batch_size=1, progress=False)
    mixtral_tokenizer.padding_side = "left"
    try:
        batched = routerscope.trace(model, TEXTS, mixtral_tokenizer, batch_size=4, progress=False)
    finally:
        mixtral_tokenizer.padding_side = "right"
    # Same tokens in the same order; float noise from padding may flip a near-tie, rarely.
    assert np.array_equal(one.token_ids, batched.token_ids)
    assert (one.experts[..., 0] == batched.experts[..., 0]).mean() > 0.99


def test_store_probs(mixtral_tokenizer):
    model = tiny_mixtral()
    tr = routerscope.trace(model, TEXTS, mixtral_tokenizer, store_probs=True, progress=False)
    assert tr.probs.shape == (len(tr), 3, 8)
    assert np.allclose(tr.probs.sum(-1), 1.0, atol=1e-5)
    top = np.argsort(-tr.probs, axis=-1, kind="stable")[..., :2]
    assert (np.sort(top, -1) == np.sort(tr.experts, -1)).mean() > 0.999
    renormalised = np.take_along_axis(tr.probs, tr.experts.astype(np.int64), -1)
    renormalised /= renormalised.sum(-1, keepdims=True)
    assert np.allclose(renormalised, tr.weights, atol=1e-6)


def test_outputs_unchanged_and_hooks_removed(mixtral_tokenizer):
    model = tiny_mixtral()
    batch = mixtral_tokenizer(TEXTS[:1], return_tensors="pt")
    before = model(**batch).logits
    hooks = all_hooks(model)
    with RouterCapture(model) as cap:
        assert all_hooks(model) > hooks
        during = model(**batch).logits
        cap.collect()
    assert torch.equal(before, during)
    assert all_hooks(model) == hooks
    routerscope.trace(model, TEXTS, mixtral_tokenizer, progress=False)
    assert all_hooks(model) == hooks
    assert torch.equal(model(**batch).logits, before)


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_hooks_removed_when_the_forward_raises(error, mixtral_tokenizer):
    model = tiny_mixtral()
    model.train()
    hooks = all_hooks(model)

    def explode(module, args):
        raise error("boom inside the forward")

    handle = model.model.layers[1].register_forward_pre_hook(explode)
    with pytest.raises(error, match="boom"):
        routerscope.trace(model, TEXTS, mixtral_tokenizer, progress=False)
    handle.remove()
    assert all_hooks(model) == hooks
    assert model.training  # the mode is restored too


def test_dense_model_gets_a_clear_error(mixtral_tokenizer):
    from transformers import MistralConfig, MistralForCausalLM

    dense = MistralForCausalLM(MistralConfig(vocab_size=32000, hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2))
    with pytest.raises(NoRouterError, match="MistralForCausalLM.*no MoE router") as info:
        routerscope.trace(dense, TEXTS, mixtral_tokenizer)
    assert "block_sparse_moe" in str(info.value) and "experts(hidden_states" in str(info.value)


def test_bad_inputs(mixtral_tokenizer):
    model = tiny_mixtral(layers=1)
    with pytest.raises(ValueError, match="no documents"):
        routerscope.trace(model, [], mixtral_tokenizer)
    with pytest.raises(TypeError, match="single str.*\\[text\\]"):
        routerscope.trace(model, "one string", mixtral_tokenizer)
    with pytest.raises(TypeError, match="document 1 is a bytes"):
        routerscope.trace(model, ["ok", b"bytes"], mixtral_tokenizer)
    with pytest.raises(ValueError, match="needs a tokenizer"):
        routerscope.trace(model, ["ok"])
    with pytest.raises(ValueError, match="every document is empty"), pytest.warns(UserWarning, match="skipping 2"):
        routerscope.trace(model, ["", "  "], mixtral_tokenizer, progress=False)
    with pytest.raises(ValueError, match="language has 1 entries for 2 documents"):
        routerscope.trace(model, ["a", "b"], mixtral_tokenizer, language=["ja"])
    with pytest.warns(UserWarning, match="skipping 1 empty"):
        tr = routerscope.trace(model, ["猫", "", "dog"], mixtral_tokenizer, progress=False)
    assert sorted(set(tr.doc_ids.tolist())) == [0, 2] and tr.n_docs == 3


def test_long_documents_are_split_into_windows(mixtral_tokenizer):
    model = tiny_mixtral(layers=1)
    text = "吾輩は猫である。" * 20
    n_tokens = len(mixtral_tokenizer(text)["input_ids"])
    with pytest.warns(UserWarning, match="split into windows"):
        tr = routerscope.trace(model, [text, "short"], mixtral_tokenizer, max_length=16, progress=False)
    doc0 = tr.doc_ids == 0
    assert doc0.sum() == n_tokens
    assert tr.positions[doc0].tolist() == list(range(n_tokens))
    # The windows were routed on their own: the first 16 tokens equal a trace of just them.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = routerscope.trace(model, [text], mixtral_tokenizer, max_length=4096, progress=False)
    assert np.array_equal(whole.experts[:16], tr.experts[:16])
