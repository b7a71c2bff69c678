"""The editor DiT: Wan's video transformer run in context over `[target tokens, source tokens]`.

Module and parameter names are Wan's (`wan/modules/model.py`), so an original Wan state dict loads
without renaming; the editor adds `source_video_embedding_more_memory` (the source's own patch
embedding) and per block `self_attn.alpha_1` (the ISA gate), plus `self_attn.alpha_2`,
`cross_attn.alpha_1` and `cross_attn.alpha_2`, which the LIVEditor release carries and never uses.

Precision follows Wan: the residual stream, the time embedding, the modulation and the head run in
float32; projections, attention and the MLP run in the parameters' dtype (bf16 on GPU).

Shapes: latents `[B, C, F, H, W]`, text `[B, L, text_dim]`, tokens `[B, S, dim]`, q/k/v
`[B, S, H, D]`; `S = Nt + Ns` with the `Nt` target tokens first.
"""

from __future__ import annotations

import contextlib
import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from liveditor.isa import ISAPlan, isa_attention
from liveditor.models.config import DiTConfig
from liveditor.models.rope import apply_rope, in_context_rope


def zero3_gathered(params):
    """A context in which ZeRO-3-partitioned `params` (DeepSpeed's `ds_id` attribute) hold their
    whole values, written back from rank 0 on exit; nothing to do for ordinary parameters."""
    partitioned = [p for p in params if hasattr(p, "ds_id")]
    if not partitioned:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(partitioned, modifier_rank=0)


def sinusoidal_embedding(dim: int, timestep: torch.Tensor) -> torch.Tensor:
    """Wan's timestep features: `[cos(t w_i), sin(t w_i)]`, `w_i = 10000^(-i / (dim/2))`; `[B, dim]` float32."""
    half = dim // 2
    t = timestep.to(torch.float64)
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    angles = torch.outer(t, freqs)
    return torch.cat([angles.cos(), angles.sin()], dim=1).float()


