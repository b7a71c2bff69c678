"""ISA under the release's rules (`ISAConfig(compat="release")`) on the Triton kernels, forward.

The torch statement is `liveditor/isa/release.py`; this file maps each of its rules onto the
kernels that run DESIGN.md's rules (`kernels/isa_function.py`), so that the heavy work, the
attention over kept blocks, runs in those kernels:

* **Blocks of the concatenated sequence.** The release cuts `[target, source]`, zero-padded, into
  `NB = ceil(S / 64)` blocks; only the last is partial. That is `BlockGeometry` with
  `num_target = 64 * (Nt // 64)` (`release_geometry`): whole target blocks, then blocks of 64 from
  there on, the first of which straddles the boundary when `Nt % 64 != 0`. The block means, the
  coarse attention, `gate * out_c`, the saliency, the sharpness and the routing are then the
  default planner's steps on this geometry (Triton pooling and `topk_select`); the release keeps
  `floor(context_keep_ratio * nbs)` source blocks (none below 8) in descending saliency.
* **The KV sequence** (the `Nt` target tokens, then the 64 rows of each kept block of the padded
  sequence, in kept order, zero-padded to `NKV` blocks of 64) is written once into a buffer
  `[2, B, NKV * 64, H, D]` (`kv_sequence_buffer`): the whole target blocks by the pooling kernel
  while it reads k and v for their means (as the default path fills the dense call's KV set),
  the last `Nt % 64` target tokens by a copy, the kept blocks by `gather_blocks` (a kept last block
  brings its zero padding), zeros after. A kept straddling block brings its target tokens in a
  second time, as in the release.
* **Padding keys are logit-0 tokens.** In the buffer they are rows of zeros, so no kernel masks
  them: the kernels read k and v from the buffer with a KV geometry of their own (`kv_geometry`
  of `launch_isa_fwd` and of the Gluon Taylor launch: whole blocks of 64 from row 0), and a zero
  key gives logit 0 and a zero value, as in the release. The full path attends the buffer's first
  `Tkv = Nt + 64 * n_keep` rows (one cuDNN call over them, or the Triton kernel with the KV
  geometry ending at `Tkv`); the Taylor path attends whole buffer blocks, padding included.
* **Taylor centroids over padded blocks.** The release's centroid of KV block `m` has key
  `sum(k) / 64`, count 64 and value sum `sum(v)`: the kernels' centroid term with mean
  `sum / 64` and count 64. The whole target blocks' means are the pooled block means; the blocks
  from `Nt // 64` on (the straddling and kept ones, about 12% of the buffer) are pooled from the
  buffer. A Taylor query block's exact KV blocks are the top `max(1, floor(exact_kv_ratio * NKV))`
  by `sum(q) . sum(k)` (`topk_select`).

What is exact: given the same plan, the output equals the torch statement up to the rounding of
the attention dtype (the kernels accumulate in fp32, as the default rules' kernels do); the plan
this file makes takes the statement's decisions from scores computed in another order (block means
from the pooling kernel, sharpness sums of `topk_select`), so two near-tied blocks may be ranked the
other way round, each decision still a correct top-k of its scores (tests/test_isa_release_triton.py).

The backward is the torch statement's, recomputed (`_ReleaseTritonAttention`): correct, not fast.
"""

from __future__ import annotations

import contextlib
import math
from typing import Optional

import torch

from liveditor.isa.config import ISAConfig
from liveditor.isa.plan import BlockGeometry, coarse_probs
from liveditor.isa.release import ReleaseCounts, ReleasePlan, _check_release_plan, release_counts, release_isa_attention
from liveditor.kernels import taylor_gluon
from liveditor.kernels.centroids import centroid_terms
from liveditor.kernels.dense import dense_attention_with_lse
from liveditor.kernels.gather import gather_blocks
from liveditor.kernels.isa_function import (
    _gate_table,
    block_means,
    dense_side_stream,
    resolve_full_path,
    tf32_matmuls,
)
from liveditor.kernels.isa_fwd import DEFAULT_TUNING, ForwardTuning, MergeRows, launch_isa_fwd
from liveditor.kernels.pool import pool_blocks_many
from liveditor.kernels.select import topk_select


