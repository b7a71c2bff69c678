"""ISA routing: block geometry, coarse (block-pooled) attention and the plan.

Everything here is plain PyTorch and runs on any device and dtype. Both the exact reference
(`reference.py`) and the Triton kernels (`liveditor.kernels`) consume the same `ISAPlan`, so the two
can be compared decision for decision.

Shapes: `q, k, v` are `[B, S, H, D]` with the `num_target` target tokens first. Blocks are numbered
globally: target blocks `0 .. nbt-1`, then context blocks `nbt .. nbt+nbs-1`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import NamedTuple

import torch

from liveditor.isa.config import ISAConfig


def _floor_count(ratio: float, n: int) -> int:
    # floor() with a tolerance so that 0.5 * 6 is 3, not 2 through rounding of the ratio.
    return int(math.floor(ratio * n + 1e-9))


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 inputs are computed in float64; everything else in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# (num_target, num_context, block_size, device) -> (block_start, block_len), and with int32 appended
# to the key, their int32 copies (`BlockGeometry.int32_tensors`).
_GEOMETRY_TENSORS: dict = {}
_GEOMETRY_CACHE_SIZE = 256


@dataclass
class BlockGeometry:
    """Where each block lives in the sequence.

    Attributes:
        num_target, num_context: token counts of the two segments.
        block_size: tokens per full block.
        num_target_blocks, num_context_blocks: `ceil(N / block_size)` per segment.
        block_start: `[nb]` int64, first token of each block.
        block_len: `[nb]` int64, real tokens in each block (the last block of a segment may be partial).
    """

    num_target: int
    num_context: int
    block_size: int
    num_target_blocks: int
    num_context_blocks: int
    block_start: torch.Tensor
    block_len: torch.Tensor

    @property
    def num_blocks(self) -> int:
        return self.num_target_blocks + self.num_context_blocks

    @staticmethod
    def build(num_target: int, num_context: int, block_size: int, device) -> "BlockGeometry":
        """The geometry of one sequence layout. Its tensors are cached per layout and device and
        shared between calls (treat them as read-only): making them anew copies from the host, and
        that copy waits for all queued GPU work, which would stall every attention call."""
        device = torch.device(device)
        key = (num_target, num_context, block_size, device)
        tensors = _GEOMETRY_TENSORS.get(key)
        if tensors is None:
            starts, lens = [], []
            for seg_start, seg_len in ((0, num_target), (num_target, num_context)):
                for off in range(0, seg_len, block_size):
                    starts.append(seg_start + off)
                    lens.append(min(block_size, seg_len - off))
            if len(_GEOMETRY_TENSORS) >= _GEOMETRY_CACHE_SIZE:
                _GEOMETRY_TENSORS.clear()
            tensors = (torch.tensor(starts, dtype=torch.int64, device=device),
                       torch.tensor(lens, dtype=torch.int64, device=device))
            _GEOMETRY_TENSORS[key] = tensors
        return BlockGeometry(
            num_target=num_target,
            num_context=num_context,
            block_size=block_size,
            num_target_blocks=-(-num_target // block_size),
            num_context_blocks=-(-num_context // block_size),
            block_start=tensors[0],
            block_len=tensors[1],
        )

    def int32_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """`(block_start, block_len)` as int32, the kernels' index type; made once per layout and
        device and cached like the tensors themselves (read-only)."""
        key = (self.num_target, self.num_context, self.block_size, self.block_start.device, torch.int32)
        tensors = _GEOMETRY_TENSORS.get(key)
        if tensors is None:
            if len(_GEOMETRY_TENSORS) >= _GEOMETRY_CACHE_SIZE:
                _GEOMETRY_TENSORS.clear()
            tensors = (self.block_start.to(torch.int32), self.block_len.to(torch.int32))
            _GEOMETRY_TENSORS[key] = tensors
        return tensors

    def token_block(self) -> torch.Tensor:
        """`[S]` int64: the global block index of every token."""
        return torch.repeat_interleave(
            torch.arange(self.num_blocks, device=self.block_len.device), self.block_len
        )


def pool_blocks(x: torch.Tensor, geom: BlockGeometry) -> torch.Tensor:
    """Per-block sums of `x` `[B, S, H, D]` -> `[B, H, nb, D]` in the accumulation dtype."""
    B, _, H, D = x.shape
    acc = accumulation_dtype(x.dtype)
    bs = geom.block_size
    parts = []
    for seg_start, seg_len in ((0, geom.num_target), (geom.num_target, geom.num_context)):
        if seg_len == 0:
            continue
        n_full = seg_len // bs
        if n_full:
            body = x[:, seg_start : seg_start + n_full * bs].reshape(B, n_full, bs, H, D)
            parts.append(body.sum(2, dtype=acc))
        if seg_len % bs:
            tail = x[:, seg_start + n_full * bs : seg_start + seg_len]
            parts.append(tail.sum(1, keepdim=True, dtype=acc))
    if not parts:
        return x.new_zeros((B, H, 0, D), dtype=acc)
    return torch.cat(parts, dim=1).permute(0, 2, 1, 3)


@dataclass
class CoarseAttention:
    """Block-pooled attention, shared by planning and by the `gate * out_c` shortcut.

    Attributes:
        q_mean, k_mean, v_mean: `[B, H, nb, D]` block means (accumulation dtype).
        v_sum: `[B, H, nb, D]` block sums of v (the numerator of a centroid term).
        probs: `[B, H, nb, nb]` `softmax(q_mean k_mean^T * scale)`.
        out: `[B, H, nb, D]` `probs @ v_mean`.
    """

    q_mean: torch.Tensor
    k_mean: torch.Tensor
    v_mean: torch.Tensor
    v_sum: torch.Tensor
    probs: torch.Tensor
    out: torch.Tensor


def coarse_probs(q_mean: torch.Tensor, k_mean: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Step 2's `P_c = softmax(q_mean k_mean^T * scale)`, `[B, H, nb, nb]`; scale `1/sqrt(D)` by default."""
    if scale is None:
        scale = 1.0 / math.sqrt(q_mean.shape[-1])
    # Scaling the [nb, D] means rather than the [nb, nb] logits saves a pass over the largest tensor.
    return torch.softmax((q_mean * scale) @ k_mean.transpose(-1, -2), dim=-1)


