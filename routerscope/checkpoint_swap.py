"""Streaming expert swap on safetensors checkpoints, never loading either model.

    swap_checkpoint("mixtral-dir", "mistral-dir", "out-dir", experts=[0], parts=("mlp",))
    routerscope swap --moe mixtral-dir --dense mistral-dir --expert 0 --parts mlp --out out-dir

The output has the same shards, tensor names, dtypes and byte layout as the MoE checkpoint;
only the byte ranges of the swapped tensors (or expert slices of fused tensors) differ.
Each shard is written by streaming its data in chunks, splicing in the dense model's bytes,
so peak memory is one chunk plus the largest single dense tensor, not a shard, not a model.
Torch is not imported (dtype conversion, when the two checkpoints differ in dtype, uses
numpy with round-to-nearest-even for bfloat16, as torch does).

Both MoE key layouts on disk are understood: legacy per-expert keys
(``model.layers.L.block_sparse_moe.experts.E.w1/w2/w3.weight``, which ``save_pretrained``
writes by default) and fused keys (``model.layers.L.mlp.experts.gate_up_proj`` [E, 2I, H],
``...down_proj`` [E, H, I]). Everything is checked before anything is written; the output is
assembled in a temporary folder beside ``out`` and renamed into place at the end, so a
failure leaves no partial checkpoint. ``swap_manifest.json`` records what changed and the
sha256 of every written shard.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .compat import PARTS, SwapError, check_compatible

CHUNK = 16 << 20
_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def read_header(path: Path) -> tuple[dict, int]:
    """The JSON header of a safetensors file and the absolute offset where its data starts."""
    with open(path, "rb") as handle:
        raw = handle.read(8)
        if len(raw) != 8:
            raise SwapError(f"{path} is not a safetensors file (too short)")
        (size,) = struct.unpack("<Q", raw)
        if size > 100_000_000:
            raise SwapError(f"{path} is not a safetensors file (header size {size})")
        try:
            header = json.loads(handle.read(size))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise SwapError(f"{path} is not a safetensors file (unreadable header)") from None
    return header, 8 + size


class Checkpoint:
    """Lazy view of a Hugging Face safetensors checkpoint folder: config and tensor index."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        config = self.folder / "config.json"
        if not config.is_file():
            raise SwapError(f"{self.folder} is not a Hugging Face checkpoint (no config.json)")
        self.config = json.loads(config.read_text())
        index = self.folder / "model.safetensors.index.json"
        if index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        elif (self.folder / "model.safetensors").is_file():
            files = ["model.safetensors"]
        else:
            raise SwapError(f"{self.folder} has no model.safetensors or model.safetensors.index.json "
                            "(only safetensors checkpoints are read; convert .bin files with save_pretrained)")
        self.files = [self.folder / f for f in files]
        self.tensors: dict[str, TensorInfo] = {}
        self.headers: dict[Path, tuple[dict, int]] = {}
        for file in self.files:
            if not file.is_file():
                raise SwapError(f"{file} is listed in the index but missing")
            header, data_start = read_header(file)
            self.headers[file] = (header, data_start)
            for name, meta in header.items():
                if name == "__metadata__":
                    continue
                begin, end = meta["data_offsets"]
                self.tensors[name] = TensorInfo(name, file, meta["dtype"], tuple(meta["shape"]), data_start + begin,
                                                data_start + end)

    def require(self, name: str) -> TensorInfo:
        if name not in self.tensors:
            raise SwapError(f"{self.folder} has no tensor {name!r}")
        return self.tensors[name]

    def read(self, info: TensorInfo, offset: int = 0, length: int | None = None) -> bytes:
        length = info.nbytes - offset if length is None else length
        with open(info.file, "rb") as handle:
            handle.seek(info.start + offset)
            return handle.read(length)


