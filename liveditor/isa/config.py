"""ISA configuration: the four numbers that decide how sparse attention is (`ISAConfig`), and how the
Triton kernels run them (`ISAKernelOptions`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

# "default": DESIGN.md's rules; "release": the published LIVEditor code's (liveditor.isa.release).
COMPAT_RULES = ("default", "release")


@dataclass(frozen=True)
class ISAConfig:
    """Ratios of In-context Sparse Attention (DESIGN.md, "ISA: the contract").

    Attributes:
        block_size: tokens per block; each segment (target, context) is blocked on its own.
        context_keep_ratio: share of context blocks kept by context pre-selection.
        full_query_ratio: share of query blocks (target and context) that take exact attention.
        exact_kv_ratio: share of KV blocks a Taylor query block attends exactly; also the share of
            target blocks whose coarse probabilities sum to a query block's sharpness.
        compat: "default", the rules of DESIGN.md ("ISA: the contract"), or "release", the
            published LIVEditor code's blocking and keep rules (`liveditor.isa.release`, the torch
            statement; `liveditor.kernels.release`, the Triton kernels), for users who must match
            official outputs. docs/editing.md says how the two differ.
    """

    block_size: int = 64
    context_keep_ratio: float = 0.125
    full_query_ratio: float = 0.5
    exact_kv_ratio: float = 0.0625
    compat: str = "default"

    def __post_init__(self) -> None:
        if self.compat not in COMPAT_RULES:
            raise ValueError(f"ISAConfig.compat must be one of {COMPAT_RULES}, got {self.compat!r} (model.dit.isa.compat)")
        if not isinstance(self.block_size, int) or self.block_size < 1:
            raise ValueError(f"ISAConfig.block_size must be a positive int, got {self.block_size!r}")
        for name in ("context_keep_ratio", "full_query_ratio", "exact_kv_ratio"):
            value = getattr(self, name)
            if not (0.0 <= float(value) <= 1.0):
                raise ValueError(f"ISAConfig.{name} must lie in [0, 1], got {value!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ISAKernelOptions:
    """How the Triton backend runs ISA, not what it computes (set as `model.dit.isa_kernels.*`).

    Attributes:
        dense_backward_heads: heads per cuDNN call in the backward of the full path (fp16/bf16 on
            CUDA). Fewer heads per call lower the transient memory (the gathered rows, the KV set and
            cuDNN's fp32 dQ accumulator scale with it); more keep each call large enough to fill the
            GPU. Forward+backward at the Wan2.1-1.3B shape on an H100 (docs/benchmarks.md): 1 head
            70.9 ms / 2.40 GiB, 2 heads 64.5 ms / 2.40 GiB, 3 heads 63.4 ms / 2.48 GiB, against cuDNN
            SDPA's 166 ms / 2.44 GiB; 2 (the default) is the largest that stays under SDPA's peak.
    """

    dense_backward_heads: int = 2

    def __post_init__(self) -> None:
        value = self.dense_backward_heads
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError("ISAKernelOptions.dense_backward_heads must be a positive int (heads per cuDNN call), "
                             f"got {value!r} (model.dit.isa_kernels.dense_backward_heads)")

    def to_dict(self) -> dict:
        return asdict(self)
