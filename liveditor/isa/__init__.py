"""ISA: In-context Sparse Attention (arXiv 2605.04569), API and exact reference.

    cfg = ISAConfig()
    plan = plan_isa(q, k, num_target, cfg)
    out = isa_attention(q, k, v, num_target, cfg, gate=None, plan=plan, backend="auto")
"""

from liveditor.isa.api import SharedPlan, isa_attention, plan_isa, reference_isa_attention, validate_inputs
from liveditor.isa.config import COMPAT_RULES, ISAConfig, ISAKernelOptions
from liveditor.isa.release import ReleasePlan, plan_release, release_isa_attention
from liveditor.isa.plan import BlockGeometry, CoarseAttention, ISAPlan, coarse_attention, context_coverage, make_plan

__all__ = [
    "COMPAT_RULES",
    "ISAConfig",
    "ISAKernelOptions",
    "ReleasePlan",
    "SharedPlan",
    "plan_release",
    "release_isa_attention",
    "ISAPlan",
    "BlockGeometry",
    "CoarseAttention",
    "coarse_attention",
    "context_coverage",
    "make_plan",
    "plan_isa",
    "isa_attention",
    "reference_isa_attention",
    "validate_inputs",
]