# -- dtype conversion (numpy only) -------------------------------------------------------------
def _to_f32(data: bytes, dtype: str) -> np.ndarray:
    if dtype == "F32":
        return np.frombuffer(data, dtype="<f4")
    if dtype == "F16":
        return np.frombuffer(data, dtype="<f2").astype(np.float32)
    if dtype == "BF16":
        return (np.frombuffer(data, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
    if dtype == "F64":
        return np.frombuffer(data, dtype="<f8").astype(np.float32)
    raise SwapError(f"cannot convert a {dtype} tensor")


def _from_f32(values: np.ndarray, dtype: str) -> bytes:
    values = np.ascontiguousarray(values, dtype=np.float32)
    if dtype == "F32":
        return values.astype("<f4").tobytes()
    if dtype == "F16":
        return values.astype("<f2").tobytes()
    if dtype == "F64":
        return values.astype("<f8").tobytes()
    if dtype == "BF16":  # round to nearest even, NaN stays NaN: as torch's float -> bfloat16
        bits = values.view(np.uint32)
        rounded = ((bits + (((bits >> 16) & 1) + 0x7FFF)) >> 16).astype(np.uint16)
        rounded[np.isnan(values)] = 0x7FC0
        return rounded.astype("<u2").tobytes()
    raise SwapError(f"cannot convert to {dtype}")


def _convert(data: bytes, src: str, dst: str) -> bytes:
    return data if src == dst else _from_f32(_to_f32(data, src), dst)


# -- planning ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Patch:
    """Replace ``length`` bytes at absolute ``offset`` of ``file`` with what ``produce()`` returns."""

    file: Path
    offset: int
    length: int
    target: str
    source: str
    produce: Callable[[], bytes]


def _moe_layout(moe: Checkpoint, layer: int) -> str:
    prefix = f"model.layers.{layer}"
    if f"{prefix}.mlp.experts.gate_up_proj" in moe.tensors:
        return "fused"
    if f"{prefix}.block_sparse_moe.experts.0.w1.weight" in moe.tensors:
        return "legacy"
    raise SwapError(f"{moe.folder}: layer {layer} has neither fused ({prefix}.mlp.experts.gate_up_proj) nor legacy "
                    f"({prefix}.block_sparse_moe.experts.0.w1.weight) expert tensors")


def _router_name(moe: Checkpoint, layer: int) -> str:
    for name in (f"model.layers.{layer}.block_sparse_moe.gate.weight", f"model.layers.{layer}.mlp.gate.weight"):
        if name in moe.tensors:
            return name
    raise SwapError(f"{moe.folder}: no router weight for layer {layer}")


def _whole(moe: Checkpoint, dense: Checkpoint, name: str, dense_name: str | None = None) -> Patch:
    target, source = moe.require(name), dense.require(dense_name or name)
    if target.shape != source.shape:
        raise SwapError(f"{source.name} has shape {source.shape} but {target.name} has {target.shape}")
    _check_dtypes(source.dtype, target.dtype)
    return Patch(target.file, target.start, target.nbytes, name, f"dense:{source.name}",
                 lambda: _convert(dense.read(source), source.dtype, target.dtype))


def _check_dtypes(src: str, dst: str) -> None:
    floats = {"F32", "F16", "BF16", "F64"}
    if src != dst and not (src in floats and dst in floats):
        raise SwapError(f"cannot copy a {src} tensor into a {dst} tensor")


def _slice(moe_tensor: TensorInfo, index: int, rows: tuple[int, int] | None, source: TensorInfo, dense: Checkpoint,
           label: str) -> Patch:
    """Patch sub-tensor [index] (optionally rows [a, b) of it) of a fused [E, ...] tensor."""
    per_expert = int(np.prod(moe_tensor.shape[1:]))
    item = _ITEMSIZE[moe_tensor.dtype]
    start = index * per_expert * item
    shape = moe_tensor.shape[1:]
    if rows is not None:
        row_size = int(np.prod(shape[1:]))
        start += rows[0] * row_size * item
        shape = (rows[1] - rows[0],) + tuple(shape[1:])
    if tuple(shape) != source.shape:
        raise SwapError(f"{source.name} has shape {source.shape} but {label} has {tuple(shape)}")
    _check_dtypes(source.dtype, moe_tensor.dtype)
    return Patch(moe_tensor.file, moe_tensor.start + start, int(np.prod(shape)) * item, label, f"dense:{source.name}",
                 lambda: _convert(dense.read(source), source.dtype, moe_tensor.dtype))


def plan_swap(moe: Checkpoint, dense: Checkpoint, experts: Sequence[int], parts: Sequence[str],
              layers: Sequence[int] | None, router: str, allow: Sequence[str]) -> list[Patch]:
    """Every byte range to replace, validated; raises SwapError before anything is written."""
    bad = sorted(set(parts) - set(PARTS))
    if bad or not parts:
        raise SwapError(f"parts={list(parts)}: choose from {list(PARTS)}")
    check_compatible(moe.config, dense.config, allow=allow).raise_for_errors()
    n_layers = moe.config["num_hidden_layers"]
    n_experts = moe.config.get("num_local_experts") or moe.config.get("num_experts")
    if not n_experts:
        raise SwapError(f"{moe.folder}/config.json names no num_local_experts: is it a MoE checkpoint?")
    if not experts or len(set(experts)) != len(experts) or any(not 0 <= e < n_experts for e in experts):
        raise SwapError(f"experts={list(experts)}: give distinct expert indices in 0..{n_experts - 1}")
    chosen_layers = list(range(n_layers)) if layers is None else list(layers)
    if not chosen_layers or any(not 0 <= li < n_layers for li in chosen_layers):
        raise SwapError(f"layers={layers}: give layer indices in 0..{n_layers - 1}")
    inter = moe.config["intermediate_size"]
    patches: list[Patch] = []
    for li in chosen_layers:
        d = f"model.layers.{li}"
        if "mlp" in parts:
            gate, up, down = (dense.require(f"{d}.mlp.{p}.weight") for p in ("gate_proj", "up_proj", "down_proj"))
            layout = _moe_layout(moe, li)
            for e in experts:
                if layout == "legacy":
                    prefix = f"{d}.block_sparse_moe.experts.{e}"
                    for w, src in (("w1", "gate_proj"), ("w3", "up_proj"), ("w2", "down_proj")):
                        patches.append(_whole(moe, dense, f"{prefix}.{w}.weight", f"{d}.mlp.{src}.weight"))
                else:
                    gate_up = moe.require(f"{d}.mlp.experts.gate_up_proj")
                    down_all = moe.require(f"{d}.mlp.experts.down_proj")
                    patches.append(_slice(gate_up, e, (0, inter), gate, dense, f"{gate_up.name}[{e}, :{inter}]"))
                    patches.append(_slice(gate_up, e, (inter, 2 * inter), up, dense, f"{gate_up.name}[{e}, {inter}:]"))
                    patches.append(_slice(down_all, e, None, down, dense, f"{down_all.name}[{e}]"))
            patches += _router_patches(moe, li, experts, router, n_experts)
        if "attention" in parts:
            for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
                patches.append(_whole(moe, dense, f"{d}.self_attn.{proj}.weight"))
                if f"{d}.self_attn.{proj}.bias" in moe.tensors or f"{d}.self_attn.{proj}.bias" in dense.tensors:
                    patches.append(_whole(moe, dense, f"{d}.self_attn.{proj}.bias"))
        if "norms" in parts:
            for norm in ("input_layernorm", "post_attention_layernorm"):
                patches.append(_whole(moe, dense, f"{d}.{norm}.weight"))
    if "norms" in parts:
        patches.append(_whole(moe, dense, "model.norm.weight"))
    if "embeddings" in parts:
        patches.append(_whole(moe, dense, "model.embed_tokens.weight"))
    if "lm_head" in parts:
        if "lm_head.weight" not in moe.tensors and moe.config.get("tie_word_embeddings"):
            raise SwapError("the MoE checkpoint ties lm_head to the embeddings (no lm_head.weight); swap 'embeddings'")
        patches.append(_whole(moe, dense, "lm_head.weight"))
    return patches


def _router_patches(moe: Checkpoint, layer: int, experts: Sequence[int], router: str, n_experts: int) -> list[Patch]:
    if router == "keep":
        return []
    info = moe.require(_router_name(moe, layer))
    hidden = info.shape[1]
    item = _ITEMSIZE[info.dtype]
    row_bytes = hidden * item
    if router == "zero":
        make = lambda: bytes(row_bytes)  # noqa: E731 - zero is all-zero bytes in every float dtype
    elif router == "mean":
        others = [j for j in range(n_experts) if j not in experts]

        def make():
            rows = _to_f32(moe.read(info), info.dtype).reshape(n_experts, hidden)
            return _from_f32(rows[others].mean(0), info.dtype)
    elif router.startswith("copy:") and router[5:].isdigit() and int(router[5:]) < n_experts \
            and int(router[5:]) not in experts:
        j = int(router[5:])
        make = lambda: moe.read(info, j * row_bytes, row_bytes)  # noqa: E731
    else:
        raise SwapError(f"router={router!r}: choose 'keep', 'copy:J' (J not swapped), 'mean' or 'zero'")
    return [Patch(info.file, info.start + e * row_bytes, row_bytes, f"{info.name}[{e}]", f"router:{router}", make)
            for e in experts]


# -- writing -----------------------------------------------------------------------------------
def _write_shard(source: Path, target: Path, patches: list[Patch], progress) -> str:
    """Copy ``source`` to ``target`` in chunks, splicing patches in; returns the sha256."""
    digest = hashlib.sha256()
    size = source.stat().st_size
    with open(source, "rb") as src, open(target, "wb") as out:
        position = 0

        def copy_until(end: int) -> None:
            nonlocal position
            src.seek(position)
            while position < end:
                block = src.read(min(CHUNK, end - position))
                out.write(block)
                digest.update(block)
                position += len(block)
                progress(len(block))

        for patch in sorted(patches, key=lambda p: p.offset):
            copy_until(patch.offset)
            data = patch.produce()
            if len(data) != patch.length:
                raise SwapError(f"internal: {patch.target} expected {patch.length} bytes, got {len(data)}")
            out.write(data)
            digest.update(data)
            position += patch.length
            progress(patch.length)
        copy_until(size)
    return digest.hexdigest()


def swap_checkpoint(moe_dir, dense_dir, out_dir, *, experts: Sequence[int] = (0,), parts: Sequence[str] = ("mlp",),
                    layers: Sequence[int] | None = None, router: str = "keep", allow: Sequence[str] = (),
                    force: bool = False, progress: bool = True) -> dict:
    """Write a swapped copy of the MoE checkpoint to ``out_dir``; returns the manifest.

    Usage: ``swap_checkpoint("mixtral/", "mistral/", "swapped/", experts=[0])``."""
    from . import __version__

    moe, dense = Checkpoint(moe_dir), Checkpoint(dense_dir)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        holds_checkpoint = (out / "config.json").exists() or any(out.glob("*.safetensors"))
        if holds_checkpoint and not force:
            raise SwapError(f"{out} already holds a checkpoint; choose another --out or pass --force to replace it")
        if not holds_checkpoint:
            raise SwapError(f"{out} is not empty and holds no checkpoint; choose an empty or new folder")
    if out.resolve() in (moe.folder.resolve(), dense.folder.resolve()):
        raise SwapError("--out must differ from --moe and --dense")
    patches = plan_swap(moe, dense, list(experts), tuple(parts), layers, router, tuple(allow))

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    total = sum(f.stat().st_size for f in moe.files)
    bar = _progress_bar(total, progress)
    try:
        by_file: dict[Path, list[Patch]] = {}
        for patch in patches:
            by_file.setdefault(patch.file, []).append(patch)
        shards = {f.name: _write_shard(f, staging / f.name, by_file.get(f, []), bar.update) for f in moe.files}
        for item in moe.folder.iterdir():
            if item.is_file() and not item.name.endswith(".safetensors") and item.name != "swap_manifest.json":
                shutil.copy2(item, staging / item.name)
        manifest = {
            "routerscope_version": __version__,
            "moe": str(moe.folder), "dense": str(dense.folder),
            "experts": list(experts), "parts": list(parts),
            "layers": list(range(moe.config["num_hidden_layers"])) if layers is None else list(layers),
            "router": router, "allowed_config_differences": list(allow),
            "changed": [{"tensor": p.target, "from": p.source, "bytes": p.length} for p in patches],
            "shards": {name: {"sha256": digest} for name, digest in shards.items()},
        }
        (staging / "swap_manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        for name in os.listdir(staging):
            os.chmod(staging / name, 0o644)
        os.chmod(staging, 0o755)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        bar.close()
    return manifest


def _progress_bar(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc="routerscope swap", disable=not enabled)
