"""Public ISA API: `plan_isa` and `isa_attention` (DESIGN.md, "ISA: the contract")."""

from __future__ import annotations

import math
from typing import Optional, Union

import torch

from liveditor.isa.config import ISAConfig, ISAKernelOptions
from liveditor.isa.plan import BlockGeometry, CoarseAttention, ISAPlan, coarse_attention, make_plan
from liveditor.isa.reference import coarse_output_per_token, routed_attention
from liveditor.isa.release import plan_release, release_isa_attention

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
BACKENDS = ("auto", "torch", "triton")

Gate = Union[None, float, torch.Tensor]


class SharedPlan:
    """A `plan` argument meaning: the batch is `groups` equal copies of the same q and k (for
    instance the conditional and unconditional branches of CFG at the first DiT block, before any
    text has entered); route the first copy once and give every copy those decisions.

    `isa_attention(..., plan=SharedPlan(2), return_plan=True)` returns the repeated plan, which can
    be passed again as an ordinary plan.
    """

    def __init__(self, groups: int = 2):
        if not isinstance(groups, int) or groups < 1:
            raise ValueError(f"SharedPlan.groups must be a positive int, got {groups!r}")
        self.groups = groups

    def make(self, q: torch.Tensor, k: torch.Tensor, num_target: int, cfg: ISAConfig):
        B = q.shape[0]
        if B % self.groups:
            raise ValueError(f"SharedPlan(groups={self.groups}) needs a batch divisible by {self.groups}, got {B}")
        n = B // self.groups
        return plan_isa(q[:n], k[:n], num_target, cfg).repeat_batch(self.groups)

    def __repr__(self) -> str:
        return f"SharedPlan(groups={self.groups})"


def validate_inputs(q, k, v, num_target, gate: Gate = None, need_v: bool = True) -> None:
    """Raise ValueError naming the argument when the inputs break the contract."""
    for name, t in (("q", q), ("k", k)) + ((("v", v),) if need_v else ()):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor [B, S, H, D], got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must have rank 4 [B, S, H, D] (Wan's layout), got shape {tuple(t.shape)}")
        if t.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"{name} has unsupported dtype {t.dtype}; use float16, bfloat16, float32 or float64")
    others = (("k", k), ("v", v)) if need_v else (("k", k),)
    for name, t in others:
        if t.shape != q.shape:
            raise ValueError(f"{name} shape {tuple(t.shape)} does not match q shape {tuple(q.shape)}")
        if t.dtype != q.dtype:
            raise ValueError(f"{name} dtype {t.dtype} does not match q dtype {q.dtype}")
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device} but q is on {q.device}")
    S = q.shape[1]
    if isinstance(num_target, bool) or not isinstance(num_target, int):
        raise ValueError(f"num_target must be an int, got {type(num_target).__name__}")
    if not 0 <= num_target <= S:
        raise ValueError(f"num_target={num_target} is outside [0, S={S}]")
    if isinstance(gate, torch.Tensor):
        B, _, H, _ = q.shape
        try:
            shape = torch.broadcast_shapes(gate.shape, (B, S, H, 1))
        except RuntimeError:
            shape = None
        if shape != (B, S, H, 1):
            raise ValueError(f"gate of shape {tuple(gate.shape)} does not broadcast to [B, S, H, 1] = {(B, S, H, 1)}")
        if gate.device != q.device:
            raise ValueError(f"gate is on {gate.device} but q is on {q.device}")
    elif gate is not None and not isinstance(gate, (int, float)):
        raise ValueError(f"gate must be None, a float or a tensor, got {type(gate).__name__}")


def _check_plan(plan: ISAPlan, q: torch.Tensor, num_target: int, cfg: ISAConfig) -> None:
    if not isinstance(plan, ISAPlan):
        raise ValueError(f"plan must be an ISAPlan from plan_isa, got {type(plan).__name__}")
    g = plan.geometry
    B, S, H, _ = q.shape
    if plan.batch_heads != (B, H):
        raise ValueError(f"plan was made for [B, H] = {list(plan.batch_heads)}, inputs have {[B, H]}")
    if (g.num_target, g.num_context) != (num_target, S - num_target):
        raise ValueError(
            f"plan was made for num_target={g.num_target}, num_context={g.num_context}; "
            f"inputs have num_target={num_target}, num_context={S - num_target}: make a new plan"
        )
    if g.block_size != cfg.block_size:
        raise ValueError(f"plan block_size={g.block_size} differs from cfg.block_size={cfg.block_size}")
    if plan.kv_blocks.device != q.device:
        raise ValueError(f"plan is on {plan.kv_blocks.device} but q is on {q.device}: use plan.to(device)")


def _prepare(q, k, v, num_target, cfg):
    geom = BlockGeometry.build(num_target, q.shape[1] - num_target, cfg.block_size, q.device)
    coarse = coarse_attention(q, k, v, geom, 1.0 / math.sqrt(q.shape[-1]))
    return geom, coarse


