"""Exponential moving average of the trainable parameters: `ema = decay * ema + (1 - decay) * p`.

Shadows are float32, beside the values they follow. Under DeepSpeed ZeRO-3 a rank holds only its
partition of each parameter (`param.ds_tensor`, on the GPU or, with parameter offload, in CPU
memory), and so does its shadow: each rank averages its own partition, and the EMA costs
`1 / world size` of the full float32 copy per rank, as the optimizer states do.

Checkpoints always hold full tensors, whatever the strategy, so `liveditor-export --ema` and a resume
at another world size read them alike. Under ZeRO-3, `state_dict` gathers the partitions onto rank 0
(a collective: every rank calls it, as Lightning's checkpointing does; DeepSpeed writes rank 0's
client state) and `load_state_dict` cuts each rank's partition out of the full tensors.

ZeRO-3's layout, from DeepSpeed's `partition_parameters.py` (`Init._partition_param`): a parameter
of `ds_numel` elements is flattened, padded with zeros to a multiple of the partition group's size
`W`, and rank `r` of that group holds elements `[r * P, (r + 1) * P)`, `P = ceil(ds_numel / W)`, as
the 1-D `ds_tensor`; the group is `ds_process_group` (the data-parallel group unless hpZ/MiCS
partition within nodes).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist


def is_partitioned(p: torch.nn.Parameter) -> bool:
    """Whether `p` is a DeepSpeed ZeRO-3 parameter (its values live in `p.ds_tensor`)."""
    return getattr(p, "ds_tensor", None) is not None and hasattr(p, "ds_numel")


def _local(p: torch.nn.Parameter) -> torch.Tensor:
    """The values this rank holds of `p`: its ZeRO-3 partition, or the whole parameter."""
    return p.ds_tensor if is_partitioned(p) else p


def _group_of(p: torch.nn.Parameter):
    return getattr(p, "ds_process_group", None)


def _comm_device(group) -> torch.device:
    """Where a collective of `group` wants its tensors: NCCL takes CUDA tensors, gloo CPU ones."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_partition(local: torch.Tensor, numel: int, shape, group=None) -> Optional[torch.Tensor]:
    """The full float32 CPU tensor of shape `shape` from every rank's partition `local` (1-D, `P`
    elements each, zero-padded at the end) on the group's first rank; None on the others."""
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    device = _comm_device(group)
    piece = local.detach().to(device, torch.float32).contiguous()
    parts = [torch.empty_like(piece) for _ in range(world)] if rank == 0 else None
    dist.gather(piece, parts, dst=dist.get_global_rank(group, 0) if group is not None else 0, group=group)
    if rank != 0:
        return None
    return torch.cat(parts)[:numel].view(tuple(shape)).cpu()


def partition_of(full: torch.Tensor, partition_numel: int, rank: int) -> torch.Tensor:
    """Rank `rank`'s 1-D partition of `full` in ZeRO-3's layout (zero-padded at the end)."""
    start = rank * partition_numel
    flat = full.reshape(-1)
    out = torch.zeros(partition_numel, dtype=full.dtype)
    n = max(0, min(partition_numel, flat.numel() - start))
    out[:n] = flat[start:start + n]
    return out


class EMA:
    """Float32 shadows of `model`'s trainable parameters (of this rank's partitions under ZeRO-3), by name."""

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must lie in (0, 1), got {decay}")
        self.decay = float(decay)
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.partitioned = any(is_partitioned(p) for _, p in trainable)
        self.shadow = {n: _local(p).detach().float().clone() for n, p in trainable}
        self.updates = 0

    def _params(self, model: torch.nn.Module) -> dict:
        params = dict(model.named_parameters())
        return {n: params[n] for n in self.shadow}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        params = self._params(model)
        names = list(self.shadow)
        shadows = [self.shadow[n] for n in names]
        current = [_local(params[n]).detach().to(self.shadow[n].device, torch.float32) for n in names]
        torch._foreach_lerp_(shadows, current, 1.0 - self.decay)
        self.updates += 1

    def state_dict(self, model: Optional[torch.nn.Module] = None) -> dict:
        """`{"decay", "updates", "shadow": {name: full float32 CPU tensor}}`. Under ZeRO-3 (pass the
        model: it knows each parameter's full shape and group) every rank must call this; rank 0 gets
        the full tensors, the others an empty `shadow`."""
        if not self.partitioned:
            shadow = {n: t.cpu() for n, t in self.shadow.items()}
        else:
            if model is None:
                raise ValueError("EMA.state_dict: under ZeRO-3 the model is needed to gather the partitions")
            shadow = {}
            for n, p in self._params(model).items():
                full = (gather_partition(self.shadow[n], p.ds_numel, p.ds_shape, _group_of(p)) if is_partitioned(p)
                        else self.shadow[n].cpu())
                if full is not None:
                    shadow[n] = full
        return {"decay": self.decay, "updates": self.updates, "shadow": shadow}

    def load_state_dict(self, state: dict, model: Optional[torch.nn.Module] = None) -> None:
        """Load full tensors (from any strategy's checkpoint); under ZeRO-3 (pass the model) each
        rank keeps its partition of them."""
        missing = sorted(set(self.shadow) - set(state["shadow"]))
        if missing:
            raise KeyError(f"the checkpoint's EMA lacks {len(missing)} trainable parameters, e.g. {missing[:3]}")
        if self.partitioned and model is None:
            raise ValueError("EMA.load_state_dict: under ZeRO-3 the model is needed to cut the partitions")
        params = self._params(model) if model is not None else {}
        for n, t in state["shadow"].items():
            if n not in self.shadow:
                continue
            p = params.get(n)
            if p is not None and is_partitioned(p):
                t = partition_of(t.float(), self.shadow[n].numel(), dist.get_rank(_group_of(p)))
            self.shadow[n].copy_(t.reshape(self.shadow[n].shape))
        self.updates = int(state.get("updates", 0))

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        """Write the averages into `model`'s parameters (their ZeRO-3 partitions), in their dtype."""
        for n, p in self._params(model).items():
            local = _local(p)
            local.copy_(self.shadow[n].to(local.dtype))

    @torch.no_grad()
    def backup(self, model: torch.nn.Module) -> dict:
        """Copies of the values `copy_to` overwrites (this rank's partitions under ZeRO-3), for `restore`."""
        return {n: _local(p).detach().clone() for n, p in self._params(model).items()}

    @torch.no_grad()
    def restore(self, model: torch.nn.Module, saved: dict) -> None:
        for n, p in self._params(model).items():
            _local(p).copy_(saved[n])
