"""Flow-matching sampling with classifier-free guidance, as in Wan.

Forward process `x_t = (1 - s) x_0 + s e`; the DiT predicts the velocity `e - x_0` at timestep
`1000 s`; sigmas are shifted, `s -> shift * s / (1 + (shift - 1) * s)`. The solvers are diffusers':
UniPC with flow sigmas (default) and the flow-match Euler scheduler.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

SAMPLERS = ("unipc", "euler")
NUM_TRAIN_TIMESTEPS = 1000


def make_scheduler(sampler: str = "unipc", shift: float = 6.0):
    """A diffusers scheduler for flow matching with shifted sigmas."""
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    if sampler == "unipc":
        return UniPCMultistepScheduler(
            num_train_timesteps=NUM_TRAIN_TIMESTEPS, prediction_type="flow_prediction",
            use_flow_sigmas=True, flow_shift=float(shift), solver_order=2,
        )
    if sampler == "euler":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, shift=float(shift))
    raise ValueError(f"sampling.sampler must be one of {SAMPLERS}, got {sampler!r}")


def flow_sigmas(steps: int) -> np.ndarray:
    """Unshifted sigmas of `steps` steps: `linspace(1, 1/1000, steps + 1)[:-1]` (Wan's flow UniPC
    schedule; both samplers use it, each scheduler applies the shift)."""
    return np.linspace(1.0, 1.0 / NUM_TRAIN_TIMESTEPS, steps + 1)[:-1]


def set_flow_timesteps(scheduler, steps: int, device=None) -> None:
    """Set `steps` shifted timesteps from sigma 1 down; the final sigma is 0."""
    scheduler.set_timesteps(sigmas=flow_sigmas(steps), device=device)


@dataclass
class Expert:
    """A denoiser and the timesteps it serves: `min_timestep <= t` (Wan2.2-A14B's high-noise expert
    takes `t >= boundary * 1000`, the low-noise expert the rest)."""

    model: torch.nn.Module
    min_timestep: float = 0.0


def pick_expert(experts: Sequence[Expert], timestep: float) -> int:
    """Index of the expert with the highest `min_timestep` not above `timestep`."""
    order = sorted(range(len(experts)), key=lambda i: -experts[i].min_timestep)
    for i in order:
        if timestep >= experts[i].min_timestep:
            return i
    return order[-1]


@torch.no_grad()
def sample_edit(
    experts: Sequence[Expert],
    noise: torch.Tensor,
    source_latents: torch.Tensor,
    text: torch.Tensor,
    negative_text: Optional[torch.Tensor],
    steps: int = 32,
    sampler: str = "unipc",
    shift: float = 6.0,
    guidance_scale: float = 2.5,
    isa_plan_reuse_steps: int = 1,
    progress: bool = True,
    callback: Optional[Callable[[int, float, torch.Tensor], None]] = None,
) -> torch.Tensor:
    """Denoise target latents from `noise` conditioned on `source_latents` and the text.

    Args:
        noise: `[1, C, F, h, w]` float32, the target latents at sigma 1.
        source_latents: `[1, C, F, h, w]` clean source latents (in context, never noised).
        text, negative_text: `[1, L, text_dim]` prompt and negative-prompt states (None: no CFG).
        guidance_scale: `v = v_neg + g (v_pos - v_neg)`; 1.0 runs the positive branch only.
        isa_plan_reuse_steps: make each branch's ISA plans every N steps and reuse them in between.
        callback: called as `callback(step_index, timestep, latents)` after each step.

    Returns the denoised latents `[1, C, F, h, w]` float32.
    """
    if steps < 1:
        raise ValueError(f"sampling.steps must be >= 1, got {steps}")
    if isa_plan_reuse_steps < 1:
        raise ValueError(f"sampling.isa_plan_reuse_steps must be >= 1, got {isa_plan_reuse_steps}")
    scheduler = make_scheduler(sampler, shift)
    set_flow_timesteps(scheduler, steps, noise.device)
    use_cfg = negative_text is not None and guidance_scale != 1.0
    latents = noise.float()
    plans: dict = {}
    last_expert = None
    for i, t in enumerate(tqdm(scheduler.timesteps, desc="denoising", unit="step", disable=not progress)):
        t_value = float(t)
        e = pick_expert(experts, t_value)
        if e != last_expert or i % isa_plan_reuse_steps == 0:
            plans = {}  # a new expert or a refresh step: route afresh
        last_expert = e
        model = experts[e].model
        timestep = torch.full((latents.shape[0],), t_value, device=latents.device)

        def branch(name, states):
            out, used = model(latents, timestep, states, source_latents, plans=plans.get(name), return_plans=True)
            if any(p is not None for p in used):
                plans[name] = used
            return out

        velocity = branch("cond", text)
        if use_cfg:
            velocity_neg = branch("uncond", negative_text)
            velocity = velocity_neg + guidance_scale * (velocity - velocity_neg)
        latents = scheduler.step(velocity, t, latents, return_dict=False)[0].float()
        if callback is not None:
            callback(i, t_value, latents)
    return latents
