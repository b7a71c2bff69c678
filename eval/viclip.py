"""ViCLIP (InternVid), the video-text model of EditVerseBench's video-text metric.

Our own implementation of the architecture, whose parameter names match the released checkpoint
`ViClip-InternVid-10M-FLT.pth` (a `torch.save` of `{"model": state_dict}`), so it loads with
`strict=True`:

- `vision_encoder`: a ViT-L/14 over 8 frames. `conv1` (Conv3d, kernel `(1, 14, 14)`, no bias)
  makes `[B, 1024, T, 16, 16]` patches; each frame gets `class_embedding + positional_embedding`
  (257 x 1024), patch tokens add `temporal_positional_embedding[:, t]` (1 x 8 x 1024); one class
  token (frame 0's) is followed by all `16 * 16 * T` patch tokens, ordered patch-major; `ln_pre`,
  24 `transformer.resblocks` (pre-norm `ln_1`/`attn`/`ln_2`/`mlp.c_fc`/`mlp.c_proj`, QuickGELU,
  `nn.MultiheadAttention` over `[L, B, D]`), `ln_post`, then the class token `@ proj` (1024 x 768).
- `text_encoder`: CLIP's text transformer (width 768, 12 layers, 12 heads, causal mask) with a
  context of 32 tokens; `token_embedding`, `positional_embedding` (32 x 768), `ln_final`, the
  end-of-text token's feature `@ text_projection` (768 x 768).
- `temp`: the contrastive temperature (unused for scoring).

Text is tokenised with CLIP's BPE (`open_clip`'s `SimpleTokenizer`, whose vocabulary ships with
open_clip), truncated to 32 tokens with the last one set to end-of-text.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn


@dataclass
class ViCLIPConfig:
    """Sizes; the defaults are the released ViT-L/14 model."""

    image_size: int = 224
    patch_size: int = 14
    vision_width: int = 1024
    vision_layers: int = 24
    vision_heads: int = 16
    num_frames: int = 8
    embed_dim: int = 768
    text_width: int = 768
    text_layers: int = 12
    text_heads: int = 12
    context_length: int = 32
    vocab_size: int = 49408


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, width * 4)), ("gelu", QuickGELU()),
                                              ("c_proj", nn.Linear(width * 4, width))]))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, attn_mask=None) -> torch.Tensor:
        """`x` `[L, B, D]`."""
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=attn_mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads) for _ in range(layers))

    def forward(self, x: torch.Tensor, attn_mask=None) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, attn_mask)
        return x


class ViCLIPVision(nn.Module):
    def __init__(self, cfg: ViCLIPConfig):
        super().__init__()
        w, p = cfg.vision_width, cfg.patch_size
        self.conv1 = nn.Conv3d(3, w, (1, p, p), (1, p, p), bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(w))
        self.positional_embedding = nn.Parameter(torch.zeros((cfg.image_size // p) ** 2 + 1, w))
        self.temporal_positional_embedding = nn.Parameter(torch.zeros(1, cfg.num_frames, w))
        self.ln_pre = nn.LayerNorm(w)
        self.transformer = Transformer(w, cfg.vision_layers, cfg.vision_heads)
        self.ln_post = nn.LayerNorm(w)
        self.proj = nn.Parameter(torch.zeros(w, cfg.embed_dim))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """`video` `[B, T, 3, H, W]` normalised -> `[B, embed_dim]` (not normalised)."""
        x = self.conv1(video.permute(0, 2, 1, 3, 4))  # [B, D, T, h, w]
        B, D, T, h, w = x.shape
        x = x.permute(0, 2, 3, 4, 1).reshape(B, T, h * w, D)
        cls = (self.class_embedding + self.positional_embedding[0]).expand(B, 1, D)
        x = x + self.positional_embedding[1:]
        # One frame: the mean temporal embedding (the release's rule for T == 1).
        temporal = self.temporal_positional_embedding.mean(1, keepdim=True) if T == 1 else self.temporal_positional_embedding[:, :T]
        x = x + temporal.unsqueeze(2)  # [1, T, 1, D]
        x = x.permute(0, 2, 1, 3).reshape(B, h * w * T, D)  # patch-major: (n t)
        x = self.ln_pre(torch.cat([cls.to(x.dtype), x], dim=1))
        x = self.transformer(x.permute(1, 0, 2))
        return self.ln_post(x[0]) @ self.proj


class ViCLIPText(nn.Module):
    def __init__(self, cfg: ViCLIPConfig):
        super().__init__()
        self.context_length = cfg.context_length
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.text_width)
        self.positional_embedding = nn.Parameter(torch.zeros(cfg.context_length, cfg.text_width))
        self.transformer = Transformer(cfg.text_width, cfg.text_layers, cfg.text_heads)
        self.ln_final = nn.LayerNorm(cfg.text_width)
        self.text_projection = nn.Parameter(torch.zeros(cfg.text_width, cfg.embed_dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """`tokens` `[B, context_length]` int -> `[B, embed_dim]` (not normalised)."""
        L = tokens.shape[1]
        mask = torch.full((L, L), float("-inf"), device=tokens.device).triu_(1)
        x = self.token_embedding(tokens) + self.positional_embedding[:L]
        x = self.ln_final(self.transformer(x.permute(1, 0, 2), mask).permute(1, 0, 2))
        return x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ self.text_projection


@functools.lru_cache(maxsize=1)
def _clip_bpe():
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


class ViCLIP(nn.Module):
    """Vision and text towers; `score(video, text)` is `100 * cos`."""

    def __init__(self, cfg: ViCLIPConfig = ViCLIPConfig()):
        super().__init__()
        self.cfg = cfg
        self.vision_encoder = ViCLIPVision(cfg)
        self.text_encoder = ViCLIPText(cfg)
        self.temp = nn.Parameter(torch.tensor(0.01))

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """CLIP BPE ids `[B, context_length]`: `<start> tokens <end>`, truncated with `<end>` last, zero-padded."""
        tok = _clip_bpe()
        sot, eot = tok.encoder["<start_of_text>"], tok.encoder["<end_of_text>"]
        n = self.cfg.context_length
        out = torch.zeros(len(texts), n, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = [sot] + tok.encode(text) + [eot]
            if len(ids) > n:
                ids = ids[:n]
                ids[-1] = eot
            out[i, :len(ids)] = torch.tensor(ids)
        return out

    @torch.no_grad()
    def score(self, video: torch.Tensor, text: str) -> float:
        """`100 * cos(video embedding, text embedding)`; `video` `[1, T, 3, 224, 224]` normalised."""
        device = self.temp.device
        v = self.vision_encoder(video.to(device, torch.float32)).float()
        t = self.text_encoder(self.tokenize([text]).clamp(max=self.cfg.vocab_size - 1).to(device)).float()
        v, t = v / v.norm(dim=-1, keepdim=True), t / t.norm(dim=-1, keepdim=True)
        return float((t @ v.T).squeeze()) * 100.0


def config_from_state_dict(state: dict) -> ViCLIPConfig:
    """Read the sizes from a checkpoint's tensor shapes (so tiny test checkpoints load too)."""
    conv = state["vision_encoder.conv1.weight"]  # [W, 3, 1, p, p]
    width, patch = conv.shape[0], conv.shape[-1]
    grid = int(round((state["vision_encoder.positional_embedding"].shape[0] - 1) ** 0.5))
    vision_layers = 1 + max(int(k.split(".")[3]) for k in state if k.startswith("vision_encoder.transformer.resblocks."))
    text_layers = 1 + max(int(k.split(".")[3]) for k in state if k.startswith("text_encoder.transformer.resblocks."))
    vocab, text_width = state["text_encoder.token_embedding.weight"].shape
    return ViCLIPConfig(
        image_size=grid * patch, patch_size=patch, vision_width=width, vision_layers=vision_layers,
        vision_heads=max(1, width // 64), num_frames=state["vision_encoder.temporal_positional_embedding"].shape[1],
        embed_dim=state["vision_encoder.proj"].shape[1], text_width=text_width, text_layers=text_layers,
        text_heads=max(1, text_width // 64), context_length=state["text_encoder.positional_embedding"].shape[0], vocab_size=vocab,
    )


def load_viclip(path, device="cpu") -> ViCLIP:
    """Load `ViClip-InternVid-10M-FLT.pth` (or a checkpoint of the same layout) from a local path."""
    path = Path(str(path)).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"ViCLIP checkpoint '{path}' does not exist: point models.viclip at "
                                "ViClip-InternVid-10M-FLT.pth (OpenGVLab/VBench_Used_Models on Hugging Face)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("model", state)
    model = ViCLIP(config_from_state_dict(state))
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()
