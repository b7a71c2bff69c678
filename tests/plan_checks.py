"""Checks that a plan's decisions are correct top-k selections of the reference's scores."""

import math

import torch

from liveditor.isa.plan import BlockGeometry, _floor_count, coarse_attention

SCORE_TOL = 1e-5


def _check_split(scores, chosen, others, what):
    """Every chosen score >= every other score (up to float noise), per row."""
    if chosen.shape[-1] == 0 or others.shape[-1] == 0:
        return
    lo = scores.gather(-1, chosen.long()).min(-1).values
    hi = scores.gather(-1, others.long()).max(-1).values
    scale = scores.abs().amax(-1).clamp_min(1e-30)
    assert bool(((lo - hi) / scale >= -SCORE_TOL).all()), f"{what}: a chosen score is below an unchosen one"


def assert_valid_plan(plan, q, k, cfg):
    """The plan's selections are top-k of the scores the reference computes from (q, k) in fp32."""
    g = plan.geometry
    geom = BlockGeometry.build(g.num_target, g.num_context, g.block_size, q.device)
    coarse = coarse_attention(q.float(), k.float(), k.float(), geom, 1.0 / math.sqrt(q.shape[-1]))
    probs = coarse.probs
    nbt, nbs, nb = g.num_target_blocks, g.num_context_blocks, g.num_blocks
    B, H = plan.kv_blocks.shape[:2]
    for t in (plan.kept_context_blocks, plan.full_query_blocks, plan.taylor_query_blocks):
        assert bool((t.diff(dim=-1) > 0).all()), "indices must be strictly ascending"
    if nbs:
        saliency = probs[:, :, :nbt, nbt:].sum(2)
        kept = plan.kept_context_blocks.long() - nbt
        mask = torch.ones_like(saliency, dtype=torch.bool).scatter_(-1, kept, False)
        others = torch.arange(nbs, device=q.device).expand(B, H, nbs)[mask].view(B, H, -1)
        _check_split(saliency, kept, others, "context pre-selection")
    n_sharp = min(nbt, max(1, _floor_count(cfg.exact_kv_ratio, nbt)))
    sharp = torch.topk(probs[..., :nbt], n_sharp, dim=-1).values.sum(-1)
    _check_split(sharp, plan.full_query_blocks, plan.taylor_query_blocks, "routing")
    tq = coarse.q_mean.gather(2, plan.taylor_query_blocks.long().unsqueeze(-1).expand(-1, -1, -1, q.shape[-1]))
    aff = tq @ coarse.k_mean.transpose(-1, -2)  # [B, H, n_taylor, nb]: columns are global block ids
    _check_split(aff, plan.taylor_exact_kv_blocks, plan.taylor_centroid_kv_blocks, "Taylor exact blocks")