@torch.no_grad()
def plan_isa(q: torch.Tensor, k: torch.Tensor, num_target: int, cfg: Optional[ISAConfig] = None) -> ISAPlan:
    """Routing decisions of ISA for queries `q` and keys `k` `[B, S, H, D]` (target tokens first).

    The plan is discrete (no gradient) and can be passed to `isa_attention` again, for instance
    over adjacent denoising steps.
    """
    cfg = cfg or ISAConfig()
    validate_inputs(q, k, None, num_target, need_v=False)
    if cfg.compat == "release":
        if q.is_cuda and q.dtype in KERNEL_DTYPES and not torch.compiler.is_compiling():
            from liveditor.kernels.release import plan_release_triton

            with torch.autocast(q.device.type, enabled=False):  # fp32 scores, as the statement's
                return plan_release_triton(q, k, num_target, cfg)
        return plan_release(q, k, num_target, cfg)
    if q.is_cuda:
        # Same decisions in fewer launches: fused pooling, Triton top-k, a per-shape CUDA graph.
        from liveditor.kernels.isa_function import block_means
        from liveditor.kernels.planner import plan_and_probs

        geom = BlockGeometry.build(num_target, q.shape[1] - num_target, cfg.block_size, q.device)
        q_mean, k_mean, _ = block_means(q, k, k, geom)
        return plan_and_probs(q_mean, k_mean, geom, cfg)[0]
    geom, coarse = _prepare(q, k, k, num_target, cfg)
    return make_plan(coarse, geom, cfg)


def reference_isa_attention(q, k, v, num_target, cfg, gate: Gate = None, plan: Optional[ISAPlan] = None):
    """The exact reference (any dtype, any device). Returns `(out [B, S, H, D], plan)`."""
    geom, coarse = _prepare(q, k, v, num_target, cfg)
    if plan is None:
        with torch.no_grad():
            plan = make_plan(_detached(coarse), geom, cfg)
    out = routed_attention(q, k, v, plan, coarse, 1.0 / math.sqrt(q.shape[-1]))
    if gate is not None:
        g = gate.to(out.dtype) if isinstance(gate, torch.Tensor) else float(gate)
        out = out + g * coarse_output_per_token(coarse, plan.geometry)
    return out.to(q.dtype), plan


def _detached(coarse: CoarseAttention) -> CoarseAttention:
    return CoarseAttention(*(t.detach() for t in (coarse.q_mean, coarse.k_mean, coarse.v_mean, coarse.v_sum, coarse.probs, coarse.out)))


def isa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    num_target: int,
    cfg: Optional[ISAConfig] = None,
    gate: Gate = None,
    plan: Optional[ISAPlan] = None,
    backend: str = "auto",
    return_plan: bool = False,
    kernel_options: Optional[ISAKernelOptions] = None,
):
    """In-context Sparse Attention.

    Args:
        q, k, v: `[B, S, H, D]`, `S = num_target + num_context`, target tokens first.
        num_target: number of target (noisy video) tokens.
        cfg: ratios; `ISAConfig()` when None.
        gate: None, a float, or a tensor broadcastable to `[B, S, H, 1]`; adds `gate * out_c`.
        plan: routing from `plan_isa` (made here when None), or a `SharedPlan` (one routing for
            equal copies in the batch).
        backend: "torch" (exact reference), "triton" (kernels), or "auto" (triton on CUDA for
            fp16/bf16/fp32, for both rule sets; with `cfg.compat == "release"` the torch statement
            while torch.compile traces).
        return_plan: also return the plan used.
        kernel_options: how the triton backend runs (`ISAKernelOptions`, its defaults when None);
            the torch backend has no such choices.

    Returns:
        `[B, S, H, D]` in q's dtype (and the plan when `return_plan`).
    """
    cfg = cfg or ISAConfig()
    validate_inputs(q, k, v, num_target, gate)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if isinstance(plan, SharedPlan):
        plan = plan.make(q.detach(), k.detach(), num_target, cfg)
    if cfg.compat == "release":
        if backend == "auto":
            # Traced by torch.compile, the statement (plain PyTorch) rather than the kernels' launches.
            use_kernels = q.is_cuda and q.dtype in KERNEL_DTYPES and not torch.compiler.is_compiling()
            backend = "triton" if use_kernels else "torch"
        if backend == "triton":
            if q.dtype not in KERNEL_DTYPES:
                raise ValueError(f"q dtype {q.dtype} is not supported by the triton backend; use backend='torch'")
            from liveditor.kernels.release import release_attention_triton

            out, plan = release_attention_triton(q, k, v, num_target, cfg, gate=gate, plan=plan)
        else:
            with torch.autocast(q.device.type, enabled=False):  # as the reference below
                out, plan = release_isa_attention(q, k, v, num_target, cfg, gate=gate, plan=plan)
        return (out, plan) if return_plan else out
    if plan is not None:
        _check_plan(plan, q, num_target, cfg)
    if backend == "auto":
        backend = "triton" if (q.is_cuda and q.dtype in KERNEL_DTYPES) else "torch"
    if backend == "triton":
        if q.dtype not in KERNEL_DTYPES:
            raise ValueError(f"q dtype {q.dtype} is not supported by the triton backend; use backend='torch'")
        from liveditor.kernels.isa_function import isa_attention_triton

        out, plan = isa_attention_triton(q, k, v, num_target, cfg, gate=gate, plan=plan, options=kernel_options)
    else:
        # The reference computes in its own accumulation dtype: an ambient autocast (mixed-precision
        # training) must not lower it.
        with torch.autocast(q.device.type, enabled=False):
            out, plan = reference_isa_attention(q, k, v, num_target, cfg, gate=gate, plan=plan)
    return (out, plan) if return_plan else out
