"""VAE and text encoder of a diffusers-format Wan directory (`vae/`, `text_encoder/`, `tokenizer/`).

    vae = WanVAE.load("/ckpt/Wan2.1-T2V-1.3B-Diffusers", device="cuda")
    latents = vae.encode(video)                 # [B, 3, T, H, W] in [-1, 1] -> [B, 16, 1 + (T-1)/4, H/8, W/8]
    # a vae/config.json with "_class_name": "PatchCodec" loads the exactly invertible codec instead
    # (liveditor/pipeline/codec.py): [B, 3, T, H, W] -> [B, 3 p^2, T, H/p, W/p]
    text = TextEncoder.load(same_dir, text_len=512, device="cuda", dtype=torch.bfloat16)
    states = text.encode(["make it snowy"])     # [B, 512, 4096], zeros after each prompt's tokens

Nothing here downloads: a path that is missing, or lacks the folder a component needs, is an error
naming the config key that holds it.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Optional, Sequence

import torch
from tqdm.auto import tqdm

log = logging.getLogger(__name__)


@contextmanager
def library_progress_bars(enabled: bool):
    """Within the block, transformers', diffusers' and huggingface_hub's own progress bars (e.g.
    transformers' "Loading weights") are shown only when `enabled`; their settings are put back after."""
    if enabled:
        yield
        return
    import importlib

    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    hub_tqdm = importlib.import_module("huggingface_hub.utils.tqdm")  # the module (huggingface_hub.utils.tqdm is also a class)

    was = (transformers_logging.is_progress_bar_enabled(), diffusers_logging.is_progress_bar_enabled(), dict(hub_tqdm.progress_bar_states))
    transformers_logging.disable_progress_bar()
    diffusers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was[0]:
            transformers_logging.enable_progress_bar()
        if was[1]:
            diffusers_logging.enable_progress_bar()
        hub_tqdm.progress_bar_states.clear()
        hub_tqdm.progress_bar_states.update(was[2])


def bar_options(progress) -> tuple[bool, dict]:
    """`progress` (a bool, or a dict of tqdm keyword arguments: shown unless it says `disable=True`)
    -> (shown, tqdm keyword arguments)."""
    if isinstance(progress, dict):
        options = dict(progress)
        return not options.pop("disable", False), options
    return bool(progress), {}


class ComponentError(ValueError):
    """A configured path does not hold what it should; the message names the config key."""


def check_wan_dir(path, key: str, subfolders: Sequence[str]) -> Path:
    """Check that config value `key` = `path` is a folder with `subfolders`; return it as a Path."""
    if path is None or str(path).strip() == "":
        raise ComponentError(f"{key} is not set: point it at a diffusers-format Wan directory (with {', '.join(f + '/' for f in subfolders)})")
    p = Path(os.path.expanduser(str(path)))
    if not p.exists():
        raise ComponentError(f"{key}='{path}' does not exist: point it at a diffusers-format Wan directory")
    if not p.is_dir():
        raise ComponentError(f"{key}='{path}' is not a folder: point it at a diffusers-format Wan directory")
    for sub in subfolders:
        if not (p / sub).is_dir():
            raise ComponentError(f"{key}='{path}' has no {sub}/ folder: point it at a diffusers-format Wan directory")
    return p


