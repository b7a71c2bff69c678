"""ISA attention on the Triton kernels: block means, plan (kernels/planner.py), routed forward and
backward (Triton), as one differentiable custom op.

The full path runs either inside the fused Triton kernel (`full_path="triton"`) or as one dense
cuDNN call over gathered queries and KV set, whose partial result the Triton kernel merges
with the one KV block the dense call leaves out (`full_path="sdpa"`): the last kept context block,
which may be partial. `"auto"` takes the SDPA route for fp16/bf16 on CUDA, where it measured faster
(docs/benchmarks.md), and the Triton route otherwise. The backward mirrors the choice: the dense
call's backward is given the rows' whole-softmax output and log-sum-exp, so it returns exactly the
gradient restricted to its columns, and the Triton kernels add the rest.

Forward and backward are registered as custom ops (`liveditor::isa_attention_fwd`,
`liveditor::isa_attention_bwd`) with fake implementations and autograd, so `torch.compile` traces a
model that uses ISA without graph breaks. The discrete plan carries no gradient. The backward also
differentiates the coarse attention (`gate * out_c`) and the block means behind the centroid terms,
and adds each block mean's gradient to its tokens in place, so gradients reach every token.
"""

from __future__ import annotations

import contextlib
import math
from typing import Optional

import torch

from liveditor.isa.config import ISAConfig, ISAKernelOptions
from liveditor.isa.plan import BlockGeometry, CoarseAttention, ISAPlan, coarse_probs, exact_kv_slots, plan_counts, pool_blocks
from liveditor.kernels import taylor_gluon
from liveditor.kernels.centroids import centroid_terms
from liveditor.kernels.dense import dense_attention_backward, dense_attention_with_lse
from liveditor.kernels.gather import gather_blocks, scatter_blocks
from liveditor.kernels.isa_bwd import launch_centroid_grads, launch_dkdv, launch_dq, launch_full_rows, launch_preprocess
from liveditor.kernels.isa_fwd import DEFAULT_TUNING, ForwardTuning, MergeRows, launch_isa_fwd
from liveditor.kernels.planner import plan_and_probs
from liveditor.kernels.pool import add_block_means_grad, pool_blocks_many

FULL_PATHS = ("auto", "triton", "sdpa")
DEFAULT_OPTIONS = ISAKernelOptions()  # made once, not inside a function torch.compile traces


def _gate_table(gate, B, S, H, device):
    """gate -> `[B, S, H]` fp32 view (broadcast strides), or None."""
    if gate is None:
        return None
    if not isinstance(gate, torch.Tensor):
        gate = torch.full((), float(gate), device=device)  # a fill, not a host copy (which would sync)
    return gate.to(torch.float32).broadcast_to((B, S, H, 1))[..., 0]


def resolve_full_path(full_path: str, q: torch.Tensor) -> str:
    """The full path's route for `full_path` (one of `FULL_PATHS`): `"auto"` is `"sdpa"` for fp16/bf16
    on CUDA (measured faster, docs/benchmarks.md), else `"triton"`."""
    if full_path not in FULL_PATHS:
        raise ValueError(f"full_path must be one of {FULL_PATHS}, got {full_path!r}")
    if full_path == "auto":
        return "sdpa" if (q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)) else "triton"
    return full_path


def _dense_kv_buffer(k, num_target: int, n_keep: int, bs: int) -> torch.Tensor:
    """A new `[2, B, L, H, D]` buffer (k's and v's layout) for the dense call's KV set: every target
    token, then the first `n_keep - 1` kept context blocks (all full: only a segment's last block
    can be partial, and it sorts last among the kept blocks)."""
    B, _, H, D = k.shape
    L = num_target + max(0, n_keep - 1) * bs
    return torch.empty((2, B, L, H, D), dtype=k.dtype, device=k.device)


def _copy_dense_kv_target(k, v, num_target: int, kv_buffer):
    """The target tokens of k and v into a `_dense_kv_buffer` (one plain copy each: same layout)."""
    kv_buffer[0, :, :num_target] = k[:, :num_target]
    kv_buffer[1, :, :num_target] = v[:, :num_target]


