"""Warp-specialised Hopper kernel for the Taylor path of ISA attention (Gluon).

Same math, tables and output as `isa_fwd_kernel` in its Taylor role (`launch_isa_fwd(...,
centroids=...)` without merge programs): one program owns one Taylor query block of one (batch,
head) and runs one online softmax over its exact KV blocks, token by token (partial blocks masked),
then over the centroid slots of the KV set (bias `log2 n_j`, -inf at exact and padding slots), and
writes `acc / l (+ gate * out_c[block])` and the natural-log LSE.

Why a second kernel: the Triton kernel's Taylor launch is latency-bound on an H100 (two programs
of four warps per SM, issue slots 40% busy, about 400 TFLOP/s on its routed FLOPs;
docs/isa_forward_notes.md). Here the work of a program is split between warps:

  * a producer warp issues the TMA copies: the query tile once, then, per step, a K and a V tile
    (an exact block of k and v, or 64 slots of the centroid tables) into a ring of `STAGES`
    shared-memory buffers, each guarded by a `ready` and an `empty` mbarrier;
  * the four warps of the default partition hold the query tile in registers (the A operand of
    `q k^T`, so that product reads only K from shared memory) and do the MMAs and the softmax, with
    no address arithmetic: a tile's address is the producer's business.

Reading tiles through TMA needs 16-byte aligned strides and heads laid out contiguously
(`supported` says when); the launch glue falls back to the Triton kernel otherwise.

K and v are read through one descriptor per segment (target, context), so the rows of a partial
block past its segment's end arrive as zeros, as the Triton kernel's masked loads give them, and
its columns are masked to -inf before the softmax.

Measured on an H100 (docs/benchmarks.md, 2026-11-23): 1.15-1.21x the Triton kernel's Taylor launch
at the Wan2.1-1.3B shape, bitwise equal output (same steps in the same order), and the whole
forward from 2.98-3.00x to 3.03-3.07x of cuDNN SDPA. FA3's overlap of a step's softmax with the
previous step's `P v`, FA3's ping-pong of two consumer warpgroups, the query tile as a
shared-memory operand and per-thread `empty` arrivals were tried and dropped (same file).

The exact reference is `liveditor.isa.reference`; the Triton kernel is `liveditor.kernels.isa_fwd`.
"""

from __future__ import annotations

import functools
import os

import torch

from liveditor.kernels.isa_fwd import span_geometry

try:  # Gluon is experimental; without it (an older Triton) only the Triton kernel runs.
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma, warpgroup_mma_wait
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
    AVAILABLE = True
except ImportError:  # pragma: no cover - depends on the installed Triton
    AVAILABLE = False

BLOCK = 64
# Two programs per H100 SM: shared memory 3 K/V buffers x 32 KB + the 16 KB query tile (114,956
# bytes with the barriers, bf16, D=128; an SM has 233,472 and keeps 1,024 per program), and
# registers: a program is 8 warps (the producer's warpgroup is padded to four), launched at 128
# registers a thread; the producer gives back all but 24 (`setmaxnreg`), so the four consumer
# warps run at 232, without spills (ptxas, Triton 3.6).
STAGES = 3
MAXNREG = 128


def supported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_size: int) -> bool:
    """Whether `launch_taylor` can run these inputs: Gluon present, a Hopper GPU, fp16/bf16, head dim
    64 or 128, 64-token blocks, each of q, k, v `[B, S, H, D]` with heads contiguous (`[B, S, H * D]`
    views) and 16-byte aligned strides and base. Where it holds, the Taylor launch runs here (measured
    faster than the Triton kernel, docs/benchmarks.md); elsewhere on `isa_fwd_kernel`."""
    if not AVAILABLE or not q.is_cuda or os.environ.get("TRITON_INTERPRET", "0") == "1":
        return False
    if torch.cuda.get_device_capability(q.device)[0] != 9:
        return False
    if q.dtype not in (torch.float16, torch.bfloat16) or q.shape[-1] not in (64, 128) or block_size != BLOCK:
        return False
    for t in (q, k, v):
        if t.stride(3) != 1 or t.stride(2) != t.shape[3] or t.data_ptr() % 16 or (t.stride(0) * 2) % 16 or (t.stride(1) * 2) % 16:
            return False
    return True