class WanVAE:
    """diffusers `AutoencoderKLWan` with Wan's per-channel latent normalisation, or a `PatchCodec`.

    Latents handed to the DiT are `(mu - latents_mean) / latents_std` (the posterior mean, no sampling),
    as in Wan and diffusers' Wan pipelines. With a `PatchCodec` (liveditor/pipeline/codec.py) the
    latents are its normalised space-to-depth pixels, computed in float32 whatever `dtype` says (it has
    no weights); strides and `z_dim` come from the codec.
    """

    def __init__(self, vae, device="cpu", dtype: torch.dtype = torch.float32):
        from liveditor.pipeline.codec import PatchCodec

        self.device, self.dtype = torch.device(device), dtype
        self.is_codec = isinstance(vae, PatchCodec)
        if self.is_codec:
            self.vae, self.z_dim, self.mean, self.std = vae, vae.z_dim, vae.mean, vae.std
            self.temporal_stride, self.spatial_stride = vae.temporal_stride, vae.spatial_stride
            return
        self.vae = (vae.to(device=device) if vae.dtype == dtype else vae.to(device=device, dtype=dtype)).eval()
        cfg = vae.config
        self.z_dim = int(cfg.z_dim)
        self.mean = torch.tensor(cfg.latents_mean, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self.std = torch.tensor(cfg.latents_std, dtype=torch.float32).view(1, -1, 1, 1, 1)
        if self.mean.shape[1] != self.z_dim or self.std.shape[1] != self.z_dim:
            raise ComponentError(f"VAE config latents_mean/latents_std have {self.mean.shape[1]}/{self.std.shape[1]} entries, z_dim is {self.z_dim}")
        self.temporal_stride = 2 ** sum(bool(t) for t in cfg.temperal_downsample)
        self.spatial_stride = 2 ** (len(cfg.dim_mult) - 1)

    @classmethod
    def load(cls, wan_dir, device="cpu", dtype: torch.dtype = torch.float32, key: str = "model.vae_path") -> "WanVAE":
        """The VAE in `<wan_dir>/vae/`: a `PatchCodec` when its config.json says `"_class_name": "PatchCodec"`,
        else diffusers' `AutoencoderKLWan`."""
        from liveditor.pipeline.codec import CODEC_CLASS, PatchCodec

        root = check_wan_dir(wan_dir, key, ["vae"])
        if _vae_class_name(root / "vae") == CODEC_CLASS:
            try:
                return cls(PatchCodec.from_dir(root / "vae"), device, dtype)
            except ValueError as exc:
                raise ComponentError(f"{key}='{wan_dir}': {exc}") from exc
        from diffusers import AutoencoderKLWan

        try:
            vae = AutoencoderKLWan.from_pretrained(str(root / "vae"), torch_dtype=dtype, local_files_only=True)
        except Exception as exc:
            raise ComponentError(f"{key}='{wan_dir}': the VAE in vae/ could not be loaded: {exc}") from exc
        return cls(vae, device, dtype)

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """`(C, F, h, w)` of the latents of a `[T=num_frames, height, width]` video."""
        return (self.z_dim, (num_frames - 1) // self.temporal_stride + 1, height // self.spatial_stride, width // self.spatial_stride)

    @torch.no_grad()
    def encode(self, video: torch.Tensor, progress=False) -> torch.Tensor:
        """`[B, 3, T, H, W]` in `[-1, 1]` -> normalised latents `[B, z, F, h, w]` float32.

        `progress`: a bar over the VAE's causal chunks (the first frame, then 4 frames at a time);
        True, or a dict of tqdm keyword arguments (`bar_options`)."""
        if self.is_codec:
            return self.vae.encode(video.to(self.device, torch.float32))
        chunks = (video.shape[2] - 1) // self.temporal_stride + 1
        with _chunk_progress(self.vae.encoder, chunks, "VAE encode", progress):
            dist = self.vae.encode(video.to(self.device, self.dtype)).latent_dist
        mu = dist.mode().float()
        return (mu - self.mean.to(mu.device)) / self.std.to(mu.device)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, progress=False) -> torch.Tensor:
        """Normalised latents `[B, z, F, h, w]` -> video `[B, 3, T, H, W]` in `[-1, 1]` float32.

        `progress`: a bar over the latent frames (the VAE decodes one at a time); as in `encode`."""
        if self.is_codec:
            return self.vae.decode(latents.to(self.device, torch.float32))
        z = latents.float() * self.std.to(latents.device) + self.mean.to(latents.device)
        with _chunk_progress(self.vae.decoder, latents.shape[2], "VAE decode", progress):
            return self.vae.decode(z.to(self.device, self.dtype)).sample.float().clamp(-1, 1)

    def to(self, device=None, dtype: Optional[torch.dtype] = None) -> "WanVAE":
        """Move (and cast) the VAE in place; returns self."""
        device = self.device if device is None else torch.device(device)
        dtype = self.dtype if dtype is None else dtype
        if not self.is_codec:  # dtype only when it changes (diffusers warns on every cast)
            self.vae.to(device=device) if dtype == self.dtype else self.vae.to(device=device, dtype=dtype)
        self.device, self.dtype = device, dtype
        return self


def _vae_class_name(vae_dir: Path) -> Optional[str]:
    """`_class_name` of `vae_dir/config.json`, None when it cannot be read (diffusers then names the problem)."""
    import json

    try:
        return json.loads((vae_dir / "config.json").read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return None


@contextmanager
def _chunk_progress(module: torch.nn.Module, total: int, desc: str, enabled):
    """A progress bar advanced by each forward call of `module` (diffusers' Wan VAE calls its encoder
    once per causal chunk and its decoder once per latent frame). `enabled`: see `bar_options`."""
    shown, options = bar_options(enabled)
    if not shown:
        yield
        return
    bar = tqdm(**{"total": total, "desc": desc, "unit": "chunk", "leave": False, **options})
    def advance(*_):  # returns None: a forward hook's return value would replace the module's output
        bar.update(1)

    handle = module.register_forward_hook(advance)
    try:
        yield
    finally:
        handle.remove()
        bar.close()


class TextEncoder:
    """umT5 encoder (transformers `UMT5EncoderModel`) and its tokenizer.

    Prompts are tokenised to `text_len` tokens; states after each prompt's last token are set to zero,
    which is what Wan feeds its DiT (it trims to the real length and the DiT zero-pads back).
    """

    def __init__(self, model, tokenizer, text_len: int = 512, device="cpu"):
        self.model, self.tokenizer, self.text_len = model.eval(), tokenizer, int(text_len)
        self.device = torch.device(device)

    @classmethod
    def load(cls, wan_dir, text_len: int = 512, device="cpu", dtype: torch.dtype = torch.float32, key: str = "model.text_encoder_path") -> "TextEncoder":
        from transformers import AutoTokenizer, UMT5EncoderModel

        root = check_wan_dir(wan_dir, key, ["text_encoder", "tokenizer"])
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(root / "tokenizer"), local_files_only=True)
        except Exception as exc:
            raise ComponentError(f"{key}='{wan_dir}': the tokenizer in tokenizer/ could not be loaded: {exc}") from exc
        try:
            model = UMT5EncoderModel.from_pretrained(str(root / "text_encoder"), dtype=dtype, local_files_only=True)
        except Exception as exc:
            raise ComponentError(f"{key}='{wan_dir}': the umT5 encoder in text_encoder/ could not be loaded: {exc}") from exc
        return cls(model.to(device), tokenizer, text_len, device)

    @property
    def dim(self) -> int:
        return int(self.model.config.d_model)

    def token_counts(self, prompts: Sequence[str]) -> list[int]:
        """Tokens of each prompt before truncation (special tokens included)."""
        return [len(ids) for ids in self.tokenizer(list(prompts), add_special_tokens=True, truncation=False).input_ids]

    def warn_truncation(self, prompts: Sequence[str], what: str = "prompt") -> list[int]:
        """Log a warning for each prompt longer than `text_len` tokens; returns the token counts."""
        counts = self.token_counts(prompts)
        seen = set()
        for i, (prompt, n) in enumerate(zip(prompts, counts)):
            if n > self.text_len and prompt not in seen:
                seen.add(prompt)
                shown = prompt if len(prompt) <= 60 else prompt[:57] + "..."
                log.warning(
                    "%s %d of %d (%r) has %d tokens; the text encoder takes %d (model.dit.text_len): "
                    "the last %d tokens are dropped", what, i + 1, len(prompts), shown, n, self.text_len, n - self.text_len,
                )
        return counts

    def to(self, device=None, dtype: Optional[torch.dtype] = None) -> "TextEncoder":
        """Move (and cast) the encoder in place; returns self."""
        self.device = self.device if device is None else torch.device(device)
        self.model.to(device=self.device, dtype=dtype)
        return self

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @torch.no_grad()
    def encode(self, prompts: Sequence[str], warn: bool = True) -> torch.Tensor:
        """`B` prompts -> `[B, text_len, d_model]` in the encoder's dtype; with `warn`, prompts longer
        than `text_len` tokens are named in a warning (they are cut to `text_len`)."""
        if warn:
            self.warn_truncation(prompts)
        tokens = self.tokenizer(
            list(prompts), padding="max_length", max_length=self.text_len, truncation=True,
            add_special_tokens=True, return_attention_mask=True, return_tensors="pt",
        )
        ids, mask = tokens.input_ids.to(self.device), tokens.attention_mask.to(self.device)
        states = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        return states * mask.unsqueeze(-1).to(states.dtype)
