"""Shared input makers for ISA tests."""

import torch


def rel_l2(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.detach().double(), ref.detach().double()
    return float((out - ref).norm() / ref.norm().clamp_min(1e-30))


def make_qkv(B, Nt, Ns, H, D, dtype=torch.float32, device="cpu", growing_keys=False, seed=0):
    """Random q, k, v `[B, S, H, D]`; with `growing_keys`, key norms grow along the sequence so the
    running max of an online softmax must rise across KV blocks and centroid terms."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    S = Nt + Ns
    q, k, v = (torch.randn(B, S, H, D, generator=gen, dtype=torch.float64) for _ in range(3))
    if growing_keys:
        k = k * torch.linspace(0.2, 4.0, S, dtype=torch.float64).view(1, S, 1, 1)
        q = q * 1.5
    return tuple(t.to(dtype=dtype, device=device) for t in (q, k, v))
