"""FLOP counts of the editor DiT, for MFU and benchmarks.

A multiply-add is 2 FLOPs. Per sample, with `S = Nt + Ns` tokens in context, `L = text_len` text tokens
(the DiT zero-pads the prompt to `text_len`, so the cross-attention always sees L), width `d`,
MLP width `f`, and per block:

    self-attention projections q, k, v, o      4 * 2 S d^2
    self-attention scores and values (dense)   2 * 2 S^2 d
    ISA gate alpha_1                           2 S d
    cross-attention q, o on S tokens           2 * 2 S d^2
    cross-attention k, v on L text tokens      2 * 2 L d^2
    cross-attention scores and values          2 * 2 S L d
    MLP                                        2 * 2 S d f

plus the patch embeddings (`2 S d c p`, `c p` = channels x patch volume), the text embedding MLP
(`2 L (t d + d^2)`), and the head on the Nt target tokens (`2 Nt d c p`). Training counts 3x the
forward (the backward is twice the forward); the recomputation of gradient checkpointing is not
counted, as in the usual MFU definition. For ISA runs the attention term is the dense one, so their
MFU reads as "dense-equivalent": the dense model's work per second.
"""

from __future__ import annotations

import math

from liveditor.models.config import DiTConfig

# Dense bf16 tensor-core peaks, TFLOP/s (vendor datasheets, SXM parts, no sparsity).
PEAK_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "H800": 989.4, "B200": 2250.0}


def dit_forward_flops(cfg: DiTConfig, num_target: int, num_source: int, text_len: int | None = None) -> float:
    """Forward FLOPs of one sample (see the module docstring)."""
    S, L = num_target + num_source, int(text_len or cfg.text_len)
    d, f, cp = cfg.dim, cfg.ffn_dim, cfg.in_dim * math.prod(cfg.patch_size)
    per_block = 8 * S * d * d + 4 * S * S * d + 2 * S * d + 4 * S * d * d + 4 * L * d * d + 4 * S * L * d + 4 * S * d * f
    embed = 2 * S * d * cp + 2 * L * (cfg.text_dim * d + d * d) + 2 * num_target * d * cfg.out_dim * math.prod(cfg.patch_size)
    return float(cfg.num_layers * per_block + embed)


def dit_train_flops(cfg: DiTConfig, num_target: int, num_source: int, text_len: int | None = None) -> float:
    """Training FLOPs of one sample: forward plus backward, 3x the forward."""
    return 3.0 * dit_forward_flops(cfg, num_target, num_source, text_len)


def tokens_of(cfg: DiTConfig, latent_shape) -> int:
    """Tokens of latents `[C, F, H, W]` (or `[B, C, F, H, W]`) after the patch embedding."""
    f, h, w = latent_shape[-3:]
    pt, ph, pw = cfg.patch_size
    return (f // pt) * (h // ph) * (w // pw)


def peak_tflops(device_name: str) -> float | None:
    """Dense bf16 peak of a GPU by its name (e.g. "NVIDIA H100 80GB HBM3"), None when unknown."""
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in device_name.upper():
            return value
    return None
