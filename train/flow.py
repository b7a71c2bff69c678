"""Flow matching as Wan trains it: the noising, the timestep samplers, the loss weights.

Forward process `x_t = (1 - s) x_0 + s e` for `s` in `[0, 1]`; the DiT sees timestep `1000 s` and
predicts the velocity `e - x_0`; the loss is the mean squared error of that prediction over the
target latents (the source latents sit clean in context and are never noised or scored).

Samplers of `s` (`TimestepConfig.sampler`):
- `shifted_uniform`: `u ~ U(0, 1)`, `s = shift u / (1 + (shift - 1) u)`, the same shift the
  sampler applies at inference (DiffSynth-Studio and VideoTuna train Wan this way, shift 5);
- `logit_normal`: `s = sigmoid(n)`, `n ~ N(mean, std)` (SD3; finetrainers and Open-Sora), then shifted
  when `shift != 1`.
Both can be limited to a timestep range `[min_timestep, max_timestep]` (training one Wan2.2-A14B
expert: the high-noise expert takes `t >= 875`), by inverse-CDF sampling inside the range, not by
rejection, so the sample count per step is fixed.

Loss weights (`TimestepConfig.weighting`): `none`, or `cosmap` (SD3's `2 / (pi (1 - 2 s + 2 s^2))`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

NUM_TRAIN_TIMESTEPS = 1000
SAMPLERS = ("shifted_uniform", "logit_normal")
WEIGHTINGS = ("none", "cosmap")


@dataclass(frozen=True)
class TimestepConfig:
    """How training timesteps are drawn (`configs/train/train.yaml`, `timesteps:`)."""

    sampler: str = "shifted_uniform"
    shift: float = 5.0
    logit_mean: float = 0.0
    logit_std: float = 1.0
    min_timestep: float = 0.0
    max_timestep: float = 1000.0
    weighting: str = "none"

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"timesteps.sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"timesteps.weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        if self.shift <= 0:
            raise ValueError(f"timesteps.shift must be > 0, got {self.shift}")
        if not 0.0 <= self.min_timestep < self.max_timestep <= NUM_TRAIN_TIMESTEPS:
            raise ValueError(
                f"timesteps.min_timestep={self.min_timestep} and max_timestep={self.max_timestep} must satisfy "
                f"0 <= min < max <= {NUM_TRAIN_TIMESTEPS}"
            )


def shift_sigma(u: torch.Tensor, shift: float) -> torch.Tensor:
    """`s = shift u / (1 + (shift - 1) u)`: the flow shift, monotone on `[0, 1]`."""
    return shift * u / (1.0 + (shift - 1.0) * u)


def unshift_sigma(s: torch.Tensor, shift: float) -> torch.Tensor:
    """Inverse of `shift_sigma`: `u = s / (shift - (shift - 1) s)`."""
    return s / (shift - (shift - 1.0) * s)


def _normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def sample_sigmas(batch: int, cfg: TimestepConfig, generator: torch.Generator) -> torch.Tensor:
    """`[batch]` float64 sigmas `s` in `[min_timestep, max_timestep] / 1000`, drawn on the CPU from `generator`.

    Every sampler draws `u ~ U(lo, hi)` and maps it through a monotone function, with `[lo, hi]` the
    preimage of the timestep range, so a range costs no rejection and changes no other draw.
    """
    s_lo = torch.tensor(cfg.min_timestep / NUM_TRAIN_TIMESTEPS, dtype=torch.float64)
    s_hi = torch.tensor(cfg.max_timestep / NUM_TRAIN_TIMESTEPS, dtype=torch.float64)
    # the unshifted variable, before the shift, of the range's ends
    v_lo, v_hi = unshift_sigma(s_lo, cfg.shift), unshift_sigma(s_hi, cfg.shift)
    if cfg.sampler == "logit_normal":
        # u is the normal CDF of the logit: v = sigmoid(mean + std * Phi^-1(u))
        def to_u(v):
            v = v.clamp(1e-12, 1 - 1e-12)
            return _normal_cdf((torch.log(v / (1 - v)) - cfg.logit_mean) / cfg.logit_std)
        u_lo, u_hi = to_u(v_lo), to_u(v_hi)
    else:
        u_lo, u_hi = v_lo, v_hi
    u = u_lo + (u_hi - u_lo) * torch.rand(batch, generator=generator, dtype=torch.float64)
    if cfg.sampler == "logit_normal":
        z = torch.special.ndtri(u.clamp(1e-12, 1 - 1e-12))
        v = torch.sigmoid(cfg.logit_mean + cfg.logit_std * z)
    else:
        v = u
    return shift_sigma(v, cfg.shift).clamp(s_lo, s_hi)


def loss_weight(sigmas: torch.Tensor, weighting: str) -> torch.Tensor:
    """Per-sample loss weight `[B]` for `sigmas` `[B]`."""
    if weighting == "none":
        return torch.ones_like(sigmas)
    if weighting == "cosmap":
        return 2.0 / (math.pi * (1.0 - 2.0 * sigmas + 2.0 * sigmas**2))
    raise ValueError(f"timesteps.weighting must be one of {WEIGHTINGS}, got {weighting!r}")


def noisy_latents(x0: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """`x_t = (1 - s) x0 + s e` with `sigmas` `[B]` broadcast over `[B, C, F, H, W]`."""
    s = sigmas.to(x0.dtype).view(-1, *([1] * (x0.dim() - 1)))
    return (1.0 - s) * x0 + s * noise


def flow_matching_loss(prediction: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Weighted MSE between the predicted and the true velocity `e - x0`, averaged per sample over
    `[C, F, H, W]` and then over the batch. All in float32."""
    target = (noise - x0).float()
    per_sample = (prediction.float() - target).pow(2).flatten(1).mean(1)
    if weights is not None:
        per_sample = per_sample * weights.to(per_sample)
    return per_sample.mean()