def coarse_attention(q, k, v, geom: BlockGeometry, scale: float) -> CoarseAttention:
    """Steps 1 and 2 of the contract."""
    counts = geom.block_len.to(accumulation_dtype(q.dtype)).view(1, 1, -1, 1)
    q_mean = pool_blocks(q, geom) / counts
    k_mean = pool_blocks(k, geom) / counts
    v_sum = pool_blocks(v, geom)
    v_mean = v_sum / counts
    probs = coarse_probs(q_mean, k_mean, scale)
    return CoarseAttention(q_mean, k_mean, v_mean, v_sum, probs, probs @ v_mean)


def _other_slots(slots: torch.Tensor, n: int) -> torch.Tensor:
    """`[..., n - k]` the positions in `[0, n)` absent from `slots` `[..., k]` (distinct), ascending."""
    is_other = torch.ones((*slots.shape[:-1], n), dtype=torch.int8, device=slots.device).scatter_(-1, slots.long(), 0)
    return torch.sort(is_other, dim=-1, descending=True, stable=True).indices[..., : n - slots.shape[-1]]


def exact_kv_slots(kv_blocks: torch.Tensor, taylor_exact_kv_blocks: torch.Tensor, num_blocks: int) -> torch.Tensor:
    """`[B, H, n_taylor, n_exact]` int64: the KV-set slot (position in `kv_blocks` `[B, H, n_kv]`)
    of every exact block in `taylor_exact_kv_blocks` (block indices below `num_blocks`)."""
    B, H, n_kv = kv_blocks.shape
    slot_of = torch.full((B, H, max(num_blocks, 1)), -1, dtype=torch.int64, device=kv_blocks.device)
    slot_of.scatter_(2, kv_blocks.long(), torch.arange(n_kv, device=kv_blocks.device).expand(B, H, n_kv))
    return slot_of.gather(2, taylor_exact_kv_blocks.reshape(B, H, -1).long()).view(taylor_exact_kv_blocks.shape)


def centroid_kv_blocks(kv_blocks: torch.Tensor, taylor_exact_kv_blocks: torch.Tensor, num_blocks: int) -> torch.Tensor:
    """`[B, H, n_taylor, n_kv - n_exact]` int32: for each Taylor query block, the KV-set blocks it
    does not attend exactly (in KV-set order, which is ascending), from `kv_blocks` `[B, H, n_kv]`
    and `taylor_exact_kv_blocks` `[B, H, n_taylor, n_exact]` (block indices below `num_blocks`)."""
    B, H, n_kv = kv_blocks.shape
    n_taylor = taylor_exact_kv_blocks.shape[2]
    others = _other_slots(exact_kv_slots(kv_blocks, taylor_exact_kv_blocks, num_blocks), n_kv)
    return kv_blocks.long().unsqueeze(2).expand(B, H, n_taylor, n_kv).gather(-1, others).to(torch.int32)


class _DerivedCentroids:
    """`ISAPlan.taylor_centroid_kv_blocks`: the tensor given at construction, or, when none was
    given, `centroid_kv_blocks(...)` made on first read and kept. The Triton planner leaves it out:
    no kernel reads it, and it is the plan's largest tensor."""

    def __set_name__(self, owner, name):
        self.slot = "_" + name

    def __get__(self, obj, owner=None):
        if obj is None:
            return None  # the dataclass field's default
        value = obj.__dict__.get(self.slot)
        if value is None:
            value = centroid_kv_blocks(obj.kv_blocks, obj.taylor_exact_kv_blocks, obj.geometry.num_blocks)
            obj.__dict__[self.slot] = value
        return value

    def __set__(self, obj, value):
        obj.__dict__[self.slot] = value