if AVAILABLE:
    PRODUCER_REGS = gl.constexpr(24)

    @gluon.jit
    def _span(blk, num_target, seq_len, n_target_blocks, BLOCK: gl.constexpr):
        """First token and real length of block `blk` (`BlockGeometry`'s layout; `isa_fwd._span`)."""
        in_ctx = blk >= n_target_blocks
        start = gl.where(in_ctx, num_target + (blk - n_target_blocks) * BLOCK, blk * BLOCK)
        end = gl.where(in_ctx, seq_len, num_target)
        return start, gl.minimum(end - start, BLOCK)

    @gluon.jit
    def _producer(q_desc, k_desc, v_desc, kc_desc, vc_desc, km_desc, vm_desc, q_smem, k_smem, v_smem, q_bar, ready, empty,
                  b, h, q_start, exact_row, n_exact, n_cent, cent_bh,
                  kv_num_target, kv_seq_len, kv_n_target_blocks,
                  BLOCK: gl.constexpr, HEAD_DIM: gl.constexpr, STAGES: gl.constexpr):
        """One warp: the query tile, then step by step a K and a V tile into buffer `step % STAGES`
        once the consumers have released it (`empty`), announced by `ready` with the bytes to land."""
        mbarrier.expect(q_bar, q_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(q_desc, [b, q_start, h * HEAD_DIM], q_bar, q_smem)
        nbytes: gl.constexpr = 2 * k_desc.block_type.nbytes
        for j in range(n_exact):
            st = j % STAGES
            kb = gl.load(exact_row + j)
            start, _ = _span(kb, kv_num_target, kv_seq_len, kv_n_target_blocks, BLOCK)
            # A fresh barrier counts as having completed the phase before its first: parity 1 passes.
            mbarrier.wait(empty.index(st), ((j // STAGES) & 1) ^ 1)
            mbarrier.expect(ready.index(st), nbytes)
            # One descriptor per segment, so the rows of a partial block past its segment's end
            # arrive as zeros, as the Triton kernel's masked loads give them.
            if kb < kv_n_target_blocks:
                tma.async_copy_global_to_shared(k_desc, [b, start, h * HEAD_DIM], ready.index(st), k_smem.index(st))
                tma.async_copy_global_to_shared(v_desc, [b, start, h * HEAD_DIM], ready.index(st), v_smem.index(st))
            else:
                row = start - kv_num_target
                tma.async_copy_global_to_shared(kc_desc, [b, row, h * HEAD_DIM], ready.index(st), k_smem.index(st))
                tma.async_copy_global_to_shared(vc_desc, [b, row, h * HEAD_DIM], ready.index(st), v_smem.index(st))
        for c in range(n_cent):
            i = n_exact + c
            st = i % STAGES
            mbarrier.wait(empty.index(st), ((i // STAGES) & 1) ^ 1)
            mbarrier.expect(ready.index(st), nbytes)
            tma.async_copy_global_to_shared(km_desc, [cent_bh, c * BLOCK, 0], ready.index(st), k_smem.index(st))
            tma.async_copy_global_to_shared(vm_desc, [cent_bh, c * BLOCK, 0], ready.index(st), v_smem.index(st))

    @gluon.jit
    def _softmax_step(s, v_tile, m_i, l_i, acc, p_op: gl.constexpr, row_o: gl.constexpr):
        """One online-softmax step over logits `s` (exp2 units, masked columns at -inf)."""
        m_new = gl.maximum(m_i, gl.max(s, 1))
        alpha = gl.exp2(m_i - m_new)
        p = gl.exp2(s - gl.expand_dims(m_new, 1))
        l_i = l_i * alpha + gl.sum(p, 1)
        acc = acc * gl.expand_dims(gl.convert_layout(alpha, row_o), 1)
        p16 = gl.convert_layout(p.to(v_tile.dtype), p_op)
        acc = warpgroup_mma(p16, v_tile, acc, is_async=True)
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
        return m_new, l_i, acc

    @gluon.jit
    def _epilogue(acc, m_i, l_i, O, LSE, GATE, OUT_C, b, h, qb, q_start, q_len,
                  so_b, so_s, so_h, sg_b, sg_s, sg_h, soc_b, soc_h, soc_n, sl_b, sl_h,
                  BLOCK: gl.constexpr, HEAD_DIM: gl.constexpr, HAS_GATE: gl.constexpr, STORE_LSE: gl.constexpr,
                  s_layout: gl.constexpr, o_layout: gl.constexpr):
        """`out = acc / l (+ gate * out_c[qb])` to the block's rows, and the natural-log LSE (`m_i`,
        `l_i` in `s_layout`'s rows, `acc` in `o_layout`, the consumer's layouts)."""
        row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
        row_o: gl.constexpr = gl.SliceLayout(1, o_layout)
        col_o: gl.constexpr = gl.SliceLayout(0, o_layout)
        out = acc / gl.expand_dims(gl.convert_layout(l_i, row_o), 1)
        rows_o = gl.arange(0, BLOCK, layout=row_o)
        offs_d = gl.arange(0, HEAD_DIM, layout=col_o)
        ok_o = rows_o < q_len
        tok = q_start.to(gl.int64) + rows_o
        b64 = b.to(gl.int64)
        if HAS_GATE:
            g = gl.load(GATE + b64 * sg_b + h * sg_h + tok * sg_s, mask=ok_o, other=0.0)
            oc = gl.load(OUT_C + b64 * soc_b + h * soc_h + qb.to(gl.int64) * soc_n + offs_d)
            out = out + gl.expand_dims(g, 1) * gl.expand_dims(oc, 0)
        o_ptrs = O + b64 * so_b + h * so_h + gl.expand_dims(tok * so_s, 1) + gl.expand_dims(offs_d, 0)
        gl.store(o_ptrs, out.to(O.dtype.element_ty), mask=gl.expand_dims(ok_o, 1))
        if STORE_LSE:
            rows_s = gl.arange(0, BLOCK, layout=row_s)
            lse = (m_i + gl.log2(l_i)) * 0.6931471805599453
            gl.store(LSE + b64 * sl_b + h * sl_h + q_start + rows_s, lse, mask=rows_s < q_len)

    @gluon.jit
    def _consumer(q_smem, k_smem, v_smem, q_bar, ready, empty,
                  O, LSE, GATE, OUT_C, exact_row, bias_row,
                  b, h, qb, q_start, q_len, n_exact, n_cent,
                  so_b, so_s, so_h, sg_b, sg_s, sg_h, soc_b, soc_h, soc_n, sl_b, sl_h,
                  qk_scale, kv_num_target, kv_seq_len, kv_n_target_blocks,
                  BLOCK: gl.constexpr, HEAD_DIM: gl.constexpr, HAS_GATE: gl.constexpr, STORE_LSE: gl.constexpr,
                  STAGES: gl.constexpr, num_warps: gl.constexpr):
        """The default partition (four warps, one warpgroup): per step, wait for the tiles, `s = q k^T`,
        mask or bias, one online-softmax step with `P v`, release the buffer; then the epilogue.
        Each step waits for its own products: the SM's second program fills the gaps (FA3's overlap
        inside the warpgroup measured slower here)."""
        s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                           instr_shape=[16, BLOCK, 16])
        o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                           instr_shape=[16, HEAD_DIM, 16])
        q_op: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=s_layout, k_width=2)
        p_op: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
        row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
        col_s: gl.constexpr = gl.SliceLayout(0, s_layout)
        row_o: gl.constexpr = gl.SliceLayout(1, o_layout)

        mbarrier.wait(q_bar, 0)
        q = q_smem.reshape([BLOCK, HEAD_DIM]).load(q_op)
        m_i = gl.full([BLOCK], -1.0e30, gl.float32, row_s)
        l_i = gl.zeros([BLOCK], gl.float32, row_s)
        acc = gl.zeros([BLOCK, HEAD_DIM], gl.float32, o_layout)
        s_init = gl.zeros([BLOCK, BLOCK], gl.float32, s_layout)
        offs_n = gl.arange(0, BLOCK, layout=col_s)

        for j in range(n_exact):
            st = j % STAGES
            kb = gl.load(exact_row + j)
            _, length = _span(kb, kv_num_target, kv_seq_len, kv_n_target_blocks, BLOCK)
            mbarrier.wait(ready.index(st), (j // STAGES) & 1)
            k_t = k_smem.index(st).reshape([BLOCK, HEAD_DIM]).permute((1, 0))
            s = warpgroup_mma(q, k_t, s_init, use_acc=False, is_async=True)
            s = warpgroup_mma_wait(num_outstanding=0, deps=(s,))
            s = gl.where(gl.expand_dims(offs_n < length, 0), s * qk_scale, float("-inf"))
            m_i, l_i, acc = _softmax_step(s, v_smem.index(st).reshape([BLOCK, HEAD_DIM]), m_i, l_i, acc, p_op, row_o)
            mbarrier.arrive(empty.index(st), count=1)

        for c in range(n_cent):
            i = n_exact + c
            st = i % STAGES
            bias = gl.load(bias_row + c * BLOCK + offs_n)
            mbarrier.wait(ready.index(st), (i // STAGES) & 1)
            k_t = k_smem.index(st).reshape([BLOCK, HEAD_DIM]).permute((1, 0))
            s = warpgroup_mma(q, k_t, s_init, use_acc=False, is_async=True)
            s = warpgroup_mma_wait(num_outstanding=0, deps=(s,))
            s = s * qk_scale + gl.expand_dims(bias, 0)
            m_i, l_i, acc = _softmax_step(s, v_smem.index(st).reshape([BLOCK, HEAD_DIM]), m_i, l_i, acc, p_op, row_o)
            mbarrier.arrive(empty.index(st), count=1)

        _epilogue(acc, m_i, l_i, O, LSE, GATE, OUT_C, b, h, qb, q_start, q_len,
                  so_b, so_s, so_h, sg_b, sg_s, sg_h, soc_b, soc_h, soc_n, sl_b, sl_h,
                  BLOCK, HEAD_DIM, HAS_GATE, STORE_LSE, s_layout, o_layout)

    @gluon.jit
    def taylor_fwd_kernel(
        q_desc,  # q as [B, S, H * D], block [1, BLOCK, D]
        k_desc, v_desc,  # the target segment of k, v: [B, num_target, H * D]
        kc_desc, vc_desc,  # the context segment: [B, S - num_target, H * D]
        km_desc, vm_desc,  # centroid tables `[B * H, NC, D]`, block [1, BLOCK, D]
        O, LSE, GATE, OUT_C,
        QUERY_BLOCKS, EXACT_BLOCKS, KV_BIAS,
        so_b, so_s, so_h,
        sqb_b, sqb_h,
        se_b, se_h, se_q,
        sx_b, sx_h, sx_q,
        sg_b, sg_s, sg_h,
        soc_b, soc_h, soc_n,
        sl_b, sl_h,
        H, NE, NC, scale,
        num_target, seq_len, n_target_blocks,  # the block geometry of q (see `_span`)
        kv_num_target, kv_seq_len, kv_n_target_blocks,  # of k's and v's blocks (`launch_taylor`'s kv_geometry)
        BLOCK: gl.constexpr,
        HEAD_DIM: gl.constexpr,
        HAS_GATE: gl.constexpr,
        STORE_LSE: gl.constexpr,
        STAGES: gl.constexpr,
        num_warps: gl.constexpr,
    ):
        """Grid `(NQ, B * H)`, four warps plus the producer's (`launch_taylor`); tables as in
        `isa_fwd_kernel` (`EXACT_BLOCKS` may share one row across query blocks: `se_q = 0`)."""
        pid_q = gl.program_id(0)
        pid_bh = gl.program_id(1)
        b = pid_bh // H
        h = pid_bh % H
        b64 = b.to(gl.int64)
        qb = gl.load(QUERY_BLOCKS + b64 * sqb_b + h * sqb_h + pid_q)
        q_start, q_len = _span(qb, num_target, seq_len, n_target_blocks, BLOCK)
        exact_row = EXACT_BLOCKS + b64 * se_b + h * se_h + pid_q.to(gl.int64) * se_q
        bias_row = KV_BIAS + b64 * sx_b + h * sx_h + pid_q.to(gl.int64) * sx_q
        n_cent = NC // BLOCK
        qk_scale = scale * 1.4426950408889634

        dtype: gl.constexpr = q_desc.dtype
        q_smem = gl.allocate_shared_memory(dtype, q_desc.block_type.shape, q_desc.layout)
        k_smem = gl.allocate_shared_memory(dtype, [STAGES] + k_desc.block_type.shape, k_desc.layout)
        v_smem = gl.allocate_shared_memory(dtype, [STAGES] + v_desc.block_type.shape, v_desc.layout)
        q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        mbarrier.init(q_bar, count=1)
        for i in gl.static_range(STAGES):
            mbarrier.init(ready.index(i), count=1)
            mbarrier.init(empty.index(i), count=1)

        gl.warp_specialize(
            [(_consumer, (q_smem, k_smem, v_smem, q_bar, ready, empty,
                          O, LSE, GATE, OUT_C, exact_row, bias_row,
                          b, h, qb, q_start, q_len, NE, n_cent,
                          so_b, so_s, so_h, sg_b, sg_s, sg_h, soc_b, soc_h, soc_n, sl_b, sl_h,
                          qk_scale, kv_num_target, kv_seq_len, kv_n_target_blocks,
                          BLOCK, HEAD_DIM, HAS_GATE, STORE_LSE, STAGES, num_warps)),
             (_producer, (q_desc, k_desc, v_desc, kc_desc, vc_desc, km_desc, vm_desc, q_smem, k_smem, v_smem, q_bar, ready, empty,
                          b, h, q_start, exact_row, NE, n_cent, pid_bh,
                          kv_num_target, kv_seq_len, kv_n_target_blocks, BLOCK, HEAD_DIM, STAGES))],
            [1], [PRODUCER_REGS])


@functools.lru_cache(maxsize=None)
def _tile_layout(dtype: torch.dtype, head_dim: int):
    """Shared-memory layout of a `[1, BLOCK, head_dim]` tile (cached: the launch is on the host's
    critical path only in small, host-bound calls, but it runs once per forward)."""
    return gl.NVMMASharedLayout.get_default_for([1, BLOCK, head_dim], gl.bfloat16 if dtype == torch.bfloat16 else gl.float16)


def _rows_desc(t: torch.Tensor, layout) -> "TensorDescriptor":
    """`t` `[B, S, H, D]` as `[B, S, H * D]` (heads contiguous), tiles of BLOCK tokens of one head."""
    B, S, H, D = t.shape
    return TensorDescriptor(t, [B, S, H * D], [t.stride(0), t.stride(1), 1], [1, BLOCK, D], layout)


def _segment_descs(t: torch.Tensor, num_target: int, layout):
    """`_rows_desc` of the target tokens and of the context tokens of `t`: a tile read past its
    segment's end is filled with zeros. An empty segment borrows the other's descriptor (no block
    of it is ever read)."""
    S = t.shape[1]
    target = _rows_desc(t[:, :num_target], layout) if num_target > 0 else None
    context = _rows_desc(t[:, num_target:], layout) if num_target < S else None
    return target or context, context or target


def _table_desc(t: torch.Tensor, layout) -> "TensorDescriptor":
    """A centroid table `[B, H, NC, D]` as `[B * H, NC, D]`."""
    B, H, NC, D = t.shape
    t = t.reshape(B * H, NC, D)
    return TensorDescriptor(t, [B * H, NC, D], [t.stride(0), t.stride(1), 1], [1, BLOCK, D], layout)


def launch_taylor(q, k, v, out, query_blocks, exact_blocks, centroids, num_target: int, scale: float,
                  gate=None, out_c=None, lse=None, kv_geometry=None):
    """The Taylor launch (`launch_isa_fwd(q, k, v, out, query_blocks, exact_blocks, centroids=...)`
    without merge programs) on this kernel. Call only where `supported(q, k, v, 64)` holds.
    `kv_geometry`: as `launch_isa_fwd`'s (k's and v's block layout; by default q's)."""
    B, S, H, D = q.shape
    NQ = query_blocks.shape[-1]
    if NQ == 0 or B * H == 0:
        return
    NE = exact_blocks.shape[-1]
    NC = centroids.k_mean.shape[2]
    if centroids.k_mean.dtype != q.dtype or centroids.v_mean.dtype != q.dtype:
        raise ValueError(f"centroid tables must be in q's dtype {q.dtype} (k_mean {centroids.k_mean.dtype}, "
                         f"v_mean {centroids.v_mean.dtype}): build them with centroid_terms(..., dtype=q.dtype)")
    if NE + NC == 0:
        raise ValueError("a Taylor query block needs at least one exact block or centroid slot (an empty KV set?)")
    if NC % BLOCK or centroids.bias.shape[-1] != NC:
        raise ValueError(f"centroid tables must have a multiple of {BLOCK} slots (k_mean {tuple(centroids.k_mean.shape)}, "
                         f"bias {tuple(centroids.bias.shape)}); pad with -inf biases")
    layout = _tile_layout(q.dtype, D)
    km = centroids.k_mean.contiguous()
    vm = centroids.v_mean.contiguous()
    se = exact_blocks.stride()
    bias = centroids.bias
    dummy = bias
    has_gate = gate is not None
    kv_geometry = kv_geometry if kv_geometry is not None else span_geometry(num_target, S, BLOCK)
    k_t, k_c = _segment_descs(k, kv_geometry[0], layout)
    v_t, v_c = _segment_descs(v, kv_geometry[0], layout)
    taylor_fwd_kernel[(NQ, B * H)](
        _rows_desc(q, layout), k_t, v_t, k_c, v_c,
        _table_desc(km, layout), _table_desc(vm, layout),
        out, lse if lse is not None else dummy, gate if has_gate else dummy, out_c if has_gate else dummy,
        query_blocks, exact_blocks, bias,
        *out.stride()[:3],
        *query_blocks.stride()[:2],
        se[0], se[1], 0 if exact_blocks.shape[2] == 1 else se[2],
        *bias.stride()[:3],
        *(gate.stride()[:3] if has_gate else (0, 0, 0)),
        *(out_c.stride()[:3] if has_gate else (0, 0, 0)),
        *(lse.stride()[:2] if lse is not None else (0, 0)),
        H, NE, NC, float(scale),
        *span_geometry(num_target, S, BLOCK), *kv_geometry,
        BLOCK=BLOCK, HEAD_DIM=D, HAS_GATE=has_gate, STORE_LSE=lse is not None, STAGES=STAGES,
        num_warps=4, maxnreg=MAXNREG,
    )


def compile_for_hopper(head_dim: int = 128, dtype: str = "bf16"):
    """`taylor_fwd_kernel` compiled for sm_90 without a GPU (gate and LSE on), as `launch_taylor`
    launches it: for tests and for reading its PTX (`.asm["ptx"]`) and shared memory
    (`.metadata.shared`)."""
    import inspect

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    names = list(inspect.signature(taylor_fwd_kernel.fn).parameters)
    layout = gl.NVMMASharedLayout.get_default_for([1, BLOCK, head_dim], gl.bfloat16 if dtype == "bf16" else gl.float16)
    const = dict(BLOCK=BLOCK, HEAD_DIM=head_dim, HAS_GATE=True, STORE_LSE=True, STAGES=STAGES, num_warps=4)
    types = {"O": f"*{dtype}", "LSE": "*fp32", "GATE": "*fp32", "OUT_C": "*fp32", "KV_BIAS": "*fp32",
             "QUERY_BLOCKS": "*i32", "EXACT_BLOCKS": "*i32", "scale": "fp32"}
    sig = {n: (f"tensordesc<{dtype}[1, {BLOCK}, {head_dim}],{layout!r}>" if n.endswith("_desc")
               else "constexpr" if n in const else types.get(n, "i32")) for n in names}
    src = GluonASTSource(fn=taylor_fwd_kernel, signature=sig, constexprs={(names.index(n),): v for n, v in const.items()})
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=4, maxnreg=MAXNREG))
