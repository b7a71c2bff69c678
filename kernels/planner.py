"""ISA planning on the GPU: the same decisions as `liveditor.isa.plan.make_plan`, in fewer launches.

* The four top-k selections run as one Triton launch each (`kernels/select.py`) instead of a stable
  sort, an ascending sort and a complement each.
* On CUDA the whole plan, from the block means to the routing, is captured once per shape in a CUDA
  graph and replayed: two small copies in, one replay, the plan's tensors cloned out (a returned plan
  never aliases the graph's buffers). At the Wan2.1-1.3B shape the PyTorch plan spent more time in
  launch overhead than on the GPU.

Sharpness sums are added in another order than `torch.topk(...).values.sum()`, so two query blocks
whose sharpness agrees to the last bits may be routed the other way round; every decision is still
a correct top-k of the scores (tests check this). Off CUDA, and while the caller captures a CUDA
graph of its own, the same planner runs without a graph of its own (`graphs_enabled`); under
torch.compile the PyTorch planner is traced.
"""

from __future__ import annotations

import contextlib
import math
from collections import OrderedDict
from dataclasses import fields

import torch

from liveditor.isa.config import ISAConfig
from liveditor.isa.plan import BlockGeometry, CoarseAttention, ISAPlan, coarse_probs, make_plan, plan_counts
from liveditor.kernels.select import topk_select


@contextlib.contextmanager
def _forked(branch, main):
    """Runs the block on `branch` after all of `main`'s work so far (a no-op without a branch)."""
    if branch is None:
        yield
        return
    branch.wait_stream(main)
    with torch.cuda.stream(branch):
        yield


def make_plan_triton(q_mean: torch.Tensor, k_mean: torch.Tensor, probs: torch.Tensor, geom: BlockGeometry, cfg: ISAConfig,
                     branch: "torch.cuda.Stream | None" = None) -> ISAPlan:
    """Steps 3 to 6 of the contract from the block means `[B, H, nb, D]` and coarse probabilities
    `[B, H, nb, nb]` (fp32).

    `branch`, optional, is a second CUDA stream for the context pre-selection, which does not
    depend on the routing. Used while the planner's CUDA graph is captured, it makes the two
    parallel branches of the graph.
    """
    B, H, nb, D = q_mean.shape
    nbt, nbs = geom.num_target_blocks, geom.num_context_blocks
    dev = q_mean.device
    i32 = torch.int32
    n_keep, n_kv, n_sharp, n_full, n_exact = plan_counts(geom, cfg)
    main = torch.cuda.current_stream(dev) if branch is not None else None

    with _forked(branch, main):
        saliency = probs[:, :, :nbt, nbt:].sum(2)  # [B, H, nbs]
        kept_local, _, _ = topk_select(saliency.reshape(B * H, nbs), n_keep)
        kept = (kept_local.view(B, H, n_keep) + nbt).to(i32)
        kv_blocks = torch.cat([torch.arange(nbt, device=dev, dtype=i32).expand(B, H, nbt), kept], dim=-1).contiguous()
        kv_k = k_mean.gather(2, kv_blocks.long().unsqueeze(-1).expand(-1, -1, -1, D))

    if n_sharp:
        target_probs = probs.reshape(B * H * nb, nb)[:, :nbt]
        _, _, sharpness = topk_select(target_probs, n_sharp, selected=False, top_sum=True)
        sharpness = sharpness.view(B, H, nb)
    else:
        sharpness = probs.new_zeros((B, H, nb))

    full, taylor, _ = topk_select(sharpness.reshape(B * H, nb), n_full, rest=True)
    full, taylor = full.view(B, H, n_full), taylor.view(B, H, nb - n_full)
    n_taylor = nb - n_full
    tq = q_mean.gather(2, taylor.long().unsqueeze(-1).expand(-1, -1, -1, D))
    if branch is not None:
        main.wait_stream(branch)

    affinity = tq @ kv_k.transpose(-1, -2)  # [B, H, n_taylor, n_kv]
    exact_pos, _, _ = topk_select(affinity.reshape(B * H * n_taylor, n_kv), n_exact)
    expand_kv = kv_blocks.unsqueeze(2).expand(B, H, n_taylor, n_kv)
    exact = expand_kv.gather(-1, exact_pos.view(B, H, n_taylor, n_exact).long())
    # `taylor_centroid_kv_blocks` is left out: no kernel reads it, and the plan derives it when read.
    return ISAPlan(
        geometry=geom,
        kept_context_blocks=kept,
        kv_blocks=kv_blocks,
        full_query_blocks=full,
        taylor_query_blocks=taylor,
        taylor_exact_kv_blocks=exact.contiguous(),
        context_saliency=saliency,
        query_sharpness=sharpness,
    )