def _top_indices(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the `count` largest entries along the last dim, ties toward the lower index,
    returned in ascending index order."""
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :count]
    return torch.sort(order, dim=-1).values


@dataclass
class ISAPlan:
    """Routing decisions of ISA for one `(q, k, num_target)`; reusable across calls.

    All block indices are global (target blocks first, then context blocks), int32, and sorted
    ascending within their last dimension.

    Attributes:
        geometry: block geometry (segment sizes, block starts and lengths).
        kept_context_blocks: `[B, H, n_keep]` context blocks kept by pre-selection.
        kv_blocks: `[B, H, n_kv]` the attended KV set: every target block, then the kept context blocks.
        full_query_blocks: `[B, H, n_full]` query blocks that take exact attention over the KV set.
        taylor_query_blocks: `[B, H, n_taylor]` all other query blocks (0-th order Taylor path).
        taylor_exact_kv_blocks: `[B, H, n_taylor, n_exact]` KV blocks each Taylor query block
            attends exactly.
        context_saliency: `[B, H, nbs]` coarse probability mass the target puts on each context block.
        query_sharpness: `[B, H, nb]` the routing score of each query block.
        taylor_centroid_kv_blocks: `[B, H, n_taylor, n_kv - n_exact]` the rest of the KV set, which
            each Taylor query block sees as one centroid term per block. Optional at construction:
            when left out, it is derived from the two above on first read (`centroid_kv_blocks`).
    """

    geometry: BlockGeometry
    kept_context_blocks: torch.Tensor
    kv_blocks: torch.Tensor
    full_query_blocks: torch.Tensor
    taylor_query_blocks: torch.Tensor
    taylor_exact_kv_blocks: torch.Tensor
    context_saliency: torch.Tensor
    query_sharpness: torch.Tensor
    taylor_centroid_kv_blocks: torch.Tensor | None = _DerivedCentroids()

    @property
    def batch_heads(self) -> tuple[int, int]:
        return tuple(self.kv_blocks.shape[:2])

    def describe(self) -> dict:
        """Counts, for logs and reports."""
        g = self.geometry
        return {
            "num_target": g.num_target,
            "num_context": g.num_context,
            "num_blocks": g.num_blocks,
            "kept_context_blocks": self.kept_context_blocks.shape[-1],
            "kv_blocks": self.kv_blocks.shape[-1],
            "full_query_blocks": self.full_query_blocks.shape[-1],
            "taylor_query_blocks": self.taylor_query_blocks.shape[-1],
            "taylor_exact_kv_blocks": self.taylor_exact_kv_blocks.shape[-1],
        }

    def repeat_batch(self, groups: int) -> "ISAPlan":
        """The plan for a batch of `groups` copies of these inputs (`[B, ...]` -> `[groups * B, ...]`,
        the same decisions for each copy)."""
        values = {}
        for f in fields(self):
            value = self.__dict__.get("_" + f.name) if f.name == "taylor_centroid_kv_blocks" else getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                value = value.repeat(groups, *([1] * (value.dim() - 1)))
            values[f.name] = value
        return ISAPlan(**values)

    def to(self, device) -> "ISAPlan":
        values = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                value = value.to(device)
            elif isinstance(value, BlockGeometry):
                value = BlockGeometry(
                    **{
                        gf.name: (getattr(value, gf.name).to(device) if isinstance(getattr(value, gf.name), torch.Tensor) else getattr(value, gf.name))
                        for gf in fields(value)
                    }
                )
            values[f.name] = value
        return ISAPlan(**values)


def context_coverage(plans) -> torch.Tensor:
    """`[B]` float32: the fraction of context blocks that at least one of `plans` keeps for at least one head.

    `plans` are the per-block plans of one model forward (`EditorDiT(..., return_plans=True)`; `ISAPlan`
    or the release rules' `ReleasePlan`, same batch and layout; None entries, from dense blocks, are
    skipped). A context block that no (block, head) keeps never reaches a query exactly in that forward:
    only its mean does, through the coarse term `out_c`. With `L` blocks of `H` heads each keeping
    `n_keep` of `nbs` context blocks, coverage is at most `min(1, L * H * n_keep / nbs)`.
    """
    plans = [p for p in plans if p is not None]
    if not plans:
        raise ValueError("context_coverage: no ISA plans (every block ran dense attention)")
    B, _, nbs = plans[0].context_saliency.shape
    device = plans[0].kept_context_blocks.device
    covered = torch.zeros(B, nbs, dtype=torch.bool, device=device)
    for plan in plans:
        if tuple(plan.context_saliency.shape[::2]) != (B, nbs):
            raise ValueError(f"context_coverage: plans of different layouts ({B} x {nbs} context blocks, then "
                             f"{tuple(plan.context_saliency.shape[::2])})")
        kept = plan.kept_context_blocks.long().reshape(B, -1)
        if isinstance(plan, ISAPlan):  # global block numbers: the context's start after the target blocks
            kept = kept - plan.geometry.num_target_blocks
        covered.scatter_(1, kept, True)
    return covered.float().mean(dim=1) if nbs else torch.zeros(B, device=device)  # no context: nothing to cover


class PlanCounts(NamedTuple):
    """How many blocks each step of the contract picks (the same for every batch element and head)."""

    n_keep: int  # kept context blocks (step 3)
    n_kv: int  # KV set: every target block, then the kept context blocks
    n_sharp: int  # top target blocks summed into a query block's sharpness (step 4)
    n_full: int  # full query blocks (step 5)
    n_exact: int  # exactly attended KV blocks of a Taylor query block (step 6)


def plan_counts(geom: BlockGeometry, cfg: ISAConfig) -> PlanCounts:
    nbt, nbs = geom.num_target_blocks, geom.num_context_blocks
    n_keep = max(1, _floor_count(cfg.context_keep_ratio, nbs)) if nbs else 0
    n_kv = nbt + n_keep
    return PlanCounts(
        n_keep=n_keep,
        n_kv=n_kv,
        n_sharp=min(nbt, max(1, _floor_count(cfg.exact_kv_ratio, nbt))),
        n_full=_floor_count(cfg.full_query_ratio, geom.num_blocks),
        n_exact=min(n_kv, max(1, _floor_count(cfg.exact_kv_ratio, n_kv))),
    )


def make_plan(coarse: CoarseAttention, geom: BlockGeometry, cfg: ISAConfig) -> ISAPlan:
    """Steps 3 to 6 of the contract, from the coarse attention."""
    probs, q_mean, k_mean = coarse.probs, coarse.q_mean, coarse.k_mean
    B, H, nb, _ = probs.shape
    nbt = geom.num_target_blocks
    device = probs.device

    # 3. context pre-selection by the coarse probability mass the target queries put on each block.
    saliency = probs[:, :, :nbt, nbt:].sum(2)
    counts = plan_counts(geom, cfg)
    kept = _top_indices(saliency, counts.n_keep) + nbt
    target_blocks = torch.arange(nbt, device=device).expand(B, H, nbt)
    kv_blocks = torch.cat([target_blocks, kept], dim=-1)
    n_kv = kv_blocks.shape[-1]

    # 4. sharpness: mass of each query block's top target blocks.
    if counts.n_sharp:
        sharpness = torch.topk(probs[..., :nbt], counts.n_sharp, dim=-1).values.sum(-1)
    else:
        sharpness = probs.new_zeros((B, H, nb))

    # 5. routing: the sharpest query blocks take the full path.
    n_full = counts.n_full
    order = torch.sort(sharpness, dim=-1, descending=True, stable=True).indices
    full = torch.sort(order[..., :n_full], dim=-1).values
    taylor = torch.sort(order[..., n_full:], dim=-1).values

    # 6. Taylor blocks: exact attention to the KV blocks with the largest q_c . k_c.
    n_exact = counts.n_exact
    tq = q_mean.gather(2, taylor.unsqueeze(-1).expand(-1, -1, -1, q_mean.shape[-1]))
    kv_k = k_mean.gather(2, kv_blocks.unsqueeze(-1).expand(-1, -1, -1, k_mean.shape[-1]))
    affinity = tq @ kv_k.transpose(-1, -2)  # [B, H, n_taylor, n_kv]
    exact_pos = _top_indices(affinity, n_exact)
    centroid_pos = _other_slots(exact_pos, n_kv)
    expand_kv = kv_blocks.unsqueeze(2).expand(-1, -1, taylor.shape[-1], -1)
    exact_blocks = expand_kv.gather(-1, exact_pos)
    centroid_blocks = expand_kv.gather(-1, centroid_pos)

    i32 = torch.int32
    return ISAPlan(
        geometry=geom,
        kept_context_blocks=kept.to(i32),
        kv_blocks=kv_blocks.to(i32).contiguous(),
        full_query_blocks=full.to(i32).contiguous(),
        taylor_query_blocks=taylor.to(i32).contiguous(),
        taylor_exact_kv_blocks=exact_blocks.to(i32).contiguous(),
        taylor_centroid_kv_blocks=centroid_blocks.to(i32).contiguous(),
        context_saliency=saliency,
        query_sharpness=sharpness,
    )
