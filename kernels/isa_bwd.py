"""Triton backward kernels of ISA's routed attention, and their launch glue.

The forward saved the routed output and the log-sum-exp `lse` of every query row (natural log, over
all the columns the row saw: exact tokens and centroid terms). With `p = exp(s - lse)` and
`delta = rowsum(dO * O_routed)`, every column of every row gets the usual softmax gradient
`ds = p * (dO . v_col - delta)`. Work is owned so that no kernel needs atomics:

* `isa_bwd_preprocess_kernel` (one program per query block): `delta`, and the gate shortcut's
  gradients `d_gate = dO . out_c[block]` per token and `d_out_c[block] = sum_t gate_t dO_t`.
* `isa_bwd_dq_kernel` (one program per query block, the forward's traversal): `dq` over exact blocks
  and centroid terms, optionally added to a dense SDPA call's `dq` for the same rows. The centroid
  terms are the forward's (`CentroidTerms`: the KV set's block means in slot order and a log2-count
  bias that is -inf at exact and padding slots), walked slot by slot without index lists.
* `isa_bwd_dkdv_kernel` (one program per KV-set block): `dk, dv` of the block's tokens from every
  query block that attends it exactly (all full query blocks, or none when a dense call covered
  them, plus the Taylor query blocks whose exact list holds it, read from a CSR inverse table),
  optionally added to a dense call's `dk, dv`.
* `isa_bwd_centroid_kernel` (one program per 64 KV-set slots and per group of Taylor query blocks):
  gradients of the centroid keys and values `d k_mean, d v_mean`, as partial sums per group,
  reduced afterwards; a centroid's gradient then reaches every token of its block through the mean.
  A Taylor block's row of the same bias table says which slots are its centroids.

Block spans are computed from the block index (`isa_fwd._span`) rather than loaded, so each loop
step's tiles are one load away from the step (compiled for sm_90: fewer stalling scalar loads and,
in the dq kernel's centroid loop, 361 instead of 848 instructions per step).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from liveditor.kernels.gather import token_major
from liveditor.kernels.isa_fwd import CentroidTerms, _dot, _rows, _span, interpreter_needs_upcast, span_geometry


@triton.jit
def isa_bwd_preprocess_kernel(
    DO, O, GATE, OUT_C, DELTA, DGATE, DOUT_C, BLOCK_START, BLOCK_LEN,
    LSE, FULL_SLOT, O_FULL, DO_FULL, LSE_FULL,  # only with HAS_FULL: rows for a dense backward
    sdo_b, sdo_s, sdo_h,
    so_b, so_s, so_h,
    sg_b, sg_s, sg_h,
    soc_b, soc_h, soc_n,
    sd_b, sd_h,
    sdg_b, sdg_s, sdg_h,
    sdoc_b, sdoc_h, sdoc_n,
    sfs_b, sfs_h,
    sof_b, sof_h, sof_s,
    sdof_b, sdof_h, sdof_s,
    slf_b, slf_h,
    H,
    BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr, HAS_GATE: tl.constexpr, HAS_FULL: tl.constexpr,
    WRITE_STATS: tl.constexpr,
):
    blk = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    start = tl.load(BLOCK_START + blk).to(tl.int64)
    length = tl.load(BLOCK_LEN + blk)
    offs = tl.arange(0, BLOCK)
    offs_d = tl.arange(0, HEAD_DIM)
    ok = offs < length
    if HAS_FULL:
        slot = tl.load(FULL_SLOT + b * sfs_b + h * sfs_h + blk)
        if not WRITE_STATS:
            ok = ok & (slot >= 0)  # rows only: nothing to read outside the full query blocks
    tok = start + offs
    do = _rows(DO, b, h, sdo_b, sdo_h, sdo_s, tok, ok, HEAD_DIM).to(tl.float32)
    o = _rows(O, b, h, so_b, so_h, so_s, tok, ok, HEAD_DIM).to(tl.float32)
    if HAS_GATE:
        # The saved output includes gate * out_c; delta and the dense backward need the routed part alone.
        g = tl.load(GATE + b * sg_b + h * sg_h + tok * sg_s, mask=ok, other=0.0)
        oc = tl.load(OUT_C + b * soc_b + h * soc_h + blk.to(tl.int64) * soc_n + offs_d)
        o = o - g[:, None] * oc[None, :]
        if WRITE_STATS:
            tl.store(DGATE + b * sdg_b + h * sdg_h + tok * sdg_s, tl.sum(do * oc[None, :], 1), mask=ok)
            tl.store(DOUT_C + b * sdoc_b + h * sdoc_h + blk.to(tl.int64) * sdoc_n + offs_d, tl.sum(do * g[:, None], 0))
    if WRITE_STATS:
        tl.store(DELTA + b * sd_b + h * sd_h + tok, tl.sum(do * o, 1), mask=ok)
    if HAS_FULL:
        if slot >= 0:
            # Padding rows get zero dO and zero lse, so they add nothing to dk and dv.
            rows = slot.to(tl.int64) * BLOCK + offs
            lse = tl.load(LSE + b * sd_b + h * sd_h + tok, mask=ok, other=0.0)
            tl.store(O_FULL + b * sof_b + h * sof_h + rows[:, None] * sof_s + offs_d[None, :], o.to(O_FULL.dtype.element_ty))
            tl.store(DO_FULL + b * sdof_b + h * sdof_h + rows[:, None] * sdof_s + offs_d[None, :], do.to(DO_FULL.dtype.element_ty))
            tl.store(LSE_FULL + b * slf_b + h * slf_h + rows, lse)


@triton.jit
def isa_bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ,
    KV_K_MEAN, KV_V_MEAN, KV_BIAS,  # centroid terms in the KV set's slot order (`CentroidTerms`); only with NC > 0
    QUERY_BLOCKS, EXACT_BLOCKS,
    INIT_DQ,
    sq_b, sq_s, sq_h,
    sk_b, sk_s, sk_h,
    sv_b, sv_s, sv_h,
    sdo_b, sdo_s, sdo_h,
    sl_b, sl_h,
    sdq_b, sdq_s, sdq_h,
    skm_b, skm_h, skm_n,
    svm_b, svm_h, svm_n,
    sx_b, sx_h, sx_q,
    sqb_b, sqb_h,
    se_b, se_h, se_q,
    sidq_b, sidq_h, sidq_s,
    H, NE, NC, scale,
    num_target, seq_len, n_target_blocks,  # the block geometry (see `_span`)
    BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr,
    HAS_INIT: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):
    pid_q = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    qb = tl.load(QUERY_BLOCKS + b * sqb_b + h * sqb_h + pid_q)
    q_start, q_len = _span(qb, num_target, seq_len, n_target_blocks, BLOCK)
    offs_m = tl.arange(0, BLOCK)
    offs_n = tl.arange(0, BLOCK)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < q_len
    tok_q = q_start.to(tl.int64) + offs_m
    # Padding rows read as zeros (q, dO, lse, delta): their dq is never stored.
    q = _rows(Q, b, h, sq_b, sq_h, sq_s, tok_q, row_ok, HEAD_DIM)
    do = _rows(DO, b, h, sdo_b, sdo_h, sdo_s, tok_q, row_ok, HEAD_DIM)
    lse2 = tl.load(LSE + b * sl_b + h * sl_h + tok_q, mask=row_ok, other=0.0) * 1.4426950408889634
    delta = tl.load(DELTA + b * sl_b + h * sl_h + tok_q, mask=row_ok, other=0.0)
    qk_scale = scale * 1.4426950408889634
    dq = tl.zeros([BLOCK, HEAD_DIM], dtype=tl.float32)

    # Exact blocks: spans computed from the index, so a step's tiles are one load away from it.
    exact_row = EXACT_BLOCKS + b * se_b + h * se_h + pid_q.to(tl.int64) * se_q
    for j in range(0, NE):
        kb = tl.load(exact_row + j)
        k_start, k_len = _span(kb, num_target, seq_len, n_target_blocks, BLOCK)
        col_ok = offs_n < k_len
        tok = k_start.to(tl.int64) + offs_n
        k = _rows(K, b, h, sk_b, sk_h, sk_s, tok, col_ok, HEAD_DIM)
        v = _rows(V, b, h, sv_b, sv_h, sv_s, tok, col_ok, HEAD_DIM)
        bias = tl.where(col_ok, 0.0, float("-inf"))
        s = _dot(q, tl.trans(k), DOT_PRECISION, UPCAST)
        p = tl.exp2(s * qk_scale + bias[None, :] - lse2[:, None])
        dp = _dot(do, tl.trans(v), DOT_PRECISION, UPCAST)
        ds = p * (dp - delta[:, None])
        dq += _dot(ds.to(k.dtype), k, DOT_PRECISION, UPCAST)

    # Centroid terms: the forward's slot walk (contiguous block means, a log2-count bias that is
    # -inf at exact and padding slots; NC is a multiple of BLOCK).
    km_base = KV_K_MEAN + b * skm_b + h * skm_h
    vm_base = KV_V_MEAN + b * svm_b + h * svm_h
    bias_row = KV_BIAS + b * sx_b + h * sx_h + pid_q.to(tl.int64) * sx_q
    for c0 in range(0, NC, BLOCK):
        slot = c0 + offs_n
        kc = tl.load(km_base + slot[:, None] * skm_n + offs_d[None, :])
        vc = tl.load(vm_base + slot[:, None] * svm_n + offs_d[None, :])
        bias = tl.load(bias_row + slot)
        s = _dot(q, tl.trans(kc), DOT_PRECISION, UPCAST)
        p = tl.exp2(s * qk_scale + bias[None, :] - lse2[:, None])
        dp = _dot(do, tl.trans(vc), DOT_PRECISION, UPCAST)
        ds = p * (dp - delta[:, None])
        dq += _dot(ds.to(kc.dtype), kc, DOT_PRECISION, UPCAST)

    dq = dq * scale
    if HAS_INIT:
        rows = pid_q.to(tl.int64) * BLOCK + offs_m
        dq += _rows(INIT_DQ, b, h, sidq_b, sidq_h, sidq_s, rows, row_ok, HEAD_DIM).to(tl.float32)
    tl.store(DQ + b * sdq_b + h * sdq_h + tok_q[:, None] * sdq_s + offs_d[None, :], dq.to(DQ.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def isa_bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV,
    KV_BLOCKS,  # [B, H, n_kv] the blocks this launch owns (one program each)
    FULL_QUERY_BLOCKS,  # [B, H, NF]
    FULL_ATTENDS,  # [B, H, n_kv] int32: 1 if the full query blocks attend this KV block here
    CSR_OFFSETS, CSR_QUERY_BLOCKS,  # [B, H, n_kv + 1], [B, H, n_pairs]: Taylor attendees per KV slot
    INIT_ROW,  # [B, H, n_kv] int32: first row of this block in INIT_DK/INIT_DV, or -1
    INIT_DK, INIT_DV,  # [B, H, L, D]
    sq_b, sq_s, sq_h,
    sk_b, sk_s, sk_h,
    sv_b, sv_s, sv_h,
    sdo_b, sdo_s, sdo_h,
    sl_b, sl_h,
    sdk_b, sdk_s, sdk_h,
    sdv_b, sdv_s, sdv_h,
    skv_b, skv_h,
    sfq_b, sfq_h,
    sfa_b, sfa_h,
    sco_b, sco_h,
    scq_b, scq_h,
    sir_b, sir_h,
    sidk_b, sidk_h, sidk_s,
    sidv_b, sidv_h, sidv_s,
    H, NF, scale,
    num_target, seq_len, n_target_blocks,  # the block geometry (see `_span`)
    BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr,
    HAS_INIT: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):
    slot = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    kb = tl.load(KV_BLOCKS + b * skv_b + h * skv_h + slot)
    k_start, k_len = _span(kb, num_target, seq_len, n_target_blocks, BLOCK)
    offs_m = tl.arange(0, BLOCK)
    offs_n = tl.arange(0, BLOCK)
    offs_d = tl.arange(0, HEAD_DIM)
    col_ok = offs_n < k_len
    tok_k = k_start.to(tl.int64) + offs_n
    k = _rows(K, b, h, sk_b, sk_h, sk_s, tok_k, col_ok, HEAD_DIM)
    v = _rows(V, b, h, sv_b, sv_h, sv_s, tok_k, col_ok, HEAD_DIM)
    qk_scale = scale * 1.4426950408889634
    dk = tl.zeros([BLOCK, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK, HEAD_DIM], dtype=tl.float32)

    n_full = tl.load(FULL_ATTENDS + b * sfa_b + h * sfa_h + slot) * NF
    c_lo = tl.load(CSR_OFFSETS + b * sco_b + h * sco_h + slot)
    c_hi = tl.load(CSR_OFFSETS + b * sco_b + h * sco_h + slot + 1)
    n_total = n_full + (c_hi - c_lo)
    full_row = FULL_QUERY_BLOCKS + b * sfq_b + h * sfq_h
    csr_row = CSR_QUERY_BLOCKS + b * scq_b + h * scq_h + (c_lo - n_full)
    for it in range(0, n_total):
        # One load per step (a pointer select between the two lists), spans computed from it: the
        # q and dO tiles are then one load away from the step and can be prefetched.
        qb = tl.load(tl.where(it < n_full, full_row + it, csr_row + it))
        q_start, q_len = _span(qb, num_target, seq_len, n_target_blocks, BLOCK)
        row_ok = offs_m < q_len
        tok_q = q_start.to(tl.int64) + offs_m
        q = _rows(Q, b, h, sq_b, sq_h, sq_s, tok_q, row_ok, HEAD_DIM)
        do = _rows(DO, b, h, sdo_b, sdo_h, sdo_s, tok_q, row_ok, HEAD_DIM)
        lse2 = tl.load(LSE + b * sl_b + h * sl_h + tok_q, mask=row_ok, other=0.0) * 1.4426950408889634
        delta = tl.load(DELTA + b * sl_b + h * sl_h + tok_q, mask=row_ok, other=0.0)
        # Transposed tile [keys, queries]: dk and dv accumulate over queries without transposes.
        # Padding query rows are masked; padding key rows only reach rows of dk, dv never stored.
        s_t = _dot(k, tl.trans(q), DOT_PRECISION, UPCAST)
        p_t = tl.exp2(s_t * qk_scale - lse2[None, :])
        p_t = tl.where(row_ok[None, :], p_t, 0.0)
        dv += _dot(p_t.to(do.dtype), do, DOT_PRECISION, UPCAST)
        dp_t = _dot(v, tl.trans(do), DOT_PRECISION, UPCAST)
        ds_t = p_t * (dp_t - delta[None, :])
        dk += _dot(ds_t.to(q.dtype), q, DOT_PRECISION, UPCAST)

    dk = dk * scale
    if HAS_INIT:
        row0 = tl.load(INIT_ROW + b * sir_b + h * sir_h + slot)
        if row0 >= 0:
            rows = row0.to(tl.int64) + offs_n
            dk += _rows(INIT_DK, b, h, sidk_b, sidk_h, sidk_s, rows, col_ok, HEAD_DIM).to(tl.float32)
            dv += _rows(INIT_DV, b, h, sidv_b, sidv_h, sidv_s, rows, col_ok, HEAD_DIM).to(tl.float32)
    tl.store(DK + b * sdk_b + h * sdk_h + tok_k[:, None] * sdk_s + offs_d[None, :], dk.to(DK.dtype.element_ty), mask=col_ok[:, None])
    tl.store(DV + b * sdv_b + h * sdv_h + tok_k[:, None] * sdv_s + offs_d[None, :], dv.to(DV.dtype.element_ty), mask=col_ok[:, None])


@triton.jit
def isa_bwd_centroid_kernel(
    Q, DO, LSE, DELTA,
    KV_K_MEAN, KV_V_MEAN, KV_BIAS,  # centroid terms in the KV set's slot order (`CentroidTerms`, NC slots)
    TAYLOR_QUERY_BLOCKS,  # [B, H, NT]
    DK_PART, DV_PART,  # [G, B, H, NC, D] fp32 partial sums
    sq_b, sq_s, sq_h,
    sdo_b, sdo_s, sdo_h,
    sl_b, sl_h,
    skm_b, skm_h, skm_n,
    svm_b, svm_h, svm_n,
    sx_b, sx_h, sx_q,
    stq_b, stq_h,
    sp_g, sp_b, sp_h, sp_n,
    H, NT, per_group, scale,
    num_target, seq_len, n_target_blocks,  # the block geometry (see `_span`)
    BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_C: tl.constexpr,
    DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):
    chunk = tl.program_id(0)
    group = tl.program_id(1)
    pid_bh = tl.program_id(2)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    offs_c = tl.arange(0, BLOCK_C)
    offs_m = tl.arange(0, BLOCK)
    offs_d = tl.arange(0, HEAD_DIM)
    slots = chunk * BLOCK_C + offs_c  # NC is a multiple of BLOCK_C: no bounds mask
    kc = tl.load(KV_K_MEAN + b * skm_b + h * skm_h + slots[:, None] * skm_n + offs_d[None, :])
    vc = tl.load(KV_V_MEAN + b * svm_b + h * svm_h + slots[:, None] * svm_n + offs_d[None, :])
    qk_scale = scale * 1.4426950408889634
    dkc = tl.zeros([BLOCK_C, HEAD_DIM], dtype=tl.float32)
    dvc = tl.zeros([BLOCK_C, HEAD_DIM], dtype=tl.float32)
    t_lo = group * per_group
    t_hi = tl.minimum(t_lo + per_group, NT)
    bias_base = KV_BIAS + b * sx_b + h * sx_h + slots
    for t in range(t_lo, t_hi):
        qb = tl.load(TAYLOR_QUERY_BLOCKS + b * stq_b + h * stq_h + t)
        q_start, q_len = _span(qb, num_target, seq_len, n_target_blocks, BLOCK)
        row_ok = offs_m < q_len
        tok_q = q_start.to(tl.int64) + offs_m
        # The Taylor block's bias row: log2 of the count where the slot is one of its centroids,
        # -inf where it attends the slot exactly (and at padding slots).
        bias = tl.load(bias_base + t * sx_q)
        q = _rows(Q, b, h, sq_b, sq_h, sq_s, tok_q, row_ok, HEAD_DIM)
        do = _rows(DO, b, h, sdo_b, sdo_h, sdo_s, tok_q, row_ok, HEAD_DIM)
        lse2 = tl.load(LSE + b * sl_b + h * sl_h + tok_q, mask=row_ok, other=0.0) * 1.4426950408889634
        delta = tl.load(DELTA + b * sl_b + h * sl_h + tok_q, mask=row_ok, other=0.0)
        s_t = _dot(kc, tl.trans(q), DOT_PRECISION, UPCAST)  # [centroids, queries]
        p_t = tl.exp2(s_t * qk_scale + bias[:, None] - lse2[None, :])
        p_t = tl.where(row_ok[None, :], p_t, 0.0)
        dvc += _dot(p_t.to(do.dtype), do, DOT_PRECISION, UPCAST)
        dp_t = _dot(vc, tl.trans(do), DOT_PRECISION, UPCAST)
        ds_t = p_t * (dp_t - delta[None, :])
        dkc += _dot(ds_t.to(q.dtype), q, DOT_PRECISION, UPCAST)
    dst = group.to(tl.int64) * sp_g + b * sp_b + h * sp_h + slots[:, None].to(tl.int64) * sp_n + offs_d[None, :]
    tl.store(DK_PART + dst, dkc * scale)
    tl.store(DV_PART + dst, dvc)


def _precision(dtype):
    return "ieee" if dtype == torch.float32 else "tf32"


def launch_preprocess(do, out, gate, out_c, block_start, block_len, block_size):
    """-> delta `[B, H, S]` fp32, d_gate `[B, S, H]` fp32 (or None), d_out_c `[B, H, nb, D]` fp32 (or None)."""
    B, S, H, D = do.shape
    nb = block_start.shape[0]
    delta = torch.empty((B, H, S), dtype=torch.float32, device=do.device)
    has_gate = gate is not None
    d_gate = torch.empty((B, S, H), dtype=torch.float32, device=do.device) if has_gate else None
    d_out_c = torch.empty((B, H, nb, D), dtype=torch.float32, device=do.device) if has_gate else None
    _preprocess(do, out, gate, out_c, block_start, block_len, block_size, delta, d_gate, d_out_c)
    return delta, d_gate, d_out_c


def launch_full_rows(do, out, gate, out_c, lse, full_slot, n_full, block_start, block_len, block_size):
    """Rows of the full query blocks for a dense backward: `(o_full, do_full, lse_full)`, `[B, H,
    n_full * bs, D]` (the routed output, `gate * out_c` removed), the same for dO, and `[B, H, n_full
    * bs]` fp32; `full_slot` `[B, H, nb]` is each block's slot (-1 outside the full query blocks).
    Every argument may be a head slice (`x[:, :, h0:h1]`, `lse[:, h0:h1]`, ...)."""
    B, S, H, D = do.shape
    rows = n_full * block_size
    full = (  # token-major like the other operands of the dense call (`token_major`)
        token_major(B, rows, H, D, out.dtype, do.device),
        token_major(B, rows, H, D, do.dtype, do.device),
        torch.zeros((B, H, rows), dtype=torch.float32, device=do.device),
    )
    _preprocess(do, out, gate, out_c, block_start, block_len, block_size, None, None, None, lse, full_slot, full)
    return full


def _preprocess(do, out, gate, out_c, block_start, block_len, block_size, delta, d_gate, d_out_c,
                lse=None, full_slot=None, full=None):
    B, S, H, D = do.shape
    nb = block_start.shape[0]
    if nb == 0 or B * H == 0:
        return
    has_gate = gate is not None
    has_full = full is not None
    stats = delta is not None
    # Without stats the LSE takes DELTA's place (it is read with DELTA's strides).
    delta_arg = delta if stats else lse
    dummy = delta_arg
    o_full, do_full, lse_full = full if has_full else (dummy, dummy, dummy)
    isa_bwd_preprocess_kernel[(nb, B * H)](
        do, out, gate if has_gate else dummy, out_c if has_gate else dummy, delta_arg,
        d_gate if (has_gate and stats) else dummy, d_out_c if (has_gate and stats) else dummy, block_start, block_len,
        lse if has_full else dummy, full_slot if has_full else dummy, o_full, do_full, lse_full,
        *do.stride()[:3], *out.stride()[:3],
        *(gate.stride()[:3] if has_gate else (0, 0, 0)),
        *(out_c.stride()[:3] if has_gate else (0, 0, 0)),
        *delta_arg.stride()[:2],
        *(d_gate.stride()[:3] if (has_gate and stats) else (0, 0, 0)),
        *(d_out_c.stride()[:3] if (has_gate and stats) else (0, 0, 0)),
        *(full_slot.stride()[:2] if has_full else (0, 0)),
        *(o_full.stride()[:3] if has_full else (0, 0, 0)),
        *(do_full.stride()[:3] if has_full else (0, 0, 0)),
        *(lse_full.stride()[:2] if has_full else (0, 0)),
        H, BLOCK=block_size, HEAD_DIM=D, HAS_GATE=has_gate, HAS_FULL=has_full, WRITE_STATS=stats, num_warps=4,
    )


def launch_dq(q, k, v, do, lse, delta, dq, query_blocks, exact_blocks, scale, block_size, num_target,
              centroids: CentroidTerms | None = None, init_dq=None):
    """dq of the rows of `query_blocks` `[B, H, NQ]` over `exact_blocks` `[B, H, NQ or 1, NE]` and,
    when given, the centroid terms (the forward's `CentroidTerms`)."""
    B, S, H, D = q.shape
    NQ = query_blocks.shape[-1]
    if NQ == 0 or B * H == 0:
        return
    se = exact_blocks.stride()
    has_init = init_dq is not None
    NC = 0 if centroids is None else centroids.k_mean.shape[2]
    if NC % block_size:
        raise ValueError(f"centroid tables must have a multiple of block_size={block_size} slots, got {NC}")
    km, vm, bias = CentroidTerms.absent(q) if centroids is None else centroids
    isa_bwd_dq_kernel[(NQ, B * H)](
        q, k, v, do, lse, delta, dq, km, vm, bias,
        query_blocks, exact_blocks,
        init_dq if has_init else dq,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3],
        *lse.stride()[:2], *dq.stride()[:3],
        *km.stride()[:3], *vm.stride()[:3], *bias.stride()[:3],
        *query_blocks.stride()[:2],
        se[0], se[1], 0 if exact_blocks.shape[2] == 1 else se[2],
        *(init_dq.stride()[:3] if has_init else (0, 0, 0)),
        H, exact_blocks.shape[-1], NC, float(scale),
        *span_geometry(num_target, S, block_size),
        BLOCK=block_size, HEAD_DIM=D, HAS_INIT=has_init,
        DOT_PRECISION=_precision(q.dtype), UPCAST=interpreter_needs_upcast(q.dtype),
        num_warps=4, num_stages=2,
    )