def release_geometry(num_target: int, num_context: int, block_size: int, device) -> BlockGeometry:
    """The release's blocks as a `BlockGeometry`: `Nt // bs` whole target blocks, then blocks of `bs`
    from token `bs * (Nt // bs)` on (the first straddles the boundary when `Nt % bs != 0`; only the
    sequence's last block may be partial). Cached like every geometry."""
    whole = num_target // block_size * block_size
    return BlockGeometry.build(whole, num_target + num_context - whole, block_size, device)


def kv_sequence_buffer(k: torch.Tensor, counts: ReleaseCounts, block_size: int, n: int = 2) -> torch.Tensor:
    """A new `[n, B, NKV * bs, H, D]` buffer in k's dtype for the release's KV sequence of k (and v)."""
    B, _, H, D = k.shape
    return torch.empty((n, B, counts.kv_blocks * block_size, H, D), dtype=k.dtype, device=k.device)


def _fill_kv_tail(x: torch.Tensor, tail: torch.Tensor, kept: torch.Tensor, geom: BlockGeometry, num_target: int,
                  counts: ReleaseCounts) -> None:
    """Rows from `bs * (Nt // bs)` on of `x`'s KV sequence into `tail` `[B, L, H, D]`: the last
    `Nt % bs` target tokens, the `bs` rows of each kept block (`kept` `[B, H, n_keep]` int32, source
    block numbers, in kept order; a partial last block's padding rows are zeros), then zeros."""
    bs = geom.block_size
    nbt = counts.num_target_blocks
    rem = num_target - geom.num_target
    if rem:
        tail[:, :rem] = x[:, geom.num_target:num_target]
    if counts.n_keep:
        # The source blocks' tables start at block nbt: kept block j is table entry nbt + j.
        gather_blocks(x, kept, geom.block_start[nbt:], geom.block_len[nbt:], bs, out=tail.transpose(1, 2),
                      out_offset=rem, zero_pad=True)
    used = rem + counts.n_keep * bs
    if used < tail.shape[1]:
        tail[:, used:] = 0


def _kv_tail_sums(tails, counts: ReleaseCounts, block_size: int):
    """Per-block fp32 sums `[B, H, NKV - nbt, D]` of the KV sequence's blocks from `Nt // bs` on
    (`tails`: 1 or 2 `[B, (NKV - nbt) * bs, H, D]` views of equal strides)."""
    n = counts.kv_blocks - counts.num_target_blocks
    geom = BlockGeometry.build(0, n * block_size, block_size, tails[0].device)
    return pool_blocks_many(tuple(tails), geom)


def _kv_means(means: torch.Tensor, tail_sums: torch.Tensor, counts: ReleaseCounts, block_size: int) -> torch.Tensor:
    """The release's centroid key or value of every KV block, `sum / bs` `[B, H, NKV, D]` fp32: the
    pooled means of the whole target blocks, then the tail's sums over `bs` (padding counts)."""
    return torch.cat([means[:, :, :counts.num_target_blocks], tail_sums / block_size], dim=2)


def _keep(probs: torch.Tensor, counts: ReleaseCounts):
    """Step 3: `(saliency [B, H, nbs], kept [B, H, n_keep] int32)`, kept in descending saliency, ties
    toward the lower block (the KV sequence's order)."""
    nbt = counts.num_target_blocks
    saliency = probs[:, :, :nbt, nbt:].sum(2)
    kept = torch.sort(saliency, dim=-1, descending=True, stable=True).indices[..., :counts.n_keep]
    return saliency, kept.to(torch.int32).contiguous()


