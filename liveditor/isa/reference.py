"""Exact reference of ISA attention in plain PyTorch: the spec the kernels are tested against.

It follows DESIGN.md step by step, computes in float32 (float64 for float64 inputs), runs on any
device, and bounds its memory by processing query blocks in chunks. It is written for clarity, not
speed: the Triton kernels in `liveditor.kernels` are the fast path.
"""

from __future__ import annotations

import torch

from liveditor.isa.plan import BlockGeometry, CoarseAttention, ISAPlan, accumulation_dtype

# Upper bound on the elements of one chunk's logit tensor (keeps the reference usable at real sizes).
_MAX_CHUNK_ELEMENTS = 1 << 26


def _block_token_index(blocks: torch.Tensor, geom: BlockGeometry):
    """Token indices of `blocks` `[..., n]` -> (`[..., n * bs]` index, `[..., n * bs]` validity).

    Padding slots of partial blocks point at token 0 and are marked invalid.
    """
    bs = geom.block_size
    blocks = blocks.long()
    offs = torch.arange(bs, device=blocks.device)
    start = geom.block_start[blocks].unsqueeze(-1)
    length = geom.block_len[blocks].unsqueeze(-1)
    valid = offs < length
    index = torch.where(valid, start + offs, torch.zeros_like(start))
    return index.flatten(-2), valid.flatten(-2)


def _gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """`x` `[B, H, S, D]`, `index` `[B, H, ...]` -> `[B, H, ..., D]`."""
    B, H, _, D = x.shape
    flat = index.reshape(B, H, -1)
    out = x.gather(2, flat.unsqueeze(-1).expand(-1, -1, -1, D))
    return out.reshape(*index.shape, D)


def _scatter_rows(out: torch.Tensor, index: torch.Tensor, valid: torch.Tensor, rows: torch.Tensor):
    """Write `rows` `[B, H, n, D]` to `out` `[B, H, S + 1, D]` at `index`; invalid rows go to slot S."""
    dump = out.shape[2] - 1
    index = torch.where(valid, index, torch.full_like(index, dump))
    out.scatter_(2, index.unsqueeze(-1).expand(-1, -1, -1, out.shape[-1]), rows)


def routed_attention(q, k, v, plan: ISAPlan, coarse: CoarseAttention, scale: float) -> torch.Tensor:
    """Steps 5 and 6: the routed output `[B, S, H, D]` in the accumulation dtype (no gate term)."""
    geom = plan.geometry
    acc = accumulation_dtype(q.dtype)
    bs = geom.block_size
    B, S, H, D = q.shape
    qh, kh, vh = (t.permute(0, 2, 1, 3).to(acc) for t in (q, k, v))
    out = qh.new_zeros((B, H, S + 1, D))

    # Full path: exact softmax over every token of the KV set.
    kv_index, kv_valid = _block_token_index(plan.kv_blocks, geom)  # [B, H, L]
    k_set, v_set = _gather_tokens(kh, kv_index), _gather_tokens(vh, kv_index)
    kv_bias = torch.zeros(kv_valid.shape, dtype=acc, device=q.device).masked_fill(~kv_valid, float("-inf"))
    n_full = plan.full_query_blocks.shape[-1]
    chunk = max(1, _MAX_CHUNK_ELEMENTS // max(1, B * H * bs * kv_index.shape[-1]))
    for c0 in range(0, n_full, chunk):
        q_index, q_valid = _block_token_index(plan.full_query_blocks[..., c0 : c0 + chunk], geom)
        logits = _gather_tokens(qh, q_index) @ k_set.transpose(-1, -2) * scale + kv_bias.unsqueeze(2)
        _scatter_rows(out, q_index, q_valid, torch.softmax(logits, dim=-1) @ v_set)

    # Taylor path: exact tokens of a few KV blocks plus one centroid term per other KV block.
    log_count = geom.block_len.to(acc).log()
    n_taylor = plan.taylor_query_blocks.shape[-1]
    n_exact = plan.taylor_exact_kv_blocks.shape[-1]
    n_centroid = plan.taylor_centroid_kv_blocks.shape[-1]
    chunk = max(1, _MAX_CHUNK_ELEMENTS // max(1, B * H * bs * (n_exact * bs + n_centroid)))
    for c0 in range(0, n_taylor, chunk):
        blocks = plan.taylor_query_blocks[..., c0 : c0 + chunk]
        c = blocks.shape[-1]
        q_index, q_valid = _block_token_index(blocks, geom)
        q_tok = _gather_tokens(qh, q_index.view(B, H, c, bs))  # [B, H, c, bs, D]

        ex_index, ex_valid = _block_token_index(plan.taylor_exact_kv_blocks[..., c0 : c0 + chunk, :], geom)
        ex_bias = torch.zeros(ex_valid.shape, dtype=acc, device=q.device).masked_fill(~ex_valid, float("-inf"))
        logits_exact = q_tok @ _gather_tokens(kh, ex_index).transpose(-1, -2) * scale + ex_bias.unsqueeze(-2)

        cen = plan.taylor_centroid_kv_blocks[..., c0 : c0 + chunk, :].long()  # [B, H, c, n_centroid]
        k_cen = _gather_tokens(coarse.k_mean, cen)
        v_cen = _gather_tokens(coarse.v_mean, cen)
        # A centroid stands for n_j tokens: weight n_j * exp(logit) == exp(logit + log n_j).
        logits_cen = q_tok @ k_cen.transpose(-1, -2) * scale + log_count[cen].unsqueeze(-2)

        probs = torch.softmax(torch.cat([logits_exact, logits_cen], dim=-1), dim=-1)
        p_exact, p_cen = probs.split([logits_exact.shape[-1], n_centroid], dim=-1)
        rows = p_exact @ _gather_tokens(vh, ex_index) + p_cen @ v_cen
        _scatter_rows(out, q_index, q_valid, rows.reshape(B, H, c * bs, D))

    return out[:, :, :S].permute(0, 2, 1, 3)


def coarse_output_per_token(coarse: CoarseAttention, geom: BlockGeometry) -> torch.Tensor:
    """`out_c` broadcast from blocks to tokens: `[B, S, H, D]`."""
    return coarse.out[:, :, geom.token_block()].permute(0, 2, 1, 3)