def _linear_fp32(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """`layer(x)` computed in float32 whatever the parameters' dtype (Wan runs these under fp32 autocast)."""
    bias = None if layer.bias is None else layer.bias.float()
    return F.linear(x.float(), layer.weight.float(), bias)


def _matmul_dtype(weight: torch.Tensor, x: torch.Tensor) -> torch.dtype:
    """The dtype the linears fed by `x` compute in: autocast's where it is on (mixed-precision training),
    else the weights'.

    The self-attention input feeds four linears (q, k, v and the ISA gate `alpha_1`). Autocast casts
    an activation afresh for every linear (its cast cache holds weights only), and each linear saves
    its own copy for the backward: four `[B, S, dim]` bf16 copies per block, 200 MB each at 65,520
    tokens and dim 1536. Cast once here, they share one (the same rounding, so the same numbers).
    """
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return weight.dtype


def norm_rope(x: torch.Tensor, norm: nn.Module, rope, num_heads: int) -> torch.Tensor:
    """`apply_rope(norm(x).view(B, S, H, D), cos, sin)` for the self-attention's q or k `[B, S, dim]`.

    For inference on CUDA one fused kernel does both (`liveditor.kernels.rope_norm`, one pass instead
    of a dozen; measured faster, docs/benchmarks.md "Editor DiT forward"); with gradients or on CPU
    the PyTorch ops run.
    """
    cos, sin = rope
    B, S, dim = x.shape
    is_rms = isinstance(norm, RMSNorm)
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or (is_rms and norm.weight.requires_grad))
    if (
        x.is_cuda and not needs_grad and x.stride(-1) == 1 and (not is_rms or norm.weight.dtype == x.dtype)
        and (is_rms or isinstance(norm, nn.Identity))
    ):
        from liveditor.kernels.rope_norm import rms_norm_rope

        return rms_norm_rope(x, norm.weight if is_rms else None, cos, sin, num_heads, norm.eps if is_rms else 0.0, is_rms)
    return apply_rope(norm(x).view(B, S, num_heads, dim // num_heads), cos, sin)


def mlp(ffn: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """Wan's MLP `Linear -> GELU(tanh) -> Linear` (`ffn` holds the three modules).

    On CUDA the GELU runs in the epilogue of the first GEMM (cuBLASLt's bias+GELU epilogue, the
    tanh approximation, through `torch._addmm_activation`) instead of as a separate pass over the
    `[S, ffn_dim]` activations. On CPU that op computes the erf GELU, so there the modules run as written.
    """
    fc1, act, fc2 = ffn
    # `_addmm_activation` has no derivative: with gradients the modules run as written
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or fc1.weight.requires_grad)
    if x.is_cuda and not needs_grad and fc1.bias is not None and getattr(act, "approximate", None) == "tanh":
        h = torch._addmm_activation(fc1.bias, x.reshape(-1, x.shape[-1]), fc1.weight.t(), use_gelu=True)
        h = h.view(*x.shape[:-1], h.shape[-1])
    else:
        h = act(fc1(x))
    return fc2(h)


class RMSNorm(nn.Module):
    """RMS norm over the last dim (Wan's `WanRMSNorm`): normalised in float32, scaled in the input dtype."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


def _layer_norm_fp32(x: torch.Tensor, eps: float, weight=None, bias=None) -> torch.Tensor:
    w = None if weight is None else weight.float()
    b = None if bias is None else bias.float()
    return F.layer_norm(x.float(), (x.shape[-1],), w, b, eps)


class AffineLayerNorm(nn.LayerNorm):
    """LayerNorm with weight and bias, computed in float32 (Wan's `norm3`, before cross-attention)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _layer_norm_fp32(x, self.eps, self.weight, self.bias)


class _AttentionLayers(nn.Module):
    """The layers Wan's self- and cross-attention share (`q, k, v, o`, the q/k RMSNorms) plus the
    release checkpoint's `alpha_1, alpha_2` gates (Linear dim -> 1, no bias)."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        dim = cfg.dim
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = RMSNorm(dim, cfg.eps) if cfg.qk_norm else nn.Identity()
        self.norm_k = RMSNorm(dim, cfg.eps) if cfg.qk_norm else nn.Identity()
        self.alpha_1 = nn.Linear(dim, 1, bias=False)
        self.alpha_2 = nn.Linear(dim, 1, bias=False)
        self.alpha_2.requires_grad_(False)


class SelfAttention(_AttentionLayers):
    """Self-attention over `[target, source]` tokens through ISA or dense SDPA.

    `alpha_1` makes ISA's per-token gate `(sigmoid(alpha_1(x)) - 0.5) * 0.5` from the same
    normalised, time-modulated hidden state `x` that feeds q, k and v. It is zero for a model
    started from a plain Wan checkpoint, so the shortcut starts closed. `alpha_2` is kept only so
    the release checkpoint loads strictly.
    """

    def __init__(self, cfg: DiTConfig):
        super().__init__(cfg)
        self.attention = cfg.attention
        self.isa_config = cfg.isa
        self.isa_backend = cfg.isa_backend
        self.isa_kernels = cfg.isa_kernels
        self.sequence_parallel = None  # a SequenceParallel group (EditorDiT.enable_sequence_parallel)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """ISA gate `[B, S, 1, 1]` from the block's modulated hidden state `x` `[B, S, dim]`."""
        return ((torch.sigmoid(self.alpha_1(x).float()) - 0.5) * 0.5).unsqueeze(-1)

    def project(self, x: torch.Tensor, rope) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """`x` `[B, S, dim]` -> q, k (normed, rotated), v `[B, S, H, D]` and the ISA gate (None for dense)."""
        B, S, _ = x.shape
        shape = (B, S, self.num_heads, self.head_dim)
        q = norm_rope(self.q(x), self.norm_q, rope, self.num_heads)
        k = norm_rope(self.k(x), self.norm_k, rope, self.num_heads)
        v = self.v(x).view(shape)
        # Under mixed-precision training (float32 parameters, autocast) the norms return float32 and
        # the v projection the autocast dtype: attend in the projection's dtype, as bf16 weights do.
        q, k = q.to(v.dtype), k.to(v.dtype)
        gate = self.gate(x).to(q.dtype) if self.attention == "isa" else None
        return q, k, v, gate

    def attend(self, q, k, v, gate, num_target: int, plan: Optional[ISAPlan] = None):
        """Attention of projected q, k, v `[B, S, H, D]` -> (`[B, S, H * D]` before `o`, the ISA plan or None).

        Under sequence parallelism q, k, v and the gate hold this rank's tokens: an all-to-all gives it
        every token of its heads for the attention, and another gives the output back per token."""
        B, S = q.shape[:2]
        sp = self.sequence_parallel
        if sp is not None:
            q, k, v = (sp.seq_to_heads(t) for t in (q, k, v))
            if gate is not None:
                gate = sp.gather_partial(gate)
        if self.attention == "isa":
            out, plan = isa_attention(
                q, k, v, num_target, self.isa_config, gate=gate, plan=plan, backend=self.isa_backend, return_plan=True,
                kernel_options=self.isa_kernels,
            )
        else:
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
            plan = None
        if sp is not None:
            out = sp.heads_to_seq(out)
        return out.reshape(B, S, -1), plan

    def forward(self, x, rope, num_target: int, plan: Optional[ISAPlan] = None):
        """`x` `[B, S, dim]` -> (`[B, S, dim]`, the ISA plan used or None)."""
        out, plan = self.attend(*self.project(x, rope), num_target, plan)
        return self.o(out), plan


class CrossAttention(_AttentionLayers):
    """Text cross-attention (Wan's `WanT2VCrossAttention`); `alpha_1/alpha_2` are carried, unused."""

    def __init__(self, cfg: DiTConfig):
        super().__init__(cfg)
        self.alpha_1.requires_grad_(False)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """`x` `[B, S, dim]`, `context` `[B, L, dim]` -> `[B, S, dim]`."""
        B, S, _ = x.shape
        q = self.norm_q(self.q(x)).view(B, S, self.num_heads, self.head_dim)
        k = self.norm_k(self.k(context)).view(B, -1, self.num_heads, self.head_dim)
        v = self.v(context).view(B, -1, self.num_heads, self.head_dim)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.o(out.transpose(1, 2).reshape(B, S, -1))


class DiTBlock(nn.Module):
    """One Wan block: modulated self-attention, cross-attention, modulated MLP.

    `modulation` `[1, 6, dim]` plus the projected time embedding gives (shift, scale, gate) for the
    self-attention and (shift, scale, gate) for the MLP.
    """

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.eps = cfg.eps
        self.self_attn = SelfAttention(cfg)
        self.norm3 = AffineLayerNorm(cfg.dim, eps=cfg.eps) if cfg.cross_attn_norm else nn.Identity()
        self.cross_attn = CrossAttention(cfg)
        self.ffn = nn.Sequential(nn.Linear(cfg.dim, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, cfg.dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, cfg.dim) / cfg.dim**0.5)
        self.compile_regions: Optional[str] = None  # a torch.compile backend, set by EditorDiT.compile_blocks

    def forward(self, x, time_mod, context, rope, num_target: int, plan=None):
        """`x` `[B, S, dim]` float32 residual stream, `time_mod` `[B, 6, dim]` float32.

        The attention itself (ISA or SDPA, with its planner) runs eagerly between two regions,
        everything before it and everything after it; with `compile_regions` set those two run
        compiled (one graph each, shared by every block of the same shapes).
        """
        mods = (self.modulation.float() + time_mod).unbind(1)
        fns = compiled_regions(self.compile_regions) if self.compile_regions else (DiTBlock.attention_inputs, DiTBlock.after_attention)
        q, k, v, gate = fns[0](self, x, mods, rope)
        out, plan = self.self_attn.attend(q, k, v, gate, num_target, plan)
        return fns[1](self, x, out, mods, context), plan

    def attention_inputs(self, x, mods, rope):
        """Modulated LayerNorm, then q, k, v and the ISA gate of the self-attention."""
        shift_sa, scale_sa = mods[0], mods[1]
        h = _layer_norm_fp32(x, self.eps) * (1 + scale_sa[:, None]) + shift_sa[:, None]
        return self.self_attn.project(h.to(_matmul_dtype(self.ffn[0].weight, h)), rope)

    def after_attention(self, x, attn_out, mods, context):
        """Output projection and gated residual, cross-attention, modulated MLP."""
        dtype = self.ffn[0].weight.dtype
        gate_sa, shift_ff, scale_ff, gate_ff = mods[2], mods[3], mods[4], mods[5]
        x = x + self.self_attn.o(attn_out).float() * gate_sa[:, None]
        x = x + self.cross_attn(self.norm3(x).to(dtype), context).float()
        h = _layer_norm_fp32(x, self.eps) * (1 + scale_ff[:, None]) + shift_ff[:, None]
        return x + mlp(self.ffn, h.to(dtype)).float() * gate_ff[:, None]


# torch.compile'd block regions per backend: compiled once from the unbound methods and shared by
# every block (parameters are graph inputs), so 30 blocks cost one compilation per shape.
_REGIONS: dict = {}


def compiled_regions(backend: str):
    """The two compiled regions of `DiTBlock` for a torch.compile backend ("inductor", "aot_eager", ...)."""
    if backend not in _REGIONS:
        opts = dict(backend=backend, fullgraph=True, dynamic=False)
        _REGIONS[backend] = (torch.compile(DiTBlock.attention_inputs, **opts), torch.compile(DiTBlock.after_attention, **opts))
    return _REGIONS[backend]


class Head(nn.Module):
    """Output head: modulated LayerNorm then Linear to `prod(patch) * out_dim` per token (float32)."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.eps = cfg.eps
        self.head = nn.Linear(cfg.dim, math.prod(cfg.patch_size) * cfg.out_dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim**0.5)

    def forward(self, x: torch.Tensor, time_emb: torch.Tensor) -> torch.Tensor:
        shift, scale = (self.modulation.float() + time_emb[:, None].float()).unbind(1)
        h = _layer_norm_fp32(x, self.eps) * (1 + scale[:, None]) + shift[:, None]
        return _linear_fp32(self.head, h)


class EditorDiT(nn.Module):
    """Wan DiT editing in context: the noisy target and the clean source attend to each other.

    Forward:
        latents: `[B, C, F, H, W]` noisy target latents.
        timestep: `[B]` flow-matching time in `[0, 1000]` (`1000 * sigma`).
        text: `[B, L, text_dim]` text-encoder states, `L <= text_len` (zero-padded to `text_len`).
        source_latents: `[B, C, Fs, Hs, Ws]` clean source latents, or None for plain Wan
            text-to-video (no context).
        plans: one ISA plan per block (from a previous call's `return_plans`) to reuse routing.
        return_plans: also return the per-block plans used.

    Returns the prediction `[B, out_dim, F, H, W]` float32 (the flow velocity `noise - x0`), and
    the plans when asked.
    """

    def __init__(self, cfg: DiTConfig, init_weights: bool = True):
        """`init_weights=False` skips Wan's initialisation, for a model whose every parameter is about
        to be loaded (under ZeRO-3 it would gather each module's parameters for nothing)."""
        super().__init__()
        self.config = cfg
        self.patch_embedding = nn.Conv3d(cfg.in_dim, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.source_video_embedding_more_memory = nn.Conv3d(cfg.in_dim, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, cfg.dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.dim, cfg.dim))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, cfg.dim), nn.SiLU(), nn.Linear(cfg.dim, cfg.dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, cfg.dim * 6))
        self.blocks = nn.ModuleList([DiTBlock(cfg) for _ in range(cfg.num_layers)])
        self.head = Head(cfg)
        self.gradient_checkpointing = False
        self.sequence_parallel = None
        if init_weights:
            self.init_weights()
        if cfg.compile:
            self.compile_blocks()

    def compile_blocks(self, backend: Optional[str] = "inductor") -> "EditorDiT":
        """Run each block's non-attention work (norms, modulation, projections, RoPE, cross-attention,
        MLP) through `torch.compile` (`backend`; None for eager); returns self.

        The self-attention stays eager between the two compiled regions, so ISA's planner and
        kernels run as they do uncompiled. One graph per region serves every block; a new input
        shape compiles once more (the first forward at a shape takes tens of seconds on a GPU).
        """
        if backend is not None:
            compiled_regions(backend)
        for block in self.blocks:
            block.compile_regions = backend
        return self

    def enable_sequence_parallel(self, sp) -> "EditorDiT":
        """Split every forward's tokens over the ranks of `sp` (a `SequenceParallel`; None turns it
        off); returns self. Every rank of the group must hold the same weights and inputs."""
        if sp is not None and self.config.num_heads % sp.size:
            raise ValueError(f"sequence parallelism of degree {sp.size} needs model.dit.num_heads={self.config.num_heads} to divide by it")
        self.sequence_parallel = sp
        for block in self.blocks:
            block.self_attn.sequence_parallel = sp
        return self

    @torch.no_grad()
    def init_weights(self) -> None:
        """Wan's initialisation; the source embedding starts as a copy of `patch_embedding` and the
        ISA gate (`alpha_1`) at zero, so a fresh editor behaves like the base model plus context.
        Under ZeRO-3 (a model built in `deepspeed.zero.Init`) one module's parameters are gathered at
        a time, set on rank 0 and partitioned again (every rank must call it)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                with zero3_gathered(m.parameters(recurse=False)):
                    nn.init.xavier_uniform_(m.weight)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
        with zero3_gathered(self.patch_embedding.parameters()):
            nn.init.xavier_uniform_(self.patch_embedding.weight.flatten(1))
            nn.init.zeros_(self.patch_embedding.bias)
        for seq in (self.text_embedding, self.time_embedding):
            for m in seq.modules():
                if isinstance(m, nn.Linear):
                    with zero3_gathered([m.weight]):
                        nn.init.normal_(m.weight, std=0.02)
        with zero3_gathered([self.head.head.weight]):
            nn.init.zeros_(self.head.head.weight)
        self.init_editor_parameters()

    @torch.no_grad()
    def init_editor_parameters(self) -> None:
        """Start the parameters a plain Wan checkpoint lacks: source embedding from the target's,
        every `alpha` at zero (the ISA shortcut closed)."""
        with zero3_gathered(list(self.source_video_embedding_more_memory.parameters()) + list(self.patch_embedding.parameters())):
            self.source_video_embedding_more_memory.weight.copy_(self.patch_embedding.weight)
            self.source_video_embedding_more_memory.bias.copy_(self.patch_embedding.bias)
        for block in self.blocks:
            for attn in (block.self_attn, block.cross_attn):
                with zero3_gathered([attn.alpha_1.weight, attn.alpha_2.weight]):
                    nn.init.zeros_(attn.alpha_1.weight)
                    nn.init.zeros_(attn.alpha_2.weight)

    # Parameters that Wan applies in float32 (time embedding, modulation, the affine cross-attention
    # norm); kept in float32 storage when the rest of the model is cast to bf16, as diffusers does.
    FP32_PARAMETERS = ("time_embedding.", "time_projection.", "modulation", ".norm3.")

    def keep_fp32_parameters_(self) -> "EditorDiT":
        """Store `FP32_PARAMETERS` in float32 (after a cast to half precision); returns self."""
        for name, p in self.named_parameters():
            if any(tag in "." + name for tag in self.FP32_PARAMETERS):
                p.data = p.data.float()
        return self

    @property
    def dtype(self) -> torch.dtype:
        return self.patch_embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.patch_embedding.weight.device

    def token_grid(self, latents: torch.Tensor, name: str) -> tuple[int, int, int]:
        """Token grid `(f, h, w)` of latents `[B, C, F, H, W]`, checking they divide by the patch."""
        cfg = self.config
        if latents.dim() != 5 or latents.shape[1] != cfg.in_dim:
            raise ValueError(f"{name} must be [B, {cfg.in_dim}, F, H, W], got shape {tuple(latents.shape)}")
        sizes = latents.shape[2:]
        if any(n % p for n, p in zip(sizes, cfg.patch_size)):
            raise ValueError(f"{name} size (F, H, W) = {tuple(sizes)} is not divisible by the patch {cfg.patch_size}")
        grid = tuple(n // p for n, p in zip(sizes, cfg.patch_size))
        if max(grid) > cfg.rope_max_positions:
            raise ValueError(f"{name} token grid {grid} exceeds model.dit.rope_max_positions={cfg.rope_max_positions} on an axis")
        return grid

    def embed_text(self, text: torch.Tensor) -> torch.Tensor:
        """`[B, L, text_dim]` -> `[B, text_len, dim]`, zero-padding the text states to `text_len` as Wan does."""
        cfg = self.config
        if text.dim() != 3 or text.shape[-1] != cfg.text_dim:
            raise ValueError(f"text must be [B, L, {cfg.text_dim}], got shape {tuple(text.shape)}")
        if text.shape[1] > cfg.text_len:
            raise ValueError(f"text has {text.shape[1]} tokens, more than model.dit.text_len={cfg.text_len}")
        if text.shape[1] < cfg.text_len:
            text = F.pad(text, (0, 0, 0, cfg.text_len - text.shape[1]))
        return self.text_embedding(text.to(self.dtype))

    def embed_time(self, timestep: torch.Tensor):
        """`[B]` -> (time embedding `[B, dim]`, block modulation `[B, 6, dim]`), float32."""
        e = sinusoidal_embedding(self.config.freq_dim, timestep)
        lin1, act, lin2 = self.time_embedding
        e = _linear_fp32(lin2, act(_linear_fp32(lin1, e)))
        mod = _linear_fp32(self.time_projection[1], self.time_projection[0](e))
        return e, mod.unflatten(1, (6, self.config.dim))

    def forward(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        text: torch.Tensor,
        source_latents: Optional[torch.Tensor] = None,
        plans: Optional[Sequence[Optional[ISAPlan]]] = None,
        return_plans: bool = False,
    ):
        cfg = self.config
        B = latents.shape[0]
        grid = self.token_grid(latents, "latents")
        tokens = [self.patch_embedding(latents.to(self.dtype)).flatten(2).transpose(1, 2)]
        grids = [grid]
        if source_latents is not None:
            if source_latents.shape[0] != B:
                raise ValueError(f"source_latents batch {source_latents.shape[0]} differs from latents batch {B}")
            grids.append(self.token_grid(source_latents, "source_latents"))
            tokens.append(self.source_video_embedding_more_memory(source_latents.to(self.dtype)).flatten(2).transpose(1, 2))
        num_target = math.prod(grid)
        x = torch.cat(tokens, dim=1).float()
        rope = in_context_rope(grids, cfg.head_dim, device=x.device)
        sp = self.sequence_parallel
        if sp is not None:  # this rank keeps its shard of the tokens and of their rotations
            sp.real_length = x.shape[1]
            x, rope = sp.shard(x), tuple(sp.shard(r, dim=0) for r in rope)

        timestep = torch.as_tensor(timestep, device=x.device).reshape(-1).expand(B)
        time_emb, time_mod = self.embed_time(timestep)
        context = self.embed_text(text.to(x.device))

        if plans is not None and len(plans) != len(self.blocks):
            raise ValueError(f"plans has {len(plans)} entries, the model has {len(self.blocks)} blocks")
        used = []
        for i, block in enumerate(self.blocks):
            plan = plans[i] if plans is not None else None
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x, plan = torch.utils.checkpoint.checkpoint(block, x, time_mod, context, rope, num_target, plan, use_reentrant=False)
            else:
                x, plan = block(x, time_mod, context, rope, num_target, plan)
            used.append(plan)

        if sp is not None:
            out = self.unpatchify(sp.gather_replicated(self.head(x, time_emb))[:, :num_target], grid)
        else:
            out = self.unpatchify(self.head(x[:, :num_target], time_emb), grid)
        return (out, used) if return_plans else out

    def unpatchify(self, x: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        """`[B, f*h*w, pt*ph*pw*C]` -> `[B, C, f*pt, h*ph, w*pw]`."""
        f, h, w = grid
        pt, ph, pw = self.config.patch_size
        c = self.config.out_dim
        x = x.view(x.shape[0], f, h, w, pt, ph, pw, c)
        return x.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(x.shape[0], c, f * pt, h * ph, w * pw)