def launch_dkdv(q, k, v, do, lse, delta, dk, dv, kv_blocks, full_query_blocks, full_attends,
                csr_offsets, csr_query_blocks, scale, block_size, num_target,
                init_row=None, init_dk=None, init_dv=None):
    B, S, H, D = q.shape
    n_kv = kv_blocks.shape[-1]
    if n_kv == 0 or B * H == 0:
        return
    has_init = init_dk is not None
    if not has_init:
        init_row, init_dk, init_dv = full_attends, dk, dv
    isa_bwd_dkdv_kernel[(n_kv, B * H)](
        q, k, v, do, lse, delta, dk, dv,
        kv_blocks, full_query_blocks, full_attends, csr_offsets, csr_query_blocks,
        init_row, init_dk, init_dv,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3],
        *lse.stride()[:2], *dk.stride()[:3], *dv.stride()[:3],
        *kv_blocks.stride()[:2], *full_query_blocks.stride()[:2], *full_attends.stride()[:2],
        *csr_offsets.stride()[:2], *csr_query_blocks.stride()[:2], *init_row.stride()[:2],
        *(init_dk.stride()[:3] if has_init else (0, 0, 0)),
        *(init_dv.stride()[:3] if has_init else (0, 0, 0)),
        H, full_query_blocks.shape[-1], float(scale),
        *span_geometry(num_target, S, block_size),
        BLOCK=block_size, HEAD_DIM=D, HAS_INIT=has_init,
        DOT_PRECISION=_precision(q.dtype), UPCAST=interpreter_needs_upcast(q.dtype),
        num_warps=4, num_stages=2,
    )


