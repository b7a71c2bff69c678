"""Dense attention that also returns the log-sum-exp, for merging partial softmax results.

On CUDA with fp16/bf16 it calls PyTorch's cuDNN attention ops (forward and backward); elsewhere it
computes the same thing in plain PyTorch.
"""

from __future__ import annotations

import torch


def _cudnn(q, k, v, scale):
    res = torch.ops.aten._scaled_dot_product_cudnn_attention(
        q, k, v, None, True, 0.0, False, False, scale=scale
    )
    return res[0], res[1]


def _math(q, k, v, scale):
    logits = (q.float() @ k.float().transpose(-1, -2)) * scale
    lse = torch.logsumexp(logits, dim=-1)
    out = torch.softmax(logits, dim=-1) @ v.float()
    return out.to(q.dtype), lse


_BACKENDS = {"cudnn": _cudnn, "math": _math}


def dense_attention_with_lse(q, k, v, scale: float, backend: str = "auto"):
    """`q` `[B, H, M, D]`, `k, v` `[B, H, N, D]` -> (`out` `[B, H, M, D]`, `lse` `[B, H, M]` fp32, natural log)."""
    if backend == "auto":
        backend = "cudnn" if (q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)) else "math"
    out, lse = _BACKENDS[backend](q, k, v, scale)
    if lse.dim() == 4:  # some releases return [B, H, M, 1]
        lse = lse.squeeze(-1)
    return out, lse.float()


def _cudnn_bwd(do, q, k, v, out, lse, scale):
    empty = torch.empty(0, device=q.device)
    # cuDNN keeps its softmax statistics as [B, H, M, 1].
    lse4 = lse.unsqueeze(-1).contiguous()
    return torch.ops.aten._scaled_dot_product_cudnn_attention_backward(
        do, q, k, v, out, lse4, empty, empty, None, None, None, q.shape[2], k.shape[2], 0.0, False, scale=scale
    )


def _math_bwd(do, q, k, v, out, lse, scale):
    qf, kf, vf, dof, of = (t.float() for t in (q, k, v, do, out))
    p = torch.exp(qf @ kf.transpose(-1, -2) * scale - lse.unsqueeze(-1))
    dv = p.transpose(-1, -2) @ dof
    ds = p * (dof @ vf.transpose(-1, -2) - (dof * of).sum(-1, keepdim=True))
    dq = ds @ kf * scale
    dk = ds.transpose(-1, -2) @ qf * scale
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


_BWD_BACKENDS = {"cudnn": _cudnn_bwd, "math": _math_bwd}


def dense_attention_backward(do, q, k, v, out, lse, scale: float, backend: str = "auto"):
    """Gradients of dense attention for a softmax whose statistics are given.

    `out` and `lse` `[B, H, M]` may describe a larger softmax than this call's columns (the rows'
    full routed softmax): the result is then the gradient restricted to these columns, which is
    how the SDPA full path shares a softmax with the Triton kernel's extra KV block.
    Returns `(dq, dk, dv)`.
    """
    if backend == "auto":
        backend = "cudnn" if (q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)) else "math"
    return _BWD_BACKENDS[backend](do, q, k, v, out, lse, scale)
