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

from liveditor.isa import SharedPlan
from liveditor.pipeline.components import bar_options

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
    progress=True,
    callback: Optional[Callable[[int, float, torch.Tensor], Optional[torch.Tensor]]] = None,
    batch_cfg: bool = True,
    share_first_plan: bool = True,
) -> torch.Tensor:
    """Denoise target latents from `noise` conditioned on `source_latents` and the text.

    Args:
        noise: `[B, C, F, h, w]` float32, the target latents at sigma 1 (B edits at once).
        source_latents: `[B, C, F, h, w]` (or `[1, ...]`, shared) clean source latents (in context,
            never noised).
        text, negative_text: `[B, L, text_dim]` (or `[1, ...]`, shared) prompt and negative-prompt
            states (`negative_text` None: no CFG).
        guidance_scale: `v = v_neg + g (v_pos - v_neg)`; 1.0 runs the positive branch only.
        isa_plan_reuse_steps: make the ISA plans every N steps and reuse them in between.
        progress: a bar over the steps: True, False, or a dict of tqdm keyword arguments
            (`components.bar_options`).
        callback: called as `callback(step_index, timestep, latents)` after each step; a tensor it
            returns replaces the latents.
        batch_cfg: run the conditional and unconditional branches as one forward of batch `2B`
            (`False`: two forwards of batch `B`). Same result either way, up to the float rounding
            of a larger batch.
        share_first_plan: with `batch_cfg` and ISA, route the first block once for both branches.
            Its q and k come from the latents, the source and the timestep only (text enters
            through the cross-attention after it), so the two branches' first-block plans are the
            same decisions; every later block sees text-dependent tokens and is routed per branch.

    Returns the denoised latents `[B, C, F, h, w]` float32.
    """
    if steps < 1:
        raise ValueError(f"sampling.steps must be >= 1, got {steps}")
    if isa_plan_reuse_steps < 1:
        raise ValueError(f"sampling.isa_plan_reuse_steps must be >= 1, got {isa_plan_reuse_steps}")
    scheduler = make_scheduler(sampler, shift)
    set_flow_timesteps(scheduler, steps, noise.device)
    use_cfg = negative_text is not None and guidance_scale != 1.0
    latents = noise.float()
    B = latents.shape[0]
    source_latents = _batched(source_latents, B, "source_latents")
    text = _batched(text, B, "text")
    if use_cfg:
        negative_text = _batched(negative_text, B, "negative_text")
        if batch_cfg:
            both_text = _padded_cat(text, negative_text)
            both_source = torch.cat([source_latents, source_latents])
    plans: dict = {}
    last_expert = None
    shown, bar = bar_options(progress)
    for i, t in enumerate(tqdm(scheduler.timesteps, **{"desc": "denoising", "unit": "step", **bar, "disable": not shown})):
        t_value = float(t)
        e = pick_expert(experts, t_value)
        if e != last_expert or i % isa_plan_reuse_steps == 0:
            plans = {}  # a new expert or a refresh step: route afresh
        last_expert = e
        model = experts[e].model

        def branch(name, x, states, source, first_plan=None):
            given = plans.get(name)
            if given is None and first_plan is not None:
                given = [first_plan] + [None] * (len(model.blocks) - 1)
            timestep = torch.full((x.shape[0],), t_value, device=x.device)
            out, used = model(x, timestep, states, source, plans=given, return_plans=True)
            if any(p is not None for p in used):
                plans[name] = used
            return out

        if use_cfg and batch_cfg:
            share = SharedPlan(groups=2) if share_first_plan and _uses_isa(model) else None
            both = branch("cfg", torch.cat([latents, latents]), both_text, both_source, share)
            velocity, velocity_neg = both[:B], both[B:]
            velocity = velocity_neg + guidance_scale * (velocity - velocity_neg)
        else:
            velocity = branch("cond", latents, text, source_latents)
            if use_cfg:
                velocity_neg = branch("uncond", latents, negative_text, source_latents)
                velocity = velocity_neg + guidance_scale * (velocity - velocity_neg)
        latents = scheduler.step(velocity, t, latents, return_dict=False)[0].float()
        if callback is not None:
            replaced = callback(i, t_value, latents)
            if replaced is not None:
                latents = replaced.float()
    return latents


def _uses_isa(model) -> bool:
    config = getattr(model, "config", None)
    return getattr(config, "attention", None) == "isa"


def _batched(x: torch.Tensor, batch: int, name: str) -> torch.Tensor:
    """`x` `[1 or batch, ...]` -> `[batch, ...]`."""
    if x.shape[0] == batch:
        return x
    if x.shape[0] == 1:
        return x.expand(batch, *x.shape[1:])
    raise ValueError(f"{name} has batch {x.shape[0]}; the latents have {batch} (give 1 or {batch})")


def _padded_cat(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Stack text states `[B, La, D]` and `[B, Lb, D]` along the batch, zero-padding the shorter
    length (the DiT zero-pads text to `text_len` anyway)."""
    length = max(a.shape[1], b.shape[1])
    pad = lambda x: torch.nn.functional.pad(x, (0, 0, 0, length - x.shape[1])) if x.shape[1] < length else x
    return torch.cat([pad(a), pad(b).to(a.dtype)])