def _route(probs: torch.Tensor, q_mean: torch.Tensor, kv_k_mean: torch.Tensor, geom: BlockGeometry,
           counts: ReleaseCounts):
    """Steps 5 and 6: `(sharpness [B, H, NB], full [B, H, n_full], taylor [B, H, NB - n_full],
    exact [B, H, NB - n_full, n_exact])`, the block tables int32 ascending."""
    B, H, nb, D = q_mean.shape
    nbt = counts.num_target_blocks
    if counts.n_sharp:
        _, _, sharpness = topk_select(probs.reshape(B * H * nb, nb)[:, :nbt], counts.n_sharp, selected=False, top_sum=True)
        sharpness = sharpness.view(B, H, nb)
    else:
        sharpness = probs.new_zeros((B, H, nb))
    full, taylor, _ = topk_select(sharpness.reshape(B * H, nb), counts.n_full, rest=True)
    n_taylor = nb - counts.n_full
    full, taylor = full.view(B, H, counts.n_full), taylor.view(B, H, n_taylor)
    # The release ranks by block sums: sum(q) over a query block's real rows, sum(k) over all bs
    # rows of a KV block (the means times bs; exact for a power-of-two bs).
    q_sum = q_mean * geom.block_len.to(q_mean.dtype).view(1, 1, nb, 1)
    tq = q_sum.gather(2, taylor.long().unsqueeze(-1).expand(-1, -1, -1, D))
    affinity = tq @ (kv_k_mean * geom.block_size).transpose(-1, -2)  # [B, H, n_taylor, NKV]
    exact, _, _ = topk_select(affinity.reshape(B * H * n_taylor, counts.kv_blocks), counts.n_exact)
    return sharpness, full, taylor, exact.view(B, H, n_taylor, counts.n_exact)


def _check_inputs(q, num_target: int, cfg: ISAConfig) -> None:
    if num_target < 1:
        raise ValueError("ISAConfig(compat='release') needs num_target >= 1: the release's KV sequence starts with the target tokens")
    if cfg.compat != "release":
        raise ValueError(f"these are the release's rules: cfg.compat must be 'release', got {cfg.compat!r}")


@torch.no_grad()
def plan_release_triton(q: torch.Tensor, k: torch.Tensor, num_target: int, cfg: ISAConfig) -> ReleasePlan:
    """`liveditor.isa.release.plan_release` on the kernels (block tables int32): the routing alone,
    for `q, k` `[B, S, H, D]` (target first). Builds only the KV sequence's rows from `Nt // bs`
    blocks on, of k (what the exact-block ranking reads beyond the pooled means)."""
    _check_inputs(q, num_target, cfg)
    q, k = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k))
    B, S, H, D = q.shape
    bs = cfg.block_size
    counts = release_counts(num_target, S - num_target, cfg)
    geom = release_geometry(num_target, S - num_target, bs, q.device)
    q_mean, k_mean, _ = block_means(q, k, k, geom)
    probs = coarse_probs(q_mean, k_mean)
    saliency, kept = _keep(probs, counts)
    tail = torch.empty((B, (counts.kv_blocks - counts.num_target_blocks) * bs, H, D), dtype=k.dtype, device=k.device)
    _fill_kv_tail(k, tail, kept, geom, num_target, counts)
    (k_tail,) = _kv_tail_sums((tail,), counts, bs)
    sharpness, full, taylor, exact = _route(probs, q_mean, _kv_means(k_mean, k_tail, counts, bs), geom, counts)
    return ReleasePlan(num_target, S - num_target, bs, kept, full, taylor, exact, saliency, sharpness)


