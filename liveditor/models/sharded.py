"""Building an editor DiT per rank: each rank holds, and reads from the checkpoint, only its partition.

ZeRO-3 (DeepSpeed) splits every parameter, flattened row-major, into `world` equal parts padded at
the end: `size = ceil(numel / world)` elements each, rank `r` keeping elements `[r * size, (r + 1) * size)`
(`partition_range`). Loading a checkpoint that way, a rank reads from each shard only the bytes
of its part of each tensor (`CheckpointReader.read_flat`), so its
host memory holds about `1 / world` of the model instead of all of it.

- `read_rank_partitions(model, path, rank, world)`: the rank's partition of every parameter, as flat
  tensors, for a model that may live on the meta device (no DeepSpeed needed).
- `load_zero3_partitions(model, path)`: fills a model built under `deepspeed.zero.Init` (its
  parameters already partitioned, `param.ds_tensor` being the rank's part) in place.
- `build_editor_partitioned(cfg, weights)`: the model under an active `deepspeed.zero.Init` (what
  Lightning's ZeRO-3 strategy wraps `LightningModule.configure_model` in), built one module at a time
  and partitioned as it goes, then loaded partition by partition; without ZeRO-3, `build_editor`.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from liveditor.models.loading import CheckpointReader, LoadReport, PathLike, build_editor, match_checkpoint

# An editor parameter a plain Wan checkpoint lacks starts as a copy of this Wan parameter (same shape,
# so the same partition); the others (the `alpha` gates) start at zero. As `EditorDiT.init_editor_parameters`.
_EDITOR_COPIED_FROM = {
    "source_video_embedding_more_memory.weight": "patch_embedding.weight",
    "source_video_embedding_more_memory.bias": "patch_embedding.bias",
}


def partition_range(numel: int, rank: int, world: int) -> tuple[int, int, int]:
    """ZeRO-3's partition of a tensor of `numel` elements: `(start, stop, size)`; the rank keeps
    flat elements `[start, stop)` followed by `size - (stop - start)` elements of padding."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in a world of {world}")
    size = -(-numel // world)
    start = min(rank * size, numel)
    return start, min(start + size, numel), size


def _cpu_zeros(n: int, dtype: torch.dtype) -> torch.Tensor:
    """Zeros of `dtype` on the CPU, also inside `deepspeed.zero.Init` (whose `torch.zeros` casts every
    float tensor to the model's dtype and places it on the accelerator; tensor methods are left alone)."""
    return torch.empty(0, dtype=torch.uint8, device="cpu").new_zeros(n, dtype=dtype)


def read_partition(reader: CheckpointReader, key: str, rank: int, world: int, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """The rank's ZeRO-3 partition of checkpoint tensor `key`: `[size]` in `dtype`, padding zeroed."""
    start, stop, size = partition_range(math.prod(reader.shape(key)), rank, world)
    part = reader.read_flat(key, start, stop)
    out = _cpu_zeros(size, dtype or part.dtype)
    out[: stop - start] = part
    return out


def _partitions(reader: CheckpointReader, specs: dict, strict: bool):
    """(report, iterator of (key, partition)) for `specs`: key -> (shape, dtype, rank, world)."""
    report = match_checkpoint(reader, {k: shape for k, (shape, _, _, _) in specs.items()}, strict)
    initialised = set(report.initialised)

    def parts():
        for key, (shape, dtype, rank, world) in specs.items():
            if key in reader:
                yield key, read_partition(reader, key, rank, world, dtype)
            elif key in initialised:
                source = _EDITOR_COPIED_FROM.get(key)
                if source is not None:
                    yield key, read_partition(reader, source, rank, world, dtype)
                else:
                    yield key, _cpu_zeros(partition_range(math.prod(shape), rank, world)[2], dtype)

    return report, parts()


def read_rank_partitions(model: torch.nn.Module, path: PathLike, rank: int, world: int, strict: bool = True) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Rank `rank`'s ZeRO-3 partition of each of `model`'s parameters, read from checkpoint `path`.

    `model` gives names, shapes and dtypes only (build it on the meta device). Keys, layouts and
    errors are `load_editor_weights`'s; editor parameters a plain Wan checkpoint lacks get their
    initial values' partitions. Returns `({name: flat [size] tensor}, report)`, the report counting
    the bytes this rank read.
    """
    specs = {name: (tuple(p.shape), p.dtype, rank, world) for name, p in model.named_parameters()}
    with CheckpointReader(path) as reader:
        report, parts = _partitions(reader, specs, strict)
        result = dict(parts)
        report.bytes_read, report.tensors_read = reader.bytes_read, reader.tensors_read
    return result, report


def is_zero3_partitioned(model: torch.nn.Module) -> bool:
    """Whether `model` was built under `deepspeed.zero.Init` (its parameters carry `ds_tensor`)."""
    return any(hasattr(p, "ds_tensor") for p in model.parameters())


def zero3_init_active() -> bool:
    """Whether a `deepspeed.zero.Init` context is open (modules created now are partitioned)."""
    import sys

    module = sys.modules.get("deepspeed.runtime.zero.partition_parameters")
    return bool(module is not None and getattr(module, "zero_init_context", 0))


def load_zero3_partitions(model: torch.nn.Module, path: PathLike, strict: bool = True) -> LoadReport:
    """Load checkpoint `path` into a model built under `deepspeed.zero.Init`, each rank reading only
    its partition of each tensor straight into `param.ds_tensor` (call it on every rank, before
    `deepspeed.initialize`, which then takes the partitions as they are)."""
    import torch.distributed as dist

    specs, targets = {}, {}
    for name, p in model.named_parameters():
        if hasattr(p, "ds_tensor"):
            group = p.ds_process_group
            specs[name] = (tuple(p.ds_shape), p.ds_tensor.dtype, dist.get_rank(group), dist.get_world_size(group))
            targets[name] = p.ds_tensor
        else:  # not partitioned: the whole tensor
            specs[name] = (tuple(p.shape), p.dtype, 0, 1)
            targets[name] = p.data
    with CheckpointReader(path) as reader:
        report, parts = _partitions(reader, specs, strict)
        with torch.no_grad():
            for name, part in parts:
                target = targets[name]
                target.view(-1).copy_(part[: target.numel()])
        report.bytes_read, report.tensors_read = reader.bytes_read, reader.tensors_read
    return report


def build_editor_partitioned(cfg, weights: Optional[PathLike] = None, strict: bool = True):
    """An `EditorDiT` for training under ZeRO-3 without the whole model on any rank.

    Call it inside `deepspeed.zero.Init` (Lightning's ZeRO-3 strategy runs `configure_model` there):
    each module is created, then partitioned at once, and `weights` is read partition by partition
    (`load_zero3_partitions`); DeepSpeed decides the parameters' dtype. Outside ZeRO-3 it is
    `build_editor(cfg, weights)` (the whole model, built from the meta device when loading).
    Returns `(model, LoadReport or None)`.
    """
    from liveditor.models.dit import EditorDiT

    if not zero3_init_active():
        return build_editor(cfg, weights, strict=strict)
    model = EditorDiT(cfg, init_weights=weights is None)
    report = load_zero3_partitions(model, weights, strict=strict) if weights is not None else None
    return model.eval(), report