def launch_centroid_grads(q, do, lse, delta, centroids: CentroidTerms, taylor_query_blocks, scale, block_size,
                          num_target, groups=None):
    """-> (d_k_mean, d_v_mean) `[B, H, nc, D]` fp32 per slot of the centroid tables (the KV set's
    slots, then padding slots, whose gradients are zero)."""
    B, S, H, D = q.shape
    km, vm, bias = centroids
    NC = km.shape[2]
    NT = taylor_query_blocks.shape[-1]
    BLOCK_C = block_size
    if NC % BLOCK_C:
        raise ValueError(f"centroid tables must have a multiple of block_size={block_size} slots, got {NC}")
    n_chunks = max(1, NC // BLOCK_C)
    if groups is None:
        # Enough programs to fill the GPU, few enough partial sums to reduce cheaply.
        groups = max(1, min(NT, triton.cdiv(528, max(1, n_chunks * B * H))))
    per_group = triton.cdiv(max(NT, 1), groups)
    groups = triton.cdiv(max(NT, 1), per_group)
    dk_part = torch.zeros((groups, B, H, NC, D), dtype=torch.float32, device=q.device)
    dv_part = torch.zeros_like(dk_part)
    if NT == 0 or NC == 0 or B * H == 0:
        return dk_part.sum(0), dv_part.sum(0)
    isa_bwd_centroid_kernel[(n_chunks, groups, B * H)](
        q, do, lse, delta, km, vm, bias, taylor_query_blocks,
        dk_part, dv_part,
        *q.stride()[:3], *do.stride()[:3], *lse.stride()[:2],
        *km.stride()[:3], *vm.stride()[:3], *bias.stride()[:3],
        *taylor_query_blocks.stride()[:2],
        *dk_part.stride()[:4],
        H, NT, per_group, float(scale),
        *span_geometry(num_target, S, block_size),
        BLOCK=block_size, HEAD_DIM=D, BLOCK_C=BLOCK_C,
        DOT_PRECISION=_precision(q.dtype), UPCAST=interpreter_needs_upcast(q.dtype),
        num_warps=4, num_stages=2,
    )
    return dk_part.sum(0), dv_part.sum(0)