def _release_routed_fwd(q, buf, out, full_q, taylor_q, taylor_exact, kv_k_mean, kv_v_mean, gate, out_c,
                        counts: ReleaseCounts, block_size: int, full_path: str, block_start, block_len,
                        tuning: ForwardTuning = DEFAULT_TUNING) -> None:
    """The routed attention (+ `gate * out_c`) into `out` `[B, S, H, D]`, reading k and v from the KV
    sequence `buf` `[2, B, NKV * bs, H, D]`, on the default rules' kernels and in their order on the
    GPU (`isa_function._routed_fwd_impl`): the dense call on a high-priority side stream beside the
    Taylor launch, its merge after it there. `out_c`: `[B, H, NB, D]` fp32, None, or a function that
    makes it."""
    B, _, H, D = q.shape
    bs = block_size
    scale = 1.0 / math.sqrt(D)
    k_buf, v_buf = buf[0], buf[1]
    route = resolve_full_path(full_path, q)
    dense = route == "sdpa" and full_q.shape[-1] > 0
    taylor = taylor_q.shape[-1] > 0
    main, side, on_side = dense_side_stream(q, dense, taylor)  # side waits for the plan and the KV sequence
    if dense:
        with on_side:
            q_full = gather_blocks(q, full_q, block_start, block_len, bs)
    out_c = out_c() if callable(out_c) else out_c
    n_kv = counts.kv_blocks
    centroids = None
    if taylor:
        kv_blocks = torch.arange(n_kv, dtype=torch.int32, device=q.device).expand(B, H, n_kv)
        kv_len = BlockGeometry.build(n_kv * bs, 0, bs, q.device).block_len  # every KV block counts bs rows
        centroids = centroid_terms(kv_k_mean, kv_v_mean, kv_len, kv_blocks, taylor_exact, bs, n_kv, dtype=q.dtype)
    # q's blocks: the release's, from token 0 (`span_geometry(0, S)`); k's and v's: the buffer's.
    common = dict(num_target=0, scale=scale, block_size=bs, gate=gate, out_c=out_c, tuning=tuning)
    no_blocks = full_q.new_empty((B, H, 1, 0))
    merge = None
    if dense:
        if side is not None:
            side.wait_stream(main)  # out_c and the centroid tables
        with on_side:
            # Every padding row up to Tkv is a key of zeros (logit 0), as in the release: no mask.
            k_set = k_buf[:, :counts.kv_tokens].transpose(1, 2)
            v_set = v_buf[:, :counts.kv_tokens].transpose(1, 2)
            o_dense, lse_dense = dense_attention_with_lse(q_full, k_set, v_set, scale)
            merge = MergeRows(full_q, no_blocks, o_dense, lse_dense)
            if side is not None or not taylor:
                launch_isa_fwd(q, k_buf, v_buf, out, full_q[..., :0], no_blocks, merge=merge, **common)
                merge = None
    elif full_q.shape[-1]:
        every = torch.arange(n_kv, dtype=torch.int32, device=q.device).view(1, 1, 1, n_kv).expand(B, H, 1, n_kv)
        launch_isa_fwd(q, k_buf, v_buf, out, full_q, every, kv_geometry=(0, counts.kv_tokens, 0), **common)
    if taylor:
        whole = (0, n_kv * bs, 0)  # whole blocks: padding rows are logit-0 tokens here too
        if taylor_gluon.supported(q, k_buf, v_buf, bs):
            if merge is not None:
                launch_isa_fwd(q, k_buf, v_buf, out, taylor_q[..., :0], no_blocks, merge=merge, **common)
            taylor_gluon.launch_taylor(q, k_buf, v_buf, out, taylor_q, taylor_exact, centroids, 0, scale, gate=gate,
                                       out_c=out_c, kv_geometry=whole)
        else:
            launch_isa_fwd(q, k_buf, v_buf, out, taylor_q, taylor_exact, centroids=centroids, merge=merge,
                           kv_geometry=whole, **common)
    if side is not None:
        main.wait_stream(side)  # as `_routed_fwd_impl`: join before anything returns