_MAX_GRAPHS = 8
_GRAPHS: "OrderedDict[tuple, _GraphedPlanner]" = OrderedDict()


def graphs_enabled(device: torch.device) -> bool:
    """Whether the plan runs as a replay of its CUDA graph: on CUDA, unless a graph is being captured
    (the plan's launches then join the caller's graph) or torch.compile is tracing."""
    return (
        device.type == "cuda"
        and not torch.cuda.is_current_stream_capturing()
        and not torch.compiler.is_compiling()
    )


_STREAMS: dict = {}


def _capture_stream(device: torch.device, role: str = "capture") -> "torch.cuda.Stream":
    """The planners' shared streams: `capture` (warm-up and capture) and `branch` (the graph's
    second branch)."""
    if (device, role) not in _STREAMS:
        _STREAMS[device, role] = torch.cuda.Stream(device)
    return _STREAMS[device, role]


class _GraphedPlanner:
    """Coarse probabilities and plan of one shape, captured in a CUDA graph."""

    def __init__(self, q_mean, k_mean, geom: BlockGeometry, cfg: ISAConfig):
        self.q_mean = q_mean.detach().clone()
        self.k_mean = k_mean.detach().clone()

        def run(branch=None):
            probs = coarse_probs(self.q_mean, self.k_mean)
            return probs, make_plan_triton(self.q_mean, self.k_mean, probs, geom, cfg, branch)

        # Warm-up and capture on one side stream, shared by every planner: each new stream that
        # runs a matmul gets its own persistent cuBLAS workspace.
        stream = _capture_stream(q_mean.device)
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            run()  # warm-up outside the capture: kernel compilation, allocator, handles
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, stream=stream):
            # Independent steps on a second stream become parallel branches of the graph.
            self.probs, plan = run(_capture_stream(q_mean.device, "branch"))
            # The plan's tensors packed into one buffer per dtype: a call then clones two buffers
            # instead of seven tensors. `taylor_centroid_kv_blocks` is not among them: the plan
            # derives it when read, and reading it here would capture that.
            tensors = {f.name: getattr(plan, f.name) for f in fields(plan)
                       if f.name not in ("geometry", "taylor_centroid_kv_blocks")}
            by_dtype: dict = {}
            for name, t in tensors.items():
                by_dtype.setdefault(t.dtype, []).append(name)
            self.layout = [[(name, tensors[name].shape) for name in names] for names in by_dtype.values()]
            self.packed = [torch.cat([tensors[name].reshape(-1) for name in names]) for names in by_dtype.values()]

    def __call__(self, q_mean, k_mean, geom: BlockGeometry):
        self.q_mean.copy_(q_mean)
        self.k_mean.copy_(k_mean)
        self.graph.replay()
        values = {"geometry": geom}
        for items, packed in zip(self.layout, self.packed):
            parts = packed.clone().split([math.prod(shape) for _, shape in items])
            values.update({name: part.view(shape) for (name, shape), part in zip(items, parts)})
        return ISAPlan(**values), self.probs


def plan_and_probs(q_mean: torch.Tensor, k_mean: torch.Tensor, geom: BlockGeometry, cfg: ISAConfig):
    """`(plan, probs)` from the block means `[B, H, nb, D]` (fp32, no gradient).

    On CUDA, `probs` is the graph's own buffer: use it before the next call for the same shape.
    """
    q_mean, k_mean = q_mean.detach(), k_mean.detach()
    if torch.compiler.is_compiling():
        # Under torch.compile the plan is traced as plain PyTorch ops (the reference planner).
        probs = coarse_probs(q_mean, k_mean)
        return make_plan(CoarseAttention(q_mean, k_mean, None, None, probs, None), geom, cfg), probs
    if not graphs_enabled(q_mean.device):
        probs = coarse_probs(q_mean, k_mean)
        return make_plan_triton(q_mean, k_mean, probs, geom, cfg), probs
    key = (str(q_mean.device), tuple(q_mean.shape), q_mean.dtype, geom.num_target, geom.num_context, geom.block_size, cfg)
    planner = _GRAPHS.get(key)
    if planner is None:
        planner = _GraphedPlanner(q_mean, k_mean, geom, cfg)
        _GRAPHS[key] = planner
        while len(_GRAPHS) > _MAX_GRAPHS:
            _GRAPHS.popitem(last=False)
    else:
        _GRAPHS.move_to_end(key)
    return planner(q_mean, k_mean, geom)