def _fill_dense_kv(k, v, num_target, kept, block_start, block_len, bs, kv_buffer, target: bool = True):
    """Fills a `_dense_kv_buffer`: the target tokens (unless `target=False`: `block_means` already
    copied them while reading k and v for their means), then the first `n_keep - 1` kept context
    blocks."""
    if target:
        _copy_dense_kv_target(k, v, num_target, kv_buffer)
    ctx = kept[..., : max(0, kept.shape[-1] - 1)]
    for x, buf in ((k, kv_buffer[0]), (v, kv_buffer[1])):
        gather_blocks(x, ctx, block_start, block_len, bs, out=buf.transpose(1, 2), out_offset=num_target)
    return kv_buffer


def _dense_kv_set(k, v, num_target, kept, block_start, block_len, bs, kv_buffer=None):
    """`[B, H, L, D]` views of the dense call's KV set, from `kv_buffer` (already filled) or a new
    `_dense_kv_buffer`. Token-major, the layout of k and v, keeps the target part one plain copy."""
    if kv_buffer is None:
        kv_buffer = _dense_kv_buffer(k, num_target, kept.shape[-1], bs)
        _fill_dense_kv(k, v, num_target, kept, block_start, block_len, bs, kv_buffer)
    return kv_buffer[0].transpose(1, 2), kv_buffer[1].transpose(1, 2)


def _uses_dense(route: str, num_target: int, n_keep: int, n_full: int, bs: int) -> bool:
    return route == "sdpa" and n_full > 0 and (num_target + max(0, n_keep - 1) * bs) > 0


# ----------------------------------------------------------------------------- forward


