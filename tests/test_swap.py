"""Expert swap: compatibility, in-memory swap on both layouts, atomicity, the streaming
checkpoint swap, and the before/after routing shift."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import routerscope
from routerscope import SwapError, check_compatible, compare, find_moe_layers, swap_checkpoint, swap_expert
from routerscope.shift import chance_jaccard, chance_set_agreement

SHARED = dict(vocab_size=32000, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, head_dim=16, rope_theta=1e6, rms_norm_eps=1e-5, sliding_window=None,
              max_position_embeddings=512, tie_word_embeddings=False)


def pair(dtype=torch.float32, seed=0, **dense_overrides):
    from transformers import MistralConfig, MistralForCausalLM, MixtralConfig, MixtralForCausalLM

    torch.manual_seed(seed)
    moe = MixtralForCausalLM(MixtralConfig(**SHARED, num_local_experts=8, num_experts_per_tok=2)).to(dtype).eval()
    dense = MistralForCausalLM(MistralConfig(**{**SHARED, **dense_overrides})).to(dtype).eval()
    return moe, dense


def expert_output(moe, layer, e, x):
    """What expert e of a layer computes for x, through the model's own experts module."""
    experts = find_moe_layers(moe)[layer].experts
    if isinstance(experts, torch.nn.ModuleList):
        return experts[e](x)
    index = torch.full((x.shape[0], 1), e, dtype=torch.long)
    return experts(x, index, torch.ones(x.shape[0], 1, dtype=x.dtype))


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_default_configs_differ_in_function_changing_settings():
    from transformers import MistralConfig, MixtralConfig

    report = check_compatible(MixtralConfig(), MistralConfig())
    assert {d.field for d in report.errors} == {"rope_theta", "rms_norm_eps", "sliding_window"}
    assert "allow=" in pytest.raises(SwapError, report.raise_for_errors).value.args[0]
    assert check_compatible(MixtralConfig(), MistralConfig(),
                            allow=("rope_theta", "rms_norm_eps", "sliding_window")).ok
    shapes = check_compatible(MixtralConfig(), MistralConfig(hidden_size=2048))
    assert "hidden_size" in {d.field for d in shapes.errors}


@pytest.mark.parametrize("experts", [[0], [2, 5], [0, 1, 3, 7]])
def test_mlp_swap_makes_the_expert_the_dense_mlp(experts):
    moe, dense = pair()
    before = snapshot(moe)
    record = swap_expert(moe, dense, expert=experts)
    assert record.experts == experts and record.layers == [0, 1, 2]
    x = torch.randn(32, 64)
    with torch.no_grad():
        for layer in range(3):
            target = dense.model.layers[layer].mlp(x)
            for e in range(8):
                diff = (expert_output(moe, layer, e, x) - target).abs().max().item()
                if e in experts:
                    assert diff <= 1e-6
                else:
                    assert diff > 1e-3  # the other experts are untouched
    after = moe.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("experts" in k for k in changed)


def test_mlp_swap_keeps_layer0_routing(mixtral_tokenizer):
    moe, dense = pair(seed=1)
    texts = ["吾輩は猫である。名前はまだ無い。", "I am a cat. As yet I have no name.", "The Help menu."]
    before = routerscope.trace(moe, texts, mixtral_tokenizer, progress=False)
    swap_expert(moe, dense, expert=[0, 1])
    after = routerscope.trace(moe, texts, mixtral_tokenizer, progress=False)
    assert np.array_equal(before.experts[:, 0], after.experts[:, 0])
    assert np.array_equal(before.weights[:, 0], after.weights[:, 0])
    assert not np.array_equal(before.experts[:, 1:], after.experts[:, 1:])  # later layers do shift
    shift = compare(before, after, swapped=[0, 1])
    for lang in shift.languages:
        assert shift.first_changed[lang][0] == 0 and shift.set_agreement[lang][0] == 1
        assert shift.jsd_bits[lang][0] == 0


def test_other_parts_and_router_options():
    moe, dense = pair()
    swap_expert(moe, dense, expert=0, parts=("mlp", "attention", "norms", "lm_head", "embeddings"), layers=[1],
                router="copy:3")
    layer = moe.model.layers[1]
    assert torch.equal(layer.self_attn.q_proj.weight, dense.model.layers[1].self_attn.q_proj.weight)
    assert torch.equal(layer.input_layernorm.weight, dense.model.layers[1].input_layernorm.weight)
    assert not torch.equal(moe.model.layers[0].self_attn.q_proj.weight, dense.model.layers[0].self_attn.q_proj.weight)
    assert torch.equal(moe.lm_head.weight, dense.lm_head.weight)
    rows = find_moe_layers(moe)[1].router.weight
    assert torch.equal(rows[0], rows[3])
    swap_expert(moe, dense, expert=0, layers=[2], router="zero")
    assert not find_moe_layers(moe)[2].router.weight[0].any()


