"""ISA attention on the Triton kernels: planning (PyTorch), then the routed forward (Triton).

The full path runs either inside the fused Triton kernel (`full_path="triton"`) or as one dense
cuDNN/flash call over gathered queries and KV set, whose partial result the Triton kernel merges
with the one KV block the dense call leaves out (`full_path="sdpa"`): the last kept context block,
which may be partial. `"auto"` takes the SDPA route for fp16/bf16 on CUDA, where it measured faster
(docs/benchmarks.md), and the Triton route otherwise.
"""

from __future__ import annotations

import math
import os

import torch

from liveditor.isa.config import ISAConfig
from liveditor.isa.plan import BlockGeometry, CoarseAttention, ISAPlan, coarse_attention, make_plan
from liveditor.kernels.dense import dense_attention_with_lse
from liveditor.kernels.gather import gather_blocks
from liveditor.kernels.isa_fwd import launch_isa_fwd
from liveditor.kernels.pool import pool_blocks_many

FULL_PATHS = ("auto", "triton", "sdpa")


def _gate_table(gate, B, S, H, device):
    """gate -> `[B, S, H]` fp32 view (broadcast strides), or None."""
    if gate is None:
        return None
    if not isinstance(gate, torch.Tensor):
        gate = torch.tensor(float(gate), device=device)
    return gate.to(torch.float32).broadcast_to((B, S, H, 1))[..., 0]


def resolve_full_path(full_path: str, q: torch.Tensor) -> str:
    full_path = os.environ.get("LIVEDITOR_ISA_FULL_PATH", full_path)
    if full_path not in FULL_PATHS:
        raise ValueError(f"full_path must be one of {FULL_PATHS}, got {full_path!r}")
    if full_path == "auto":
        return "sdpa" if (q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)) else "triton"
    return full_path


def isa_forward(q, k, v, plan: ISAPlan, coarse: CoarseAttention, gate=None, full_path: str = "auto", store_lse: bool = False):
    """Routed attention (+ `gate * out_c`) with the Triton kernels. Returns `(out, lse or None)`."""
    geom = plan.geometry
    B, S, H, D = q.shape
    bs = geom.block_size
    scale = 1.0 / math.sqrt(D)
    out = torch.empty((B, S, H, D), dtype=q.dtype, device=q.device)
    lse = torch.empty((B, H, S), dtype=torch.float32, device=q.device) if store_lse else None
    if S == 0:
        return out, lse
    block_start = geom.block_start.to(torch.int32)
    block_len = geom.block_len.to(torch.int32)
    log_count = geom.block_len.to(torch.float32).log()
    k_mean = coarse.k_mean.to(q.dtype).contiguous()
    v_mean = coarse.v_mean.to(q.dtype).contiguous()
    gate_t = _gate_table(gate, B, S, H, q.device)
    out_c = coarse.out.to(torch.float32).contiguous() if gate_t is not None else None
    no_blocks = plan.kv_blocks.new_empty((B, H, 1, 0))
    common = dict(block_start=block_start, block_len=block_len, scale=scale, block_size=bs, gate=gate_t, out_c=out_c, lse=lse)

    full_path = resolve_full_path(full_path, q)
    kept = plan.kept_context_blocks
    n_dense_ctx = max(0, kept.shape[-1] - 1)
    dense_len = geom.num_target + n_dense_ctx * bs
    if full_path == "sdpa" and dense_len > 0 and plan.full_query_blocks.shape[-1] > 0:
        # Dense call over [all target tokens, the first n_keep - 1 kept context blocks] (all full
        # blocks: only a segment's last block can be partial, and it sorts last among kept blocks).
        q_full = gather_blocks(q, plan.full_query_blocks, block_start, block_len, bs)
        k_set = torch.empty((B, H, dense_len, D), dtype=q.dtype, device=q.device)
        v_set = torch.empty_like(k_set)
        k_set[:, :, : geom.num_target] = k[:, : geom.num_target].transpose(1, 2)
        v_set[:, :, : geom.num_target] = v[:, : geom.num_target].transpose(1, 2)
        ctx = kept[..., :n_dense_ctx]
        gather_blocks(k, ctx, block_start, block_len, bs, out=k_set, out_offset=geom.num_target)
        gather_blocks(v, ctx, block_start, block_len, bs, out=v_set, out_offset=geom.num_target)
        o_dense, lse_dense = dense_attention_with_lse(q_full, k_set, v_set, scale)
        rest = kept[..., n_dense_ctx:].unsqueeze(2)  # [B, H, 1, 0 or 1]
        launch_isa_fwd(
            q, k, v, out, k_mean, v_mean, log_count,
            plan.full_query_blocks, rest, no_blocks,
            init_out=o_dense, init_lse=lse_dense, **common,
        )
    else:
        launch_isa_fwd(
            q, k, v, out, k_mean, v_mean, log_count,
            plan.full_query_blocks, plan.kv_blocks.unsqueeze(2), no_blocks, **common,
        )
    launch_isa_fwd(
        q, k, v, out, k_mean, v_mean, log_count,
        plan.taylor_query_blocks, plan.taylor_exact_kv_blocks, plan.taylor_centroid_kv_blocks, **common,
    )
    return out, lse


def _pool_many(q, k, v):
    same = q.stride() == k.stride() == v.stride() and q.stride(-1) == 1
    return pool_blocks_many if same else None


def isa_attention_triton(q, k, v, num_target: int, cfg: ISAConfig, gate=None, plan: ISAPlan | None = None, full_path: str = "auto"):
    """Forward of `liveditor.isa.isa_attention` with `backend="triton"`. Returns `(out, plan)`."""
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    geom = plan.geometry if plan is not None else BlockGeometry.build(num_target, q.shape[1] - num_target, cfg.block_size, q.device)
    with torch.no_grad():
        coarse = coarse_attention(q, k, v, geom, 1.0 / math.sqrt(q.shape[-1]), pool_many=_pool_many(q, k, v))
        if plan is None:
            plan = make_plan(coarse, geom, cfg)
        out, _ = isa_forward(q, k, v, plan, coarse, gate=gate, full_path=full_path)
    return out, plan
