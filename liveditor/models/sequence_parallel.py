"""Ulysses sequence parallelism for the editor DiT.

A group of `P` ranks holds one sample's tokens in `P` contiguous shards (the sequence padded to a
multiple of `P`). Everything in a block is per token (norms, modulation, projections, cross-attention,
MLP) and runs on the shard, except self-attention, which needs every token: before it an all-to-all
turns `[B, S/P, H, D]` (all heads of a shard) into `[B, S, H/P, D]` (all tokens of `H/P` heads), the
attention (ISA or dense, unchanged: ISA's routing is per head) runs on the rank's heads, and a second
all-to-all turns the output back. ISA's per-token gate is all-gathered. After the last block each rank
applies the head to its shard and the output is all-gathered, so every rank returns the whole
prediction.

Gradients: each rank's parameter gradients are its tokens' (and heads') contributions, so they are
summed over the group (`reduce_gradients`, or DDP across data-parallel groups with the loss scaled
by `P`). The final gather treats the prediction as replicated: every rank computes the same loss from
it, so its backward hands each rank the gradient of its own shard only.

    sp = SequenceParallel(group)          # a torch.distributed process group of P ranks
    model.enable_sequence_parallel(sp)    # every rank of the group: same weights, same inputs
    out = model(latents, t, text, source) # the whole prediction on every rank
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist


class SequenceParallel:
    """A sequence-parallel group and the collectives the DiT needs. `real_length` is the unpadded
    token count of the forward in progress (set by `EditorDiT.forward`)."""

    def __init__(self, group: Optional[dist.ProcessGroup] = None):
        self.group = group if group is not None else dist.group.WORLD
        self.size = dist.get_world_size(self.group)
        self.rank = dist.get_rank(self.group)
        self.real_length = 0

    def padded_length(self, length: int) -> int:
        return -(-length // self.size) * self.size

    def shard(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """This rank's contiguous shard of `x` along `dim`, after zero-padding it to a multiple of P."""
        length = x.shape[dim]
        pad = self.padded_length(length) - length
        if pad:
            shape = list(x.shape)
            shape[dim] = pad
            x = torch.cat([x, x.new_zeros(shape)], dim=dim)
        return x.chunk(self.size, dim=dim)[self.rank].contiguous()

    def seq_to_heads(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, S/P, H, D]` -> `[B, S, H/P, D]` (the padding dropped)."""
        import torch.distributed.nn.functional as dnn

        if x.shape[2] % self.size:
            raise ValueError(f"sequence parallelism of degree {self.size} needs the heads ({x.shape[2]}) to divide by it")
        parts = dnn.all_to_all([torch.empty_like(p) for p in x.chunk(self.size, dim=2)],
                               [p.contiguous() for p in x.chunk(self.size, dim=2)], group=self.group)
        return torch.cat(parts, dim=1)[:, : self.real_length]

    def heads_to_seq(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, S, H/P, D]` -> `[B, S/P, H, D]` (padded back)."""
        import torch.distributed.nn.functional as dnn

        pad = self.padded_length(x.shape[1]) - x.shape[1]
        if pad:
            x = torch.cat([x, x.new_zeros(x.shape[0], pad, *x.shape[2:])], dim=1)
        chunks = [c.contiguous() for c in x.chunk(self.size, dim=1)]
        parts = dnn.all_to_all([torch.empty_like(c) for c in chunks], chunks, group=self.group)
        return torch.cat(parts, dim=2)

    def gather_partial(self, x: torch.Tensor) -> torch.Tensor:
        """All shards `[B, S/P, ...]` -> `[B, S, ...]` for a tensor each rank uses differently (its
        gradient is summed over the group): the ISA gate."""
        import torch.distributed.nn.functional as dnn

        return torch.cat(dnn.all_gather(x.contiguous(), group=self.group), dim=1)[:, : self.real_length]

    def gather_replicated(self, x: torch.Tensor) -> torch.Tensor:
        """All shards `[B, S/P, ...]` -> `[B, S, ...]` for a result every rank then uses identically
        (the prediction): the backward keeps this rank's shard of the gradient, unsummed."""
        return _GatherReplicated.apply(x.contiguous(), self)[:, : self.real_length]

    def reduce_gradients(self, module: torch.nn.Module) -> None:
        """Sum the parameters' gradients over the group (without a data-parallel wrapper)."""
        for p in module.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad, group=self.group)


class _GatherReplicated(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, sp: SequenceParallel):
        ctx.sp = sp
        parts = [torch.empty_like(x) for _ in range(sp.size)]
        dist.all_gather(parts, x, group=sp.group)
        return torch.cat(parts, dim=1)

    @staticmethod
    def backward(ctx, grad):
        sp = ctx.sp
        return grad.chunk(sp.size, dim=1)[sp.rank].contiguous(), None