def test_failed_swap_leaves_the_model_untouched():
    moe, dense = pair()
    before = snapshot(moe)
    _, other_theta = pair(rope_theta=1e4)
    _, other_shape = pair(intermediate_size=128)
    bad_calls = [
        dict(dense=other_theta), dict(dense=other_shape), dict(expert=8), dict(expert=[1, 1]),
        dict(parts=("mlp", "ffn")), dict(layers=[5]), dict(router="copy:0"), dict(router="copy:x"),
        dict(router="sideways"),
    ]
    for kwargs in bad_calls:
        with pytest.raises(SwapError):
            swap_expert(moe, kwargs.pop("dense", dense), **kwargs)
        assert same(before, moe.state_dict()), kwargs
    # A failure in the middle of copying (a source tensor that cannot be read) is rolled back.
    broken = pair()[1]
    broken.model.layers[2].mlp.down_proj.weight = torch.nn.Parameter(torch.empty(64, 96, device="meta"))
    with pytest.raises(Exception):
        swap_expert(moe, broken, expert=[0, 1])
    assert same(before, moe.state_dict())
    assert check_compatible(moe, other_theta, allow=("rope_theta",)).ok


def save_fused(model, folder):
    """A checkpoint in the fused on-disk layout (what the 5.x modules hold), several shards."""
    folder.mkdir()
    model.config.save_pretrained(folder)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    names = sorted(state)
    shards = {f"model-0000{i + 1}-of-00003.safetensors": names[i::3] for i in range(3)}
    weight_map = {}
    for file, keys in shards.items():
        save_file({k: state[k] for k in keys}, folder / file, metadata={"format": "pt"})
        weight_map.update({k: file for k in keys})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


@pytest.mark.parametrize("layout", ["legacy", "fused"])
@pytest.mark.parametrize("dtypes", [("bf16", "bf16"), ("bf16", "fp32")], ids=["bf16", "fp32-into-bf16"])
def test_streaming_swap_equals_in_memory_swap(layout, dtypes, tmp_path):
    from transformers import MixtralForCausalLM

    if layout == "fused" and not hasattr(find_moe_layers(pair()[0])[0].experts, "gate_up_proj"):
        pytest.skip("the fused layout belongs to transformers 5")
    as_dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}
    moe, _ = pair(as_dtype[dtypes[0]])
    _, dense = pair(as_dtype[dtypes[1]])
    if layout == "legacy":
        moe.save_pretrained(tmp_path / "moe", max_shard_size="300KB")
        assert len(list((tmp_path / "moe").glob("*.safetensors"))) > 3
        assert any("block_sparse_moe.experts.0.w1" in k for k in
                   json.loads((tmp_path / "moe" / "model.safetensors.index.json").read_text())["weight_map"])
    else:
        save_fused(moe, tmp_path / "moe")
    dense.save_pretrained(tmp_path / "dense", max_shard_size="500KB")
    manifest = swap_checkpoint(tmp_path / "moe", tmp_path / "dense", tmp_path / "out", experts=[1, 6],
                               parts=("mlp", "norms"), router="copy:0", progress=False)
    loaded = MixtralForCausalLM.from_pretrained(tmp_path / "out", **routerscope.models.dtype_kwarg(as_dtype[dtypes[0]]))
    reference = MixtralForCausalLM.from_pretrained(tmp_path / "moe", **routerscope.models.dtype_kwarg(
        as_dtype[dtypes[0]]))
    swap_expert(reference, dense, expert=[1, 6], parts=("mlp", "norms"), router="copy:0")
    assert same(snapshot(reference), snapshot(loaded))
    written = json.loads((tmp_path / "out" / "swap_manifest.json").read_text())
    assert written["shards"] == manifest["shards"] and len(written["changed"]) > 0
    import hashlib

    for name, info in written["shards"].items():
        assert hashlib.sha256((tmp_path / "out" / name).read_bytes()).hexdigest() == info["sha256"]


