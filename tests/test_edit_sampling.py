"""Flow-matching sampling conventions: x_t = (1 - s) x0 + s e, velocity e - x0 at timestep 1000 s,
shifted sigmas, CFG, expert switching and ISA plan reuse."""

import numpy as np
import pytest
import torch

from liveditor.pipeline.sampling import Expert, make_scheduler, pick_expert, sample_edit, set_flow_timesteps


class OracleDenoiser(torch.nn.Module):
    """Predicts the exact velocity toward a fixed x0 per text branch: v = (x_t - x0) / s."""

    def __init__(self, x0_by_text):
        super().__init__()
        self.x0_by_text = x0_by_text
        self.calls = []

    def forward(self, latents, timestep, text, source_latents=None, plans=None, return_plans=False):
        self.calls.append(plans is None)
        sigma = timestep.view(-1, 1, 1, 1, 1) / 1000.0
        x0 = self.x0_by_text[float(text.flatten()[0])]
        v = (latents - x0) / sigma.clamp_min(1e-6)
        return (v, ["plan"]) if return_plans else v


@pytest.mark.parametrize("sampler", ["unipc", "euler"])
def test_sampler_lands_on_the_target_the_velocity_points_to(sampler):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, 4, 2, 3, 3, generator=g)
    model = OracleDenoiser({1.0: x0})
    out = sample_edit([Expert(model)], torch.randn(x0.shape, generator=g), x0, torch.ones(1, 2, 3), None,
                      steps=6, sampler=sampler, shift=6.0, guidance_scale=1.0, progress=False)
    # UniPC hands the model integer timesteps (as Wan's flow UniPC does), so an oracle that reads
    # sigma from the timestep is off by up to 1/1000 per step; Euler's timesteps are exact.
    assert torch.allclose(out, x0, atol=1e-4 if sampler == "euler" else 2e-2)


def test_classifier_free_guidance_extrapolates_from_the_negative_branch():
    g = torch.Generator().manual_seed(1)
    x0_pos, x0_neg = torch.randn(1, 4, 2, 3, 3, generator=g), torch.randn(1, 4, 2, 3, 3, generator=g)
    model = OracleDenoiser({1.0: x0_pos, -1.0: x0_neg})
    out = sample_edit([Expert(model)], torch.randn(x0_pos.shape, generator=g), x0_pos, torch.ones(1, 2, 3), -torch.ones(1, 2, 3),
                      steps=5, sampler="euler", guidance_scale=2.5, progress=False)
    assert torch.allclose(out, x0_neg + 2.5 * (x0_pos - x0_neg), atol=1e-4)


def test_shifted_schedule():
    for sampler in ("unipc", "euler"):
        sched = make_scheduler(sampler, shift=6.0)
        set_flow_timesteps(sched, 32)
        sigmas = sched.sigmas.numpy()
        assert len(sched.timesteps) == 32
        assert sigmas[0] == pytest.approx(1.0, abs=2e-3) and sigmas[-1] == 0.0
        assert np.all(np.diff(sigmas) < 0)
        assert np.allclose(sched.timesteps.numpy().astype(np.float64), sigmas[:-1] * 1000, atol=1.0)
        # shift: s -> 6 s / (1 + 5 s) from linspace(1, 1/1000, 33)[:-1]
        s = np.linspace(1, 1e-3, 33)[:-1]
        assert np.allclose(sigmas[:-1], 6 * s / (1 + 5 * s), atol=1e-5)


def test_isa_plans_refresh_every_n_steps_per_branch():
    x0 = torch.zeros(1, 4, 2, 3, 3)
    model = OracleDenoiser({1.0: x0, -1.0: x0})
    sample_edit([Expert(model)], torch.randn(x0.shape), x0, torch.ones(1, 2, 3), -torch.ones(1, 2, 3),
                steps=7, sampler="euler", guidance_scale=2.0, isa_plan_reuse_steps=3, progress=False)
    fresh = model.calls  # cond, uncond per step
    assert len(fresh) == 14
    assert [i // 2 for i, f in enumerate(fresh) if f] == [0, 0, 3, 3, 6, 6]


def test_two_experts_split_at_the_boundary():
    high, low = Expert(None, min_timestep=875.0), Expert(None, 0.0)
    assert pick_expert([high, low], 999.0) == 0
    assert pick_expert([high, low], 875.0) == 0
    assert pick_expert([high, low], 874.0) == 1
    assert pick_expert([low], 10.0) == 0
