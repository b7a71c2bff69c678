"""Architecture of the editor DiT: one dataclass, filled from `configs/model/*.yaml`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from liveditor.isa import ISAConfig, ISAKernelOptions

ATTENTION_BACKENDS = ("isa", "dense")


@dataclass(frozen=True)
class DiTConfig:
    """Wan DiT hyper-parameters plus the editor's attention choice.

    Sizes follow the Wan2.1 release (`wan/configs/wan_t2v_*.py`): 1.3B is dim 1536, ffn 8960, 12 heads,
    30 layers; 14B (and each Wan2.2-A14B expert) is dim 5120, ffn 13824, 40 heads, 40 layers.

    Attributes:
        patch_size: `(t, h, w)` Conv3d patch of the latents.
        in_dim, out_dim: latent channels (16 for the Wan2.1 VAE).
        dim, ffn_dim, num_heads, num_layers: transformer width, MLP width, heads, blocks.
        freq_dim: width of the sinusoidal timestep features.
        text_len: text tokens the cross-attention sees (the text is zero-padded to it).
        text_dim: width of the text encoder's output (4096 for umT5-XXL).
        qk_norm, cross_attn_norm, eps: RMSNorm on q/k over the full width, affine LayerNorm before
            cross-attention, and the epsilon of every norm.
        rope_max_positions: positions per axis of the RoPE table.
        attention: self-attention backend, "isa" (In-context Sparse Attention) or "dense" (SDPA).
        isa: ISA ratios (used when `attention == "isa"`).
        isa_backend: "auto", "torch" or "triton" (see `liveditor.isa.isa_attention`).
        isa_kernels: how the Triton backend runs ISA (`ISAKernelOptions`: heads per cuDNN call in the
            backward, memory against speed); the results do not depend on it.
        compile: run each block's non-attention work through `torch.compile` (inductor): fuses the
            float32 norms, modulation, RoPE and residual updates that otherwise cost as much as the
            linear layers; the attention stays eager. The first forward at a shape compiles.
    """

    patch_size: tuple[int, int, int] = (1, 2, 2)
    in_dim: int = 16
    out_dim: int = 16
    dim: int = 1536
    ffn_dim: int = 8960
    num_heads: int = 12
    num_layers: int = 30
    freq_dim: int = 256
    text_len: int = 512
    text_dim: int = 4096
    qk_norm: bool = True
    cross_attn_norm: bool = True
    eps: float = 1e-6
    rope_max_positions: int = 1024
    attention: str = "isa"
    isa: ISAConfig = field(default_factory=ISAConfig)
    isa_backend: str = "auto"
    isa_kernels: ISAKernelOptions = field(default_factory=ISAKernelOptions)
    compile: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
        if isinstance(self.isa, Mapping):
            object.__setattr__(self, "isa", ISAConfig(**dict(self.isa)))
        if isinstance(self.isa_kernels, Mapping):
            object.__setattr__(self, "isa_kernels", ISAKernelOptions(**dict(self.isa_kernels)))
        if len(self.patch_size) != 3:
            raise ValueError(f"model.patch_size must have 3 entries (t, h, w), got {self.patch_size}")
        if self.dim % self.num_heads:
            raise ValueError(f"model.dim={self.dim} is not divisible by model.num_heads={self.num_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for RoPE")
        if self.attention not in ATTENTION_BACKENDS:
            raise ValueError(f"model.attention must be one of {ATTENTION_BACKENDS}, got {self.attention!r}")
        if self.freq_dim % 2:
            raise ValueError(f"model.freq_dim={self.freq_dim} must be even")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "DiTConfig":
        """Build from a mapping (a Hydra `model.dit` node); unknown keys are an error naming them."""
        values = dict(values)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown model.dit keys {unknown}; known keys: {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["patch_size"] = list(self.patch_size)
        return d

    def replace(self, **changes) -> "DiTConfig":
        return dataclasses.replace(self, **changes)