def test_streaming_swap_refuses_and_leaves_nothing(tmp_path):
    moe, dense = pair()
    moe.save_pretrained(tmp_path / "moe")
    dense.save_pretrained(tmp_path / "dense")
    _, far = pair(rope_theta=1e4)
    far.save_pretrained(tmp_path / "far")
    with pytest.raises(SwapError, match="rope_theta"):
        swap_checkpoint(tmp_path / "moe", tmp_path / "far", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    # A dense checkpoint missing a tensor.
    from safetensors.torch import load_file

    state = load_file(tmp_path / "dense" / "model.safetensors")
    del state["model.layers.2.mlp.up_proj.weight"]
    (tmp_path / "holey").mkdir()
    save_file(state, tmp_path / "holey" / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "holey" / "config.json").write_text((tmp_path / "dense" / "config.json").read_text())
    with pytest.raises(SwapError, match="no tensor 'model.layers.2.mlp.up_proj.weight'"):
        swap_checkpoint(tmp_path / "moe", tmp_path / "holey", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left
    swap_checkpoint(tmp_path / "moe", tmp_path / "dense", tmp_path / "out", progress=False)
    with pytest.raises(SwapError, match="already holds a checkpoint.*--force"):
        swap_checkpoint(tmp_path / "moe", tmp_path / "dense", tmp_path / "out", experts=[2], progress=False)
    swap_checkpoint(tmp_path / "moe", tmp_path / "dense", tmp_path / "out", experts=[2], force=True, progress=False)
    assert json.loads((tmp_path / "out" / "swap_manifest.json").read_text())["experts"] == [2]


def test_swap_command(tmp_path, capsys):
    from routerscope.cli import main

    moe, dense = pair()
    moe.save_pretrained(tmp_path / "moe")
    dense.save_pretrained(tmp_path / "dense")
    assert main(["swap", "--moe", str(tmp_path / "moe"), "--dense", str(tmp_path / "dense"), "--expert", "0,3",
                 "--parts", "mlp,attention", "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    assert (tmp_path / "out" / "swap_manifest.json").exists()
    assert main(["swap", "--moe", str(tmp_path / "moe"), "--dense", str(tmp_path / "dense"), "--expert", "9",
                 "--out", str(tmp_path / "out2"), "--no-progress"]) == 2
    assert "0..7" in capsys.readouterr().err


def test_chance_values_are_the_closed_forms():
    assert chance_set_agreement(8, 2) == pytest.approx(1 / 28)
    assert chance_jaccard(8, 2) == pytest.approx(5 / 28)
    # Monte Carlo check of the general formula for top-4 of 16.
    rng = np.random.default_rng(0)
    a = np.argsort(rng.random((200_000, 16)), axis=1)[:, :4]
    b = np.argsort(rng.random((200_000, 16)), axis=1)[:, :4]
    inter = np.array([len(set(x) & set(y)) for x, y in zip(a[:20000], b[:20000])])
    assert np.mean(inter / (8 - inter)) == pytest.approx(chance_jaccard(16, 4), abs=0.01)


def test_compare_needs_the_same_tokens(mixtral_tokenizer):
    moe, _ = pair()
    a = routerscope.trace(moe, ["猫", "dog"], mixtral_tokenizer, progress=False)
    b = routerscope.trace(moe, ["猫です"], mixtral_tokenizer, progress=False)
    with pytest.raises(ValueError, match="same tokens"):
        compare(a, b)
    itself = compare(a, a)
    frame = itself.to_frame()
    assert (frame.loc[frame.metric == "first_changed", "value"] == 0).all()
    assert np.allclose(frame.loc[frame.metric == "set_agreement", "chance"], 1 / 28)


def test_perplexity_matches_the_model_loss(mixtral_tokenizer):
    moe, _ = pair()
    texts = ["吾輩は猫である。", "I am a cat, and this is a longer sentence."]
    result = routerscope.perplexity(moe, mixtral_tokenizer, texts, language=["ja", "en"])
    for text, lang in zip(texts, ["ja", "en"]):
        ids = mixtral_tokenizer(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            loss = moe(input_ids=ids, labels=ids).loss.item()
        assert result[lang]["perplexity"] == pytest.approx(np.exp(loss), rel=1e-4)
        assert result[lang]["tokens"] == ids.shape[1] - 1


def test_compare_command_writes_figures_and_table(mixtral_tokenizer, tmp_path, capsys):
    from routerscope.cli import main

    moe, dense = pair()
    texts = ["吾輩は猫である。", "I am a cat.", "名前はまだ無い。", "No name yet."]
    langs = ["ja", "en", "ja", "en"]
    routerscope.trace(moe, texts, mixtral_tokenizer, language=langs, progress=False).save(tmp_path / "before.npz")
    swap_expert(moe, dense, expert=2)
    routerscope.trace(moe, texts, mixtral_tokenizer, language=langs, progress=False).save(tmp_path / "after.npz")
    assert main(["compare", str(tmp_path / "before.npz"), str(tmp_path / "after.npz"), "--swapped", "2",
                 "--out", str(tmp_path / "cmp")]) == 0
    names = sorted(p.name for p in (tmp_path / "cmp").iterdir())
    assert names == ["after.png", "before.png", "difference.png", "shift.csv", "shift.md"]
    table = (tmp_path / "cmp" / "shift.md").read_text()
    assert "Δshare e2" in table and "| ja | 0 | 0.000 | 1.000 |" in table
