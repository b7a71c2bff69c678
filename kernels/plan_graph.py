"""ISA planning replayed from a CUDA graph.

`make_plan` is a few dozen small PyTorch ops (top-k selections, sorts, gathers) on `[B, H, nb, nb]`
and smaller tensors. On an H100 their launch overhead, not their arithmetic, set the plan's cost
(1.8 to 2.5 ms of wall time at the Wan2.1-1.3B shape, for about 1 ms of GPU work), so the planner
captures them once per shape and replays the graph: three copies in, one replay, the plan's tensors
cloned out (a returned plan never aliases the graph's buffers).

The graphed plan is the same function as `make_plan` (tests compare them decision for decision).
Set `LIVEDITOR_ISA_PLAN_GRAPHS=0` to plan eagerly.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import fields

import torch

from liveditor.isa.config import ISAConfig
from liveditor.isa.plan import BlockGeometry, CoarseAttention, ISAPlan, make_plan

_MAX_GRAPHS = 8
_GRAPHS: "OrderedDict[tuple, _GraphedPlanner]" = OrderedDict()


def graphs_enabled(device: torch.device) -> bool:
    return (
        device.type == "cuda"
        and os.environ.get("LIVEDITOR_ISA_PLAN_GRAPHS", "1") != "0"
        and not torch.cuda.is_current_stream_capturing()
        and not torch.compiler.is_compiling()
    )


class _GraphedPlanner:
    def __init__(self, coarse: CoarseAttention, geom: BlockGeometry, cfg: ISAConfig):
        self.q_mean = torch.empty_like(coarse.q_mean)
        self.k_mean = torch.empty_like(coarse.k_mean)
        self.probs = torch.empty_like(coarse.probs)
        self._copy_in(coarse)
        static = CoarseAttention(self.q_mean, self.k_mean, None, None, self.probs, None)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            make_plan(static, geom, cfg)  # warm-up outside the capture (allocator, handles)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.plan = make_plan(static, geom, cfg)

    def _copy_in(self, coarse: CoarseAttention) -> None:
        self.q_mean.copy_(coarse.q_mean)
        self.k_mean.copy_(coarse.k_mean)
        self.probs.copy_(coarse.probs)

    def __call__(self, coarse: CoarseAttention, geom: BlockGeometry) -> ISAPlan:
        self._copy_in(coarse)
        self.graph.replay()
        values = {f.name: getattr(self.plan, f.name) for f in fields(self.plan)}
        values = {name: (v.clone() if isinstance(v, torch.Tensor) else v) for name, v in values.items()}
        values["geometry"] = geom
        return ISAPlan(**values)


def plan_from_coarse(coarse: CoarseAttention, geom: BlockGeometry, cfg: ISAConfig) -> ISAPlan:
    """`make_plan`, replayed from a per-shape CUDA graph on CUDA devices."""
    if not graphs_enabled(coarse.probs.device):
        return make_plan(coarse, geom, cfg)
    key = (
        str(coarse.probs.device), tuple(coarse.q_mean.shape), coarse.q_mean.dtype,
        geom.num_target, geom.num_context, geom.block_size, cfg,
    )
    planner = _GRAPHS.get(key)
    if planner is None:
        planner = _GraphedPlanner(coarse, geom, cfg)
        _GRAPHS[key] = planner
        while len(_GRAPHS) > _MAX_GRAPHS:
            _GRAPHS.popitem(last=False)
    else:
        _GRAPHS.move_to_end(key)
    return planner(coarse, geom)