def _routed_fwd_impl(q, k, v, k_mean, v_mean, gate, out_c, block_start, block_len, kept, kv_blocks,
                     full_q, taylor_q, taylor_exact, block_size: int, num_target: int,
                     full_path: str, kv_buffer=None, tuning: ForwardTuning = DEFAULT_TUNING):
    """Routed attention (+ `gate * out_c`): `(out [B, S, H, D], lse [B, H, S])`.

    `k_mean`, `v_mean`: block means `[B, H, nb, D]`, any float dtype (the centroid tables take
    q's). `out_c`: `[B, H, nb, D]` fp32, None, or a function that makes it, called once the dense
    call's query gather is queued. `tuning`: the Triton forward kernel's launch parameters.

    Overlapping (`overlap_streams`), the order on the GPU is: the query gather on the dense
    stream, beside it out_c and the centroid tables on this one; then the dense call, which waits
    for both (queued behind it, they would only get SMs in its last wave and hold the Taylor launch
    back); the Taylor launch here, which takes every SM the dense call leaves (its last wave, or,
    when the Taylor launch reaches the GPU first, as the Gluon one did in `bench --timeline`, the
    SMs its first programs hold until cuDNN's take them over); the merge after the dense call on
    its stream.
    """
    B, S, H, D = q.shape
    bs = block_size
    scale = 1.0 / math.sqrt(D)
    out = torch.empty((B, S, H, D), dtype=q.dtype, device=q.device)
    lse = torch.empty((B, H, S), dtype=torch.float32, device=q.device)
    if S == 0:
        return out, lse
    route = resolve_full_path(full_path, q)
    dense = _uses_dense(route, num_target, kept.shape[-1], full_q.shape[-1], bs)
    taylor = taylor_q.shape[-1] > 0
    main, side, on_side = dense_side_stream(q, dense, taylor)
    if dense:
        with on_side:
            q_full = gather_blocks(q, full_q, block_start, block_len, bs)
            k_set, v_set = _dense_kv_set(k, v, num_target, kept, block_start, block_len, bs, kv_buffer)
    out_c = out_c() if callable(out_c) else out_c
    centroids = (centroid_terms(k_mean, v_mean, block_len, kv_blocks, taylor_exact, bs, -(-num_target // bs), dtype=q.dtype)
                 if taylor else None)
    common = dict(num_target=num_target, scale=scale, block_size=bs, gate=gate, out_c=out_c, lse=lse, tuning=tuning)
    merge = None
    if dense:
        if side is not None:
            side.wait_stream(main)  # out_c and the centroid tables
        with on_side:
            o_dense, lse_dense = dense_attention_with_lse(q_full, k_set, v_set, scale)
            rest = kept[..., max(0, kept.shape[-1] - 1):].unsqueeze(2)  # [B, H, 1, 0 or 1]
            merge = MergeRows(full_q, rest, o_dense, lse_dense)
            if side is not None or not taylor:  # else they join the Taylor launch (`launch_taylor`)
                launch_isa_fwd(q, k, v, out, full_q[..., :0], rest[..., :0], merge=merge, **common)
                merge = None
    else:
        launch_isa_fwd(q, k, v, out, full_q, kv_blocks.unsqueeze(2), **common)
    if taylor:
        launch_taylor(q, k, v, out, taylor_q, taylor_exact, centroids, merge=merge, **common)
    if side is not None:
        # Join before anything returns: every tensor the side stream touched was allocated on this
        # stream or lives until here, so the caching allocator needs no `record_stream`.
        main.wait_stream(side)
    return out, lse


def launch_taylor(q, k, v, out, taylor_q, taylor_exact, centroids, merge=None, **common):
    """The Taylor launch: the warp-specialised Gluon kernel (`kernels/taylor_gluon.py`) where it
    runs (`taylor_gluon.supported`: measured faster, docs/benchmarks.md), else `isa_fwd_kernel`.
    `merge`, when given, is run in the same launch by `isa_fwd_kernel` (the fused merge, measured
    faster than a launch of its own); the Gluon kernel has no merge programs, so it gets a
    merge-only launch of its own, just before. `common`: `launch_isa_fwd`'s keywords."""
    if taylor_gluon.supported(q, k, v, common["block_size"]):
        if merge is not None:
            launch_isa_fwd(q, k, v, out, taylor_q[..., :0], merge.exact_blocks[..., :0], merge=merge, **common)
        taylor_gluon.launch_taylor(q, k, v, out, taylor_q, taylor_exact, centroids, common["num_target"],
                                   common["scale"], gate=common.get("gate"), out_c=common.get("out_c"),
                                   lse=common.get("lse"))
    else:
        launch_isa_fwd(q, k, v, out, taylor_q, taylor_exact, centroids=centroids, merge=merge, **common)


_DENSE_STREAMS: dict = {}


def _dense_stream(device: torch.device) -> "torch.cuda.Stream":
    """A stream of higher priority than the default one, for the dense call and its merge: the
    dense call's blocks are dispatched first whenever both wait, so the Taylor launch on the
    caller's stream gets the SMs the dense call leaves idle."""
    if device not in _DENSE_STREAMS:
        _DENSE_STREAMS[device] = torch.cuda.Stream(device, priority=-1)
    return _DENSE_STREAMS[device]


def dense_side_stream(q: torch.Tensor, dense: bool, taylor: bool):
    """`(main, side, on_side)` of a forward: the caller's stream (None off CUDA), the dense call's
    high-priority side stream when the dense call overlaps the Taylor launch (`overlap_streams`; it
    waits here for what is queued on `main`: the plan and the KV set), else None, and a context that
    runs on `side` (a no-op without one)."""
    main = torch.cuda.current_stream(q.device) if q.is_cuda else None
    side = None
    if dense and taylor and overlap_streams(q):
        side = _dense_stream(q.device)
        side.wait_stream(main)
    return main, side, torch.cuda.stream(side) if side is not None else contextlib.nullcontext()


def overlap_streams(q: torch.Tensor) -> bool:
    """Whether the dense call runs on a high-priority side stream, overlapping the Taylor launch: on
    CUDA, except while a CUDA graph is being captured (then they run one after the other on the
    capturing stream, the merge fused into the Triton Taylor launch where that kernel runs it).

    cuDNN's kernel is persistent (one program per SM); its last ~0.5 ms at the Wan2.1-1.3B shape
    leaves most SMs idle, and the Taylor launch fills them. Interleaved on an H100, the whole
    forward went from 15.88 to 15.36 ms (1.3B) and 89.68 to 88.66 ms (14B) (docs/benchmarks.md).
    In that serial order the fused merge measured faster than a merge launch of its own (15.93 ->
    15.70 ms at 1.3B, 89.30 -> 88.46 ms at 14B), and the Gluon Taylor kernel with its merge apart
    still faster than the Triton kernel with the merge fused (15.57 vs 15.65 ms at 1.3B)."""
    return q.is_cuda and not torch.cuda.is_current_stream_capturing()


@contextlib.contextmanager
def tf32_matmuls():
    """CUDA fp32 matmuls on TF32 tensor cores inside the block (the previous setting restored after)."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def _csr_taylor_attendees(kv_blocks, taylor_q, taylor_exact, num_blocks):
    """For each KV-set slot, the Taylor query blocks that attend it exactly (CSR by slot)."""
    B, H, n_kv = kv_blocks.shape
    NT, NE = taylor_exact.shape[-2:]
    dev = kv_blocks.device
    exact_slots = exact_kv_slots(kv_blocks, taylor_exact, num_blocks).view(B, H, NT * NE)
    order = torch.sort(exact_slots, dim=-1, stable=True).indices
    pair_query = taylor_q.long().unsqueeze(-1).expand(B, H, NT, NE).reshape(B, H, NT * NE)
    csr_query = pair_query.gather(-1, order).to(torch.int32).contiguous()
    counts = torch.zeros((B, H, n_kv), dtype=torch.int64, device=dev).scatter_add_(2, exact_slots, torch.ones_like(exact_slots))
    offsets = torch.cat([counts.new_zeros((B, H, 1)), counts.cumsum(-1)], dim=-1).to(torch.int32).contiguous()
    return offsets, csr_query


def _dense_backward_by_heads(do, q, k, v, out, lse, gate, out_c, full_q, kept, block_start, block_len, bs: int,
                             num_target: int, scale: float, dk, dv, heads_per_call: int):
    """The full path's dense backward, `heads_per_call` heads per cuDNN call
    (`ISAKernelOptions.dense_backward_heads`, which says what it trades).

    Each call gets the full query blocks' rows (routed output, dO, LSE of the whole routed softmax,
    so its result is the gradient restricted to its own columns) and the KV set of
    `_dense_kv_set`; its key gradients are written straight into `dk`, `dv` at their tokens.
    Returns the full rows' dq `[B, H, n_full * bs, D]` (slot order of `full_q`).
    """
    B, S, H, D = q.shape
    nb = block_start.shape[0]
    n_full = full_q.shape[-1]
    full_slot = torch.full((B, H, nb), -1, dtype=torch.int32, device=q.device)
    full_slot.scatter_(2, full_q.long(), torch.arange(n_full, dtype=torch.int32, device=q.device).expand(B, H, n_full))
    dq_full = torch.empty((B, H, n_full * bs, D), dtype=q.dtype, device=q.device)
    n_dense_ctx = max(0, kept.shape[-1] - 1)
    step = min(H, heads_per_call)
    for h0 in range(0, H, step):
        hs = slice(h0, min(H, h0 + step))
        o_rows, do_rows, lse_rows = launch_full_rows(
            do[:, :, hs], out[:, :, hs], None if gate is None else gate[:, :, hs], None if out_c is None else out_c[:, hs],
            lse[:, hs], full_slot[:, hs], n_full, block_start, block_len, bs)
        q_rows = gather_blocks(q[:, :, hs], full_q[:, hs], block_start, block_len, bs)
        k_set, v_set = _dense_kv_set(k[:, :, hs], v[:, :, hs], num_target, kept[:, hs], block_start, block_len, bs)
        dq_h, dk_set, dv_set = dense_attention_backward(do_rows, q_rows, k_set, v_set, o_rows, lse_rows, scale)
        del o_rows, do_rows, lse_rows, q_rows, k_set, v_set
        dq_full[:, hs] = dq_h
        del dq_h
        for grad_set, grad in ((dk_set, dk), (dv_set, dv)):
            grad[:, :num_target, hs] = grad_set[:, :, :num_target].transpose(1, 2)
            scatter_blocks(grad_set, kept[:, hs, :n_dense_ctx], block_start, block_len, bs, out=grad[:, :, hs], src_offset=num_target)
        del dk_set, dv_set
    return dq_full


def _routed_bwd_impl(do, q, k, v, k_mean, v_mean, gate, out_c, out, lse, block_start, block_len, kept,
                     kv_blocks, full_q, taylor_q, taylor_exact, block_size, num_target, full_path,
                     dense_backward_heads: int, coarse_means=None):
    """Gradients of the routed attention (+ `gate * out_c`). Returns `(dq, dk, dv, d_k_mean,
    d_v_mean, d_gate, coarse)`: `coarse` is the coarse attention's `(d_q_mean, d_k_mean, d_v_mean)`
    when `coarse_means` (fp32 `q_mean, k_mean, v_mean`) and a gate are given, else None.
    `dense_backward_heads`: heads per cuDNN call of the full path's dense backward."""
    B, S, H, D = q.shape
    bs = block_size
    nb = block_start.shape[0]
    scale = 1.0 / math.sqrt(D)
    do = do if do.stride(-1) == 1 else do.contiguous()
    n_kv = kv_blocks.shape[-1]
    n_full = full_q.shape[-1]
    route = resolve_full_path(full_path, q)
    dense = _uses_dense(route, num_target, kept.shape[-1], n_full, bs)

    delta, d_gate, d_out_c = launch_preprocess(do, out, gate, out_c, block_start, block_len, bs)
    coarse = None
    if coarse_means is not None and d_out_c is not None:
        # Now, before any [B, S, H, D] gradient exists, so its [B, H, nb, nb] temporaries stay off the peak.
        q_m, k_m, v_m = coarse_means
        coarse = _coarse_backward(q_m, k_m, v_m, coarse_probs(q_m, k_m), d_out_c)
    del d_out_c
    csr_offsets, csr_query = _csr_taylor_attendees(kv_blocks, taylor_q, taylor_exact, nb)
    common = dict(scale=scale, block_size=bs, num_target=num_target)

    # Tokens of context blocks outside the KV set get no exact gradient.
    dk = torch.zeros_like(k, memory_format=torch.contiguous_format)
    dv = torch.zeros_like(v, memory_format=torch.contiguous_format)
    if dense:
        # The dense backward writes its key gradients into dk, dv first; dq comes after it.
        dq_full = _dense_backward_by_heads(do, q, k, v, out, lse, gate, out_c, full_q, kept, block_start, block_len,
                                           bs, num_target, scale, dk, dv, dense_backward_heads)
    dq = torch.empty_like(q, memory_format=torch.contiguous_format)
    if dense:
        n_keep = kept.shape[-1]
        rest = kept[..., max(0, n_keep - 1):].unsqueeze(2)
        launch_dq(q, k, v, do, lse, delta, dq, full_q, rest, init_dq=dq_full, **common)
        del dq_full
        # The full query blocks attend the last kept block here (the dense call left it out); every
        # other KV block's dense gradient already sits in dk, dv at its tokens, read back as init.
        last_kept = (torch.arange(n_kv, device=q.device) == n_kv - 1) & (n_keep > 0)
        full_attends = last_kept.to(torch.int32).expand(B, H, n_kv).contiguous()
        init_row = block_start[kv_blocks.long()].contiguous()
        launch_dkdv(q, k, v, do, lse, delta, dk, dv, kv_blocks, full_q, full_attends, csr_offsets, csr_query,
                    init_row=init_row, init_dk=dk.transpose(1, 2), init_dv=dv.transpose(1, 2), **common)
    else:
        launch_dq(q, k, v, do, lse, delta, dq, full_q, kv_blocks.unsqueeze(2), **common)
        full_attends = torch.ones((B, H, n_kv), dtype=torch.int32, device=q.device)
        launch_dkdv(q, k, v, do, lse, delta, dk, dv, kv_blocks, full_q, full_attends, csr_offsets, csr_query, **common)
    d_k_mean = torch.zeros((B, H, nb, D), dtype=torch.float32, device=q.device)
    d_v_mean = torch.zeros_like(d_k_mean)
    if taylor_q.shape[-1]:
        # The forward's centroid inputs (slot order, -inf at exact and padding slots), shared by the
        # Taylor rows' dq and the centroid gradients; made after the dense part, which sets the peak.
        centroids = centroid_terms(k_mean, v_mean, block_len, kv_blocks, taylor_exact, bs, -(-num_target // bs),
                                   dtype=q.dtype)
        launch_dq(q, k, v, do, lse, delta, dq, taylor_q, taylor_exact, centroids=centroids, **common)
        dkm_slots, dvm_slots = launch_centroid_grads(q, do, lse, delta, centroids, taylor_q, **common)
        idx = kv_blocks.long().unsqueeze(-1).expand(B, H, n_kv, D)
        d_k_mean.scatter_(2, idx, dkm_slots[:, :, :n_kv])
        d_v_mean.scatter_(2, idx, dvm_slots[:, :, :n_kv])
    return dq, dk, dv, d_k_mean.to(k_mean.dtype), d_v_mean.to(v_mean.dtype), d_gate, coarse


def _coarse_backward(q_mean, k_mean, v_mean, probs, d_out_c):
    """Gradients of `out_c = probs @ v_mean`, `probs = coarse_probs(q_mean, k_mean)`, w.r.t. the
    block means, by hand (small `[B, H, nb, *]` tensors)."""
    scale = 1.0 / math.sqrt(q_mean.shape[-1])
    d_v = probs.transpose(-1, -2) @ d_out_c
    d_p = d_out_c @ v_mean.transpose(-1, -2)
    d_logits = probs * (d_p - (d_p * probs).sum(-1, keepdim=True)) * scale
    return d_logits @ k_mean, d_logits.transpose(-1, -2) @ q_mean, d_v


def _plan_args(plan: ISAPlan):
    g = plan.geometry
    return (
        *g.int32_tensors(), plan.kept_context_blocks, plan.kv_blocks,
        plan.full_query_blocks, plan.taylor_query_blocks, plan.taylor_exact_kv_blocks,
    )


@torch.library.custom_op("liveditor::isa_attention_fwd", mutates_args=())
def isa_attention_fwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gate: Optional[torch.Tensor],
    q_mean: torch.Tensor, k_mean: torch.Tensor, v_mean: torch.Tensor, probs: Optional[torch.Tensor],
    kv_buffer: Optional[torch.Tensor],
    block_start: torch.Tensor, block_len: torch.Tensor, kept: torch.Tensor, kv_blocks: torch.Tensor,
    full_q: torch.Tensor, taylor_q: torch.Tensor, taylor_exact: torch.Tensor,
    block_size: int, num_target: int, full_path: str, dense_backward_heads: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ISA forward given the block means `[B, H, nb, D]` (fp32) and a plan.

    Returns `(out [B, S, H, D], lse [B, H, S])`. `gate` is `[B, S, H]` fp32 or None; `probs`, when
    given, are the coarse probabilities the planner already computed (used here only);
    `kv_buffer`, when given, is the dense call's KV set, filled (`_dense_kv_buffer`, `_fill_dense_kv`).
    `dense_backward_heads` is for the backward (`ISAKernelOptions`).
    """
    def make_out_c():  # called inside the routed forward, beside the dense call's query gather
        p = probs if probs is not None else coarse_probs(q_mean, k_mean)
        # fp16/bf16 attention: one TF32 matmul (93 -> 41 us at 1.3B on an H100, docs/benchmarks.md). TF32
        # keeps 10 mantissa bits of each input, about 5e-4 relative on `out_c`, below the rounding of
        # the fp16/bf16 output it is added to (times a gate of at most 0.25 in LIVEditor); fp32 attention
        # keeps fp32 SIMT.
        with tf32_matmuls() if (q.is_cuda and q.dtype != torch.float32) else contextlib.nullcontext():
            return (p @ v_mean).contiguous()

    out_c = make_out_c if gate is not None else None
    return _routed_fwd_impl(q, k, v, k_mean, v_mean, gate, out_c, block_start, block_len, kept,
                            kv_blocks, full_q, taylor_q, taylor_exact, block_size, num_target, full_path, kv_buffer)


@isa_attention_fwd.register_fake
def _(q, k, v, gate, q_mean, k_mean, v_mean, probs, kv_buffer, block_start, block_len, kept, kv_blocks, full_q, taylor_q,
      taylor_exact, block_size, num_target, full_path, dense_backward_heads):
    B, S, H, D = q.shape
    return torch.empty_like(q, memory_format=torch.contiguous_format), q.new_empty((B, H, S), dtype=torch.float32)


@torch.library.custom_op("liveditor::isa_attention_bwd", mutates_args=())
def isa_attention_bwd(
    do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gate: Optional[torch.Tensor],
    out: torch.Tensor, lse: torch.Tensor,
    block_start: torch.Tensor, block_len: torch.Tensor, kept: torch.Tensor, kv_blocks: torch.Tensor,
    full_q: torch.Tensor, taylor_q: torch.Tensor, taylor_exact: torch.Tensor,
    block_size: int, num_target: int, full_path: str, dense_backward_heads: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients `(dq, dk, dv, d_gate)` of `isa_attention_fwd`, the block means' dependence on the
    tokens included (`d_gate` is empty without a gate: custom ops cannot return None).

    The fp32 block means are pooled again here from q, k and v (the forward's own deterministic
    reduction, so the same values), inside the op: under torch.compile, AOT autograd traces the
    autograd backward with fake tensors, where the Triton pooling kernel cannot run, and
    `torch.compiler.is_compiling()` is False during that trace. Inside the op the traced graph sees one
    opaque call."""
    q_mean, k_mean, v_mean = block_means(q, k, v, _saved_geometry(q, block_start, block_len, block_size, num_target))
    # The coarse probabilities `[B, H, nb, nb]` are made twice rather than kept alive across the
    # routed backward, whose dense part sets the peak memory.
    out_c = (coarse_probs(q_mean, k_mean) @ v_mean).contiguous() if gate is not None else None
    dq, dk, dv, d_k_mean, d_v_mean, d_gate, coarse = _routed_bwd_impl(
        do, q, k, v, k_mean.to(q.dtype), v_mean.to(q.dtype), gate, out_c, out, lse, block_start, block_len, kept,
        kv_blocks, full_q, taylor_q, taylor_exact, block_size, num_target, full_path, dense_backward_heads,
        coarse_means=(q_mean, k_mean, v_mean))
    d_k_mean, d_v_mean = d_k_mean.float(), d_v_mean.float()
    if coarse is not None:
        dq_c, dk_c, dv_c = coarse
        d_q_mean, d_k_mean, d_v_mean = dq_c, d_k_mean + dk_c, d_v_mean + dv_c
    else:
        d_q_mean = torch.zeros_like(q_mean)
    # The pooling's backward, in place: every token gets its block mean's gradient over n.
    add_block_means_grad((dq, dk, dv), (d_q_mean, d_k_mean, d_v_mean), block_start, block_len, block_size)
    if d_gate is None:
        d_gate = q.new_empty((0,), dtype=torch.float32)
    return dq, dk, dv, d_gate


@isa_attention_bwd.register_fake
def _(do, q, k, v, gate, out, lse, block_start, block_len, kept, kv_blocks, full_q, taylor_q,
      taylor_exact, block_size, num_target, full_path, dense_backward_heads):
    B, S, H, D = q.shape
    cf = torch.contiguous_format
    d_gate = q.new_empty((B, S, H) if gate is not None else (0,), dtype=torch.float32)
    return torch.empty_like(q, memory_format=cf), torch.empty_like(k, memory_format=cf), torch.empty_like(v, memory_format=cf), d_gate


def _setup_context(ctx, inputs, output):
    (q, k, v, gate, q_mean, k_mean, v_mean, probs, kv_buffer, *plan_tensors, block_size, num_target, full_path,
     dense_backward_heads) = inputs
    out, lse = output
    # Saved: what dense attention saves (q, k, v, out, lse), the gate and the plan. Not saved:
    # `probs` (may be a CUDA-graph buffer of the planner), `kv_buffer` (the backward builds its KV sets
    # a few heads at a time), and the fp32 block means `[B, H, nb, D]`: 19 MB per layer at the
    # Wan2.1-1.3B shape, kept through the whole backward of a checkpointed block, which put ISA's
    # training peak above dense attention's (docs/benchmarks.md). The backward pools them again from
    # q, k, v (one read, the forward's own deterministic reduction, so the same values).
    ctx.save_for_backward(q, k, v, gate, out, lse, *plan_tensors)
    ctx.meta = (block_size, num_target, full_path, dense_backward_heads)


def _saved_geometry(q, block_start, block_len, block_size: int, num_target: int) -> BlockGeometry:
    """The forward's `BlockGeometry`, from the saved plan's int32 block tables (not the geometry
    cache's: the backward op is handed these tensors)."""
    num_context = q.shape[1] - num_target
    return BlockGeometry(num_target, num_context, block_size, -(-num_target // block_size), -(-num_context // block_size),
                         block_start.long(), block_len.long())


def _backward(ctx, d_out, d_lse):
    q, k, v, gate, out, lse, *plan_tensors = ctx.saved_tensors
    dq, dk, dv, d_gate = isa_attention_bwd(d_out, q, k, v, gate, out, lse, *plan_tensors, *ctx.meta)
    return (dq, dk, dv, d_gate if gate is not None else None) + (None,) * 16


isa_attention_fwd.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------- entry points


def _pool_many(q, k, v):
    same = q.stride() == k.stride() == v.stride() and q.stride(-1) == 1
    return pool_blocks_many if same else None


def block_means(q, k, v, geom: BlockGeometry, kv_target=None):
    """Block means `[B, H, nb, D]` (fp32) of q, k and v (of q and k alone when `v is k`), no gradient.

    `kv_target`, optional, is a `_dense_kv_buffer`: the pooling copies k's and v's target tokens
    into it in the same pass (on the Triton pooling path; else with a plain copy)."""
    with torch.no_grad():
        # Under torch.compile the pooling is traced as PyTorch ops.
        pool = None if torch.compiler.is_compiling() else _pool_many(q, k, v)
        inputs = (q, k) if v is k else (q, k, v)  # planning alone pools no values
        fused_copy = kv_target is not None and pool is not None and len(inputs) == 3
        if pool is not None:
            means = pool(inputs, geom, copy_to=(kv_target[0], kv_target[1]) if fused_copy else None, mean=True)
        else:
            counts = geom.block_len.to(torch.float32).view(1, 1, -1, 1)
            means = [pool_blocks(t, geom).float() / counts for t in inputs]
        if kv_target is not None and not fused_copy:
            _copy_dense_kv_target(k, v, geom.num_target, kv_target)
    return (means[0], means[1], means[1]) if v is k else tuple(means)


def isa_forward(q, k, v, plan: ISAPlan, coarse: CoarseAttention, gate=None, full_path: str = "auto", store_lse: bool = False,
                tuning: ForwardTuning = DEFAULT_TUNING):
    """Routed attention (+ `gate * out_c`) with the Triton kernels, no autograd, from a given plan
    and coarse attention. `tuning`: the Triton forward kernel's launch parameters (the benchmark's
    `--sweep`). Returns `(out, lse or None)`."""
    B, S, H, D = q.shape
    gate_t = _gate_table(gate, B, S, H, q.device)
    out_c = coarse.out.to(torch.float32).contiguous() if gate_t is not None else None
    out, lse = _routed_fwd_impl(q, k, v, coarse.k_mean, coarse.v_mean, gate_t, out_c,
                                *_plan_args(plan), plan.geometry.block_size, plan.geometry.num_target, full_path,
                                tuning=tuning)
    return out, (lse if store_lse else None)


def isa_attention_triton(q, k, v, num_target: int, cfg: ISAConfig, gate=None, plan: ISAPlan | None = None,
                         full_path: str = "auto", options: ISAKernelOptions | None = None):
    """`liveditor.isa.isa_attention` with `backend="triton"`. Returns `(out, plan)`.

    Differentiable with respect to q, k, v and a tensor gate when autograd is on. `full_path`:
    `FULL_PATHS` (`resolve_full_path`); `options`: how the kernels run (`ISAKernelOptions()` when None).
    """
    options = options if options is not None else DEFAULT_OPTIONS
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    B, S, H, _ = q.shape
    geom = plan.geometry if plan is not None else BlockGeometry.build(num_target, S - num_target, cfg.block_size, q.device)
    if plan is not None:
        n_keep, n_full = plan.kept_context_blocks.shape[-1], plan.full_query_blocks.shape[-1]
    else:
        n_keep, _, _, n_full, _ = plan_counts(geom, cfg)
    # The dense call's KV set, its target part copied while the pooling reads k and v.
    kv_buffer = None
    if not torch.compiler.is_compiling() and _uses_dense(resolve_full_path(full_path, q), geom.num_target, n_keep,
                                                         n_full, geom.block_size):
        kv_buffer = _dense_kv_buffer(k, geom.num_target, n_keep, geom.block_size)
    q_mean, k_mean, v_mean = block_means(q, k, v, geom, kv_target=kv_buffer)
    probs = None
    if plan is None:
        plan, probs = plan_and_probs(q_mean, k_mean, geom, cfg)
    plan_tensors = _plan_args(plan)
    if kv_buffer is not None:
        block_start, block_len, kept = plan_tensors[:3]
        _fill_dense_kv(k, v, geom.num_target, kept, block_start, block_len, geom.block_size, kv_buffer, target=False)
    gate_t = _gate_table(gate, B, S, H, q.device)
    out, _ = isa_attention_fwd(q, k, v, gate_t, q_mean, k_mean, v_mean, probs, kv_buffer, *plan_tensors,
                               geom.block_size, geom.num_target, full_path, options.dense_backward_heads)
    return out, plan
