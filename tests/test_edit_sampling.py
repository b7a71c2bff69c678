"""Flow-matching sampling conventions: x_t = (1 - s) x0 + s e, velocity e - x0 at timestep 1000 s,
shifted sigmas, CFG, expert switching and ISA plan reuse."""

import numpy as np
import pytest
import torch

from liveditor.isa import SharedPlan
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
        x0 = torch.cat([self.x0_by_text[float(row.flatten()[0])] for row in text])  # per batch row (CFG is batched)
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


@pytest.mark.parametrize("batch_cfg", [True, False])
def test_classifier_free_guidance_extrapolates_from_the_negative_branch(batch_cfg):
    g = torch.Generator().manual_seed(1)
    x0_pos, x0_neg = torch.randn(1, 4, 2, 3, 3, generator=g), torch.randn(1, 4, 2, 3, 3, generator=g)
    model = OracleDenoiser({1.0: x0_pos, -1.0: x0_neg})
    out = sample_edit([Expert(model)], torch.randn(x0_pos.shape, generator=g), x0_pos, torch.ones(1, 2, 3), -torch.ones(1, 2, 3),
                      steps=5, sampler="euler", guidance_scale=2.5, progress=False, batch_cfg=batch_cfg)
    assert torch.allclose(out, x0_neg + 2.5 * (x0_pos - x0_neg), atol=1e-4)
    assert len(model.calls) == (5 if batch_cfg else 10)  # one forward of batch 2 per step, or two


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


@pytest.mark.parametrize("batch_cfg", [True, False])
def test_isa_plans_refresh_every_n_steps_per_branch(batch_cfg):
    x0 = torch.zeros(1, 4, 2, 3, 3)
    model = OracleDenoiser({1.0: x0, -1.0: x0})
    sample_edit([Expert(model)], torch.randn(x0.shape), x0, torch.ones(1, 2, 3), -torch.ones(1, 2, 3),
                steps=7, sampler="euler", guidance_scale=2.0, isa_plan_reuse_steps=3, progress=False, batch_cfg=batch_cfg)
    fresh = model.calls
    if batch_cfg:  # one forward per step
        assert len(fresh) == 7 and [i for i, f in enumerate(fresh) if f] == [0, 3, 6]
    else:  # cond, uncond per step
        assert len(fresh) == 14 and [i // 2 for i, f in enumerate(fresh) if f] == [0, 0, 3, 3, 6, 6]


def _tiny_editor(attention="isa", compat="default", seed=0):
    from liveditor.models import DiTConfig, EditorDiT
    from liveditor.pipeline.tiny import randomize_

    cfg = DiTConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=2, freq_dim=16, text_len=8, text_dim=12,
                    attention=attention, isa=dict(block_size=8, context_keep_ratio=0.5, full_query_ratio=0.5,
                                                  exact_kv_ratio=0.25, compat=compat), isa_backend="torch")
    return randomize_(EditorDiT(cfg), seed, std=0.1).eval()


@pytest.mark.parametrize("attention,compat", [("isa", "default"), ("isa", "release"), ("dense", "default")])
def test_batched_cfg_equals_two_passes(attention, compat):
    """CFG as one forward of batch 2 (first block routed once for both branches) gives the two-pass
    result, and routes every block as the two passes do."""
    model = _tiny_editor(attention, compat)
    g = torch.Generator().manual_seed(3)
    noise, source = torch.randn(2, 16, 3, 6, 10, generator=g), torch.randn(1, 16, 3, 6, 10, generator=g)
    text, negative = torch.randn(2, 5, 12, generator=g), torch.randn(1, 7, 12, generator=g)

    def run(batch_cfg):
        return sample_edit([Expert(model)], noise, source, text, negative, steps=3, sampler="unipc", guidance_scale=2.5,
                           progress=False, batch_cfg=batch_cfg)

    batched, two_pass = run(True), run(False)
    torch.testing.assert_close(batched, two_pass, rtol=1e-5, atol=1e-5)
    if attention == "isa":
        # Every block's routing of the batched forward equals the per-branch routing.
        t = torch.full((4,), 999.0)
        x = torch.cat([noise, noise])
        both_text = torch.cat([torch.nn.functional.pad(text, (0, 0, 0, 2)), negative.expand(2, -1, -1)])
        src = source.expand(4, -1, -1, -1, -1)
        _, used = model(x, t, both_text, src, plans=[SharedPlan(2), None], return_plans=True)
        _, cond = model(noise, t[:2], text, src[:2], return_plans=True)
        _, uncond = model(noise, t[:2], both_text[2:], src[:2], return_plans=True)
        for block in range(2):
            assert torch.equal(used[block].full_query_blocks[:2], cond[block].full_query_blocks)
            assert torch.equal(used[block].full_query_blocks[2:], uncond[block].full_query_blocks)
            assert torch.equal(used[block].taylor_exact_kv_blocks[2:], uncond[block].taylor_exact_kv_blocks)


def test_callback_can_replace_the_latents():
    x0 = torch.zeros(1, 4, 2, 3, 3)
    model = OracleDenoiser({1.0: x0})
    out = sample_edit([Expert(model)], torch.randn(x0.shape), x0, torch.ones(1, 2, 3), None, steps=3, sampler="euler",
                      guidance_scale=1.0, progress=False, callback=lambda i, t, x: torch.full_like(x, 7.0) if i == 2 else None)
    assert torch.equal(out, torch.full_like(x0, 7.0))


def test_two_experts_split_at_the_boundary():
    high, low = Expert(None, min_timestep=875.0), Expert(None, 0.0)
    assert pick_expert([high, low], 999.0) == 0
    assert pick_expert([high, low], 875.0) == 0
    assert pick_expert([high, low], 874.0) == 1
    assert pick_expert([low], 10.0) == 0
