"""Dense attention that also returns the log-sum-exp, for merging partial softmax results.

On CUDA with fp16/bf16 it calls PyTorch's cuDNN attention op (flash as the fallback); elsewhere it
computes the same thing in plain PyTorch.
"""

from __future__ import annotations

import torch


def _cudnn(q, k, v, scale):
    res = torch.ops.aten._scaled_dot_product_cudnn_attention(
        q, k, v, None, True, 0.0, False, False, scale=scale
    )
    return res[0], res[1]


def _flash(q, k, v, scale):
    res = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, False, False, scale=scale)
    return res[0], res[1]


def _math(q, k, v, scale):
    logits = (q.float() @ k.float().transpose(-1, -2)) * scale
    lse = torch.logsumexp(logits, dim=-1)
    out = torch.softmax(logits, dim=-1) @ v.float()
    return out.to(q.dtype), lse


_BACKENDS = {"cudnn": _cudnn, "flash": _flash, "math": _math}


def dense_attention_with_lse(q, k, v, scale: float, backend: str = "auto"):
    """`q` `[B, H, M, D]`, `k, v` `[B, H, N, D]` -> (`out` `[B, H, M, D]`, `lse` `[B, H, M]` fp32, natural log)."""
    if backend == "auto":
        backend = "cudnn" if (q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)) else "math"
    out, lse = _BACKENDS[backend](q, k, v, scale)
    if lse.dim() == 4:  # some releases return [B, H, M, 1]
        lse = lse.squeeze(-1)
    return out, lse.float()