def release_forward(q, k, v, num_target: int, cfg: ISAConfig, gate=None, plan: Optional[ReleasePlan] = None,
                    full_path: str = "auto", tuning: ForwardTuning = DEFAULT_TUNING):
    """The release's ISA forward on the kernels, no autograd. `q, k, v` `[B, S, H, D]` (fp16, bf16,
    fp32), `gate` None, a float or a tensor broadcastable to `[B, S, H, 1]`, `plan` a `ReleasePlan`
    (made here when None). `full_path`: `isa_function.FULL_PATHS`. Returns `(out, plan)`."""
    _check_inputs(q, num_target, cfg)
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    B, S, H, D = q.shape
    bs = cfg.block_size
    if plan is not None:
        _check_release_plan(plan, q, num_target, cfg)
        if plan.full_query_blocks.device != q.device:
            raise ValueError(f"plan is on {plan.full_query_blocks.device} but q is on {q.device}: use plan.to(device)")
    counts = release_counts(num_target, S - num_target, cfg)
    geom = release_geometry(num_target, S - num_target, bs, q.device)
    block_start, block_len = geom.int32_tensors()
    with torch.no_grad():
        buf = kv_sequence_buffer(k, counts, bs)
        # The whole target blocks' rows of k and v land in the buffer while the pooling reads them.
        q_mean, k_mean, v_mean = block_means(q, k, v, geom, kv_target=buf)
        probs = None
        if plan is None:
            probs = coarse_probs(q_mean, k_mean)
            saliency, kept = _keep(probs, counts)
        else:
            kept = plan.kept_context_blocks.to(torch.int32).contiguous()
        start = geom.num_target  # bs * (Nt // bs): the first row the pooling did not copy
        for x, b in ((k, buf[0]), (v, buf[1])):
            _fill_kv_tail(x, b[:, start:], kept, geom, num_target, counts)
        k_tail, v_tail = _kv_tail_sums((buf[0][:, start:], buf[1][:, start:]), counts, bs)
        kv_k_mean = _kv_means(k_mean, k_tail, counts, bs)
        kv_v_mean = _kv_means(v_mean, v_tail, counts, bs)
        if plan is None:
            sharpness, full, taylor, exact = _route(probs, q_mean, kv_k_mean, geom, counts)
            plan = ReleasePlan(num_target, S - num_target, bs, kept, full, taylor, exact, saliency, sharpness)
        tables = [t.to(torch.int32).contiguous() for t in (plan.full_query_blocks, plan.taylor_query_blocks,
                                                           plan.taylor_exact_kv_blocks)]
        gate_t = _gate_table(gate, B, S, H, q.device)

        def make_out_c():  # as the default forward's: one TF32 matmul for fp16/bf16 attention
            p = probs if probs is not None else coarse_probs(q_mean, k_mean)
            with tf32_matmuls() if (q.is_cuda and q.dtype != torch.float32) else contextlib.nullcontext():
                return (p @ v_mean).contiguous()

        out = torch.empty((B, S, H, D), dtype=q.dtype, device=q.device)
        _release_routed_fwd(q, buf, out, *tables, kv_k_mean, kv_v_mean, gate_t, make_out_c if gate_t is not None else None,
                            counts, bs, full_path, block_start, block_len, tuning)
    return out, plan


class _ReleaseTritonAttention(torch.autograd.Function):
    """The kernels' forward; the backward recomputes the torch statement with the same plan and
    differentiates it (the release's rules have no backward kernels)."""

    @staticmethod
    def forward(ctx, q, k, v, gate, num_target, cfg, plan, full_path):
        out, _ = release_forward(q, k, v, num_target, cfg, gate=gate, plan=plan, full_path=full_path)
        gate_tensor = gate if isinstance(gate, torch.Tensor) else None
        ctx.save_for_backward(q, k, v, gate_tensor)
        ctx.meta = (num_target, cfg, plan, gate)
        return out

    @staticmethod
    def backward(ctx, d_out):
        q, k, v, gate_tensor = ctx.saved_tensors
        num_target, cfg, plan, gate = ctx.meta
        inputs = [t.detach().requires_grad_(need) for t, need in zip((q, k, v), ctx.needs_input_grad[:3])]
        if gate_tensor is not None:
            gate = gate_tensor.detach().requires_grad_(ctx.needs_input_grad[3])
            inputs.append(gate)
        with torch.enable_grad(), torch.autocast(q.device.type, enabled=False):
            out, _ = release_isa_attention(*inputs[:3], num_target, cfg, gate=gate, plan=plan)
        wrt = [t for t in inputs if t.requires_grad]
        grads = iter(torch.autograd.grad(out, wrt, d_out))
        result = [next(grads) if t.requires_grad else None for t in inputs]
        result += [None] * (4 - len(result))
        return (*result, None, None, None, None)


def release_attention_triton(q, k, v, num_target: int, cfg: ISAConfig, gate=None, plan: Optional[ReleasePlan] = None,
                             full_path: str = "auto"):
    """`liveditor.isa.isa_attention` with `cfg.compat == "release"` and `backend="triton"`: returns
    `(out, plan)`. Differentiable with respect to q, k, v and a tensor gate when autograd is on
    (the backward through the torch statement: correct, not fast)."""
    tensors = [t for t in (q, k, v, gate) if isinstance(t, torch.Tensor)]
    # The plan's scores and the coarse attention stay fp32 under an ambient autocast (as the
    # statement's do).
    with torch.autocast(q.device.type, enabled=False):
        if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
            if plan is None:
                plan = plan_release_triton(q.detach(), k.detach(), num_target, cfg)
            return _ReleaseTritonAttention.apply(q, k, v, gate, num_target, cfg, plan, full_path), plan
        return release_forward(q, k, v, num_target, cfg, gate=gate, plan=plan, full_path=full_path)
