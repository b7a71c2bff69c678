"""CLIP image/text embeddings with open_clip, and the LAION aesthetic head.

Weights come from paths in the config, never from a hub: `checkpoint` is an open_clip checkpoint
file for `model` (e.g. ViT-B-32's `open_clip_pytorch_model.bin`), or the word `random` for a
random-initialised model (tests and the laptop demo, where scores carry no meaning).
`liveditor-tiny-clip` (a 2-layer, 64-wide ViT registered from `clip_configs/`) keeps CPU tests fast.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

_CONFIG_DIR = Path(__file__).parent / "clip_configs"


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class AestheticHead(nn.Module):
    """The LAION improved-aesthetic-predictor MLP (or the linear v1 head) over L2-normalised CLIP image embeddings.

    The layout is read from the state dict: `layers.{i}.weight` of the MLP (Linear layers with
    dropouts between, indices 0, 2, 4, 6, 7 in the released file) or a single `weight`/`bias`.
    Output: one score per embedding, on the 1..10 scale of the training data.
    """

    def __init__(self, state_dict: dict):
        super().__init__()
        if "weight" in state_dict:
            out_f, in_f = state_dict["weight"].shape
            self.layers = nn.Sequential(nn.Linear(in_f, out_f))
            self.layers[0].load_state_dict(state_dict)
            return
        idx = sorted({int(k.split(".")[1]) for k in state_dict if k.startswith("layers.") and k.endswith(".weight")})
        if not idx:
            raise ValueError("aesthetic head state dict has neither 'weight' nor 'layers.N.weight' keys")
        mods: list[nn.Module] = [nn.Identity() for _ in range(idx[-1] + 1)]
        for i in idx:
            out_f, in_f = state_dict[f"layers.{i}.weight"].shape
            mods[i] = nn.Linear(in_f, out_f)
        self.layers = nn.Sequential(*mods)
        self.layers.load_state_dict({k[len("layers."):]: v for k, v in state_dict.items() if k.startswith("layers.")})

    @property
    def input_dim(self) -> int:
        return next(m for m in self.layers if isinstance(m, nn.Linear)).in_features

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.layers(F.normalize(embeddings, dim=-1)).squeeze(-1)


def load_aesthetic_head(path: str, embed_dim: int) -> AestheticHead:
    if not os.path.exists(path):
        raise FileNotFoundError(f"clip_scores.aesthetic_head '{path}' does not exist: point it at the MLP's .pth/.safetensors or set it to null")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    head = AestheticHead(state)
    if head.input_dim != embed_dim:
        raise ValueError(f"aesthetic head '{path}' expects {head.input_dim}-d embeddings but the CLIP model gives {embed_dim}-d: "
                         "use the head trained for this CLIP model (the LAION MLP is for ViT-L-14, 768-d)")
    return head.eval()


@dataclass
class ClipScorer:
    """An open_clip model ready to embed frames and texts (L2-normalised embeddings)."""

    model: nn.Module
    tokenizer: object
    device: torch.device
    image_size: int
    mean: torch.Tensor
    std: torch.Tensor
    batch_size: int = 64
    aesthetic: Optional[AestheticHead] = None
    _text_cache: dict = field(default_factory=dict, repr=False)

    def preprocess(self, frames: np.ndarray) -> torch.Tensor:
        """`uint8` `[N, H, W, 3]` RGB to normalised `[N, 3, S, S]`: short side resized to S, centre crop."""
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0
        h, w = x.shape[-2:]
        s = self.image_size / min(h, w)
        x = F.interpolate(x, size=(max(self.image_size, round(h * s)), max(self.image_size, round(w * s))),
                          mode="bicubic", align_corners=False, antialias=True)
        top, left = (x.shape[-2] - self.image_size) // 2, (x.shape[-1] - self.image_size) // 2
        return (x[..., top : top + self.image_size, left : left + self.image_size] - self.mean) / self.std

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """Preprocessed `[N, 3, S, S]` to L2-normalised `[N, D]`, `batch_size` images per forward."""
        out = [F.normalize(self.model.encode_image(images[i : i + self.batch_size].to(self.device)).float(), dim=-1).cpu()
               for i in range(0, len(images), self.batch_size)]
        return torch.cat(out) if out else torch.zeros(0, 1)

    def embed_frames(self, frames: np.ndarray) -> torch.Tensor:
        """`uint8` `[N, H, W, 3]` RGB to L2-normalised `[N, D]`."""
        return self.embed_images(self.preprocess(frames))

    def embed_frame_groups(self, groups: list[np.ndarray]) -> list[torch.Tensor]:
        """Embed several frame arrays (sizes may differ); one `[n_i, D]` per group.

        Each group (one clip's or one pair's frames) gets forwards of its own: a matrix product's
        rounding depends on its shape, so embedding groups in shared batches made a clip's scores
        depend on which other clips shared its chunk, i.e. on the partitioning, and scores at a
        threshold or a dedup tie could flip between a partitioned and a single run.
        """
        return [self.embed_images(self.preprocess(g)) for g in groups]

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """L2-normalised `[len(texts), D]`; each distinct text in a forward of its own (see
        `embed_frame_groups`), remembered for the scorer's lifetime (instructions repeat)."""
        out = []
        for text in texts:
            if text not in self._text_cache:
                tokens = self.tokenizer([text]).to(self.device)
                self._text_cache[text] = F.normalize(self.model.encode_text(tokens).float(), dim=-1).cpu()[0]
            out.append(self._text_cache[text])
        return torch.stack(out) if out else torch.zeros(0, 1)

    @torch.no_grad()
    def aesthetic_scores(self, image_embeddings: torch.Tensor) -> Optional[torch.Tensor]:
        return None if self.aesthetic is None else self.aesthetic(image_embeddings)


def load_clip_scorer(ccfg) -> ClipScorer:
    """Build the scorer from the `clip_scores` config group (model, checkpoint, device, batch_size, aesthetic_head)."""
    import open_clip

    open_clip.add_model_config(_CONFIG_DIR)
    name, ckpt = ccfg.model, ccfg.checkpoint
    if name not in open_clip.list_models():
        raise ValueError(f"clip_scores.model '{name}' is not an open_clip architecture: pick one of open_clip.list_models()")
    if ckpt is None:
        raise ValueError(f"clip_scores.checkpoint is not set: point it at an open_clip checkpoint file for '{name}' "
                         "(weights are never downloaded at run time), or set it to 'random' for a random-initialised model")
    if ckpt != "random" and not os.path.exists(ckpt):
        raise FileNotFoundError(f"clip_scores.checkpoint '{ckpt}' does not exist: fix the path or set it to 'random'")
    device = pick_device(ccfg.device)
    if ckpt == "random":
        torch.manual_seed(int(ccfg.get("seed", 0)))  # the same random model in every job and rerun
    model = open_clip.create_model(name, pretrained=None if ckpt == "random" else ckpt, device=device).eval()
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else int(size)
    mean = torch.tensor(getattr(model.visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(getattr(model.visual, "image_std", None) or open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    scorer = ClipScorer(model, open_clip.get_tokenizer(name), device, size, mean, std, int(ccfg.batch_size))
    if ccfg.get("aesthetic_head"):
        embed_dim = int(model.text_projection.shape[1]) if hasattr(model, "text_projection") else scorer.embed_frames(
            np.zeros((1, size, size, 3), np.uint8)).shape[1]
        scorer.aesthetic = load_aesthetic_head(ccfg.aesthetic_head, embed_dim)
    return scorer
