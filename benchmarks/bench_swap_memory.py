"""Peak memory of the streaming checkpoint swap, against the checkpoint's size.

Usage: python benchmarks/bench_swap_memory.py [--hidden 1024] [--keep DIR]

Writes a multi-shard bf16 Mixtral-layout checkpoint (legacy per-expert keys, as
save_pretrained writes them) of about 0.5 GB and a dense Mistral-layout one of the same
dimensions into a temporary folder, then runs, each in a fresh subprocess:
  floor      Python importing routerscope.checkpoint_swap and doing nothing
  streaming  routerscope.swap_checkpoint(... experts=[0, 1], parts=mlp+attention+norms)
  naive      both models loaded with from_pretrained in fp32, then swap_expert in memory
and prints each one's peak resident memory (VmHWM) and its ratio to the MoE checkpoint's
size on disk. The values are random (the memory a swap needs does not depend on them).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file


def write_checkpoint(folder: Path, config: dict, tensors: dict[str, tuple], shard_bytes: int) -> int:
    """Write random bf16 tensors in shards of about shard_bytes; returns the bytes written."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    shards, current, size = [], {}, 0
    for name, shape in tensors.items():
        nbytes = 2 * int(torch.Size(shape).numel())
        if current and size + nbytes > shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = shape
        size += nbytes
    shards.append(current)
    weight_map, total = {}, 0
    generator = torch.Generator().manual_seed(0)
    for i, shard in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        data = {name: torch.randn(shape, generator=generator).to(torch.bfloat16) for name, shape in shard.items()}
        save_file(data, folder / file, metadata={"format": "pt"})
        total += (folder / file).stat().st_size
        weight_map.update({name: file for name in shard})
        del data
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                      "weight_map": weight_map}))
    return total


def peak_rss_mb(code: str) -> float:
    """Peak resident memory of a fresh Python running ``code``: VmHWM of its own address space
    (getrusage would also count the pages of this parent, which the child is forked from)."""
    report = "\nprint([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])"
    result = subprocess.run([sys.executable, "-c", code + report], check=True, capture_output=True, text=True)
    return int(result.stdout.strip().splitlines()[-1]) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--shard-mb", type=int, default=100)
    ap.add_argument("--keep", type=Path, default=None, help="write the checkpoints here instead of a temp folder")
    args = ap.parse_args()
    h, inter, n_layers, vocab, n_experts = args.hidden, 2 * args.hidden, args.layers, 32000, 8
    common = dict(vocab_size=vocab, hidden_size=h, intermediate_size=inter, num_hidden_layers=n_layers,
                  num_attention_heads=8, num_key_value_heads=4, head_dim=h // 8, rope_theta=1e6, rms_norm_eps=1e-5,
                  sliding_window=None, hidden_act="silu", max_position_embeddings=4096, tie_word_embeddings=False,
                  torch_dtype="bfloat16")
    moe_cfg = dict(common, model_type="mixtral", architectures=["MixtralForCausalLM"], num_local_experts=n_experts,
                   num_experts_per_tok=2)
    dense_cfg = dict(common, model_type="mistral", architectures=["MistralForCausalLM"])
    kv = 4 * (h // 8)
    shared = {"model.embed_tokens.weight": (vocab, h), "lm_head.weight": (vocab, h), "model.norm.weight": (h,)}
    moe_t, dense_t = dict(shared), dict(shared)
    for i in range(n_layers):
        p = f"model.layers.{i}"
        attn = {f"{p}.self_attn.q_proj.weight": (h, h), f"{p}.self_attn.k_proj.weight": (kv, h),
                f"{p}.self_attn.v_proj.weight": (kv, h), f"{p}.self_attn.o_proj.weight": (h, h),
                f"{p}.input_layernorm.weight": (h,), f"{p}.post_attention_layernorm.weight": (h,)}
        moe_t.update(attn)
        dense_t.update(attn)
        moe_t[f"{p}.block_sparse_moe.gate.weight"] = (n_experts, h)
        for e in range(n_experts):
            for w, shape in (("w1", (inter, h)), ("w2", (h, inter)), ("w3", (inter, h))):
                moe_t[f"{p}.block_sparse_moe.experts.{e}.{w}.weight"] = shape
        for name, shape in (("gate_proj", (inter, h)), ("up_proj", (inter, h)), ("down_proj", (h, inter))):
            dense_t[f"{p}.mlp.{name}.weight"] = shape

    root = args.keep or Path(tempfile.mkdtemp(prefix="routerscope-bench-"))
    moe_size = write_checkpoint(root / "moe", moe_cfg, moe_t, args.shard_mb << 20)
    dense_size = write_checkpoint(root / "dense", dense_cfg, dense_t, args.shard_mb << 20)
    n_shards = len(list((root / "moe").glob("*.safetensors")))
    print(f"MoE checkpoint: {moe_size / 2**20:.0f} MiB in {n_shards} shards (bf16); dense: {dense_size / 2**20:.0f} MiB")

    floor = peak_rss_mb("import routerscope.checkpoint_swap")
    streaming = peak_rss_mb(
        "from routerscope.checkpoint_swap import swap_checkpoint\n"
        f"swap_checkpoint({str(root / 'moe')!r}, {str(root / 'dense')!r}, {str(root / 'out')!r}, experts=[0, 1], "
        "parts=('mlp', 'attention', 'norms'), progress=False)")
    naive = peak_rss_mb(
        "import torch\nfrom transformers import AutoModelForCausalLM\nimport routerscope\n"
        "kw = routerscope.models.dtype_kwarg(torch.float32)\n"
        f"moe = AutoModelForCausalLM.from_pretrained({str(root / 'moe')!r}, **kw)\n"
        f"dense = AutoModelForCausalLM.from_pretrained({str(root / 'dense')!r}, **kw)\n"
        "routerscope.swap_expert(moe, dense, expert=[0, 1], parts=('mlp', 'attention', 'norms'))")
    mib = moe_size / 2**20
    print(f"peak RSS, interpreter + import only : {floor:8.0f} MiB  ({floor / mib:.3f} x checkpoint)")
    print(f"peak RSS, streaming swap            : {streaming:8.0f} MiB  ({streaming / mib:.3f} x checkpoint)")
    print(f"peak RSS, naive fp32 load + swap    : {naive:8.0f} MiB  ({naive / mib:.3f} x checkpoint)")
    print(f"ratio streaming peak RSS / checkpoint size: {streaming / mib:.3f} (target < 0.3)")


if __name__ == "__main__":
    main()
