"""Tiny random-initialised components in the real on-disk formats, made offline.

`make_tiny_wan_dir` writes a diffusers-format Wan directory (`vae/` AutoencoderKLWan, `text_encoder/`
UMT5EncoderModel, `tokenizer/` a byte-level BPE tokenizer trained here on a few sentences), and
`make_tiny_checkpoint` a LIVEditor-layout DiT checkpoint matching `configs/model/tiny.yaml`. The
edit pipeline loads them exactly as it loads released weights; the tests and the CPU demo use them
so that nothing is downloaded. `make_codec_wan_dir` writes the same text encoder and tokenizer with
an exactly invertible `PatchCodec` in `vae/` (liveditor/pipeline/codec.py).

Declared latent statistics are measured, not assumed: both VAEs' `latents_mean` / `latents_std`
default to those of `calibration_video` (a random VAE's latents have a per-channel std near 0.1, so
declaring 0 / 1 would shrink the DiT's targets ~10x and fail liveditor-precompute's latent check).
"""

from __future__ import annotations

from pathlib import Path

import torch

from liveditor.models import DiTConfig, EditorDiT, save_editor_weights

_CORPUS = [
    "make the sky purple", "turn the car red", "add snow to the scene", "replace the dog with a cat",
    "remove the person on the left", "make it look like a watercolor painting", "change the season to autumn",
    "a person rides a bike down the street at sunset", "静态，细节模糊不清，最差质量，低质量",
]


def make_tiny_tokenizer(out_dir: Path, vocab_size: int = 384):
    """A byte-level BPE tokenizer with T5's special tokens (`<pad>`=0, `</s>`=1, `<unk>`=2) that
    appends `</s>`; saved as a `PreTrainedTokenizerFast` that `AutoTokenizer` loads offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(str(out_dir))
    return fast


def calibration_video(seed: int = 0, frames: int = 9, height: int = 64, width: int = 64) -> torch.Tensor:
    """A smooth moving colour pattern, uint8 `[frames, height, width, 3]`, a function of `seed` alone:
    per colour, four plane waves of random frequency (1-4 cycles per side), phase and speed."""
    g = torch.Generator().manual_seed(seed)
    k = 4
    fy, fx = (torch.rand(2, 3, k, generator=g) * 3 + 1) * torch.where(torch.rand(2, 3, k, generator=g) < 0.5, -1.0, 1.0)
    phase, speed = torch.rand(3, k, generator=g) * 2 * torch.pi, torch.rand(3, k, generator=g) * 0.5
    t = torch.arange(frames, dtype=torch.float64).view(-1, 1, 1, 1, 1)
    y = torch.linspace(0, 1, height, dtype=torch.float64).view(1, -1, 1, 1, 1)
    x = torch.linspace(0, 1, width, dtype=torch.float64).view(1, 1, -1, 1, 1)
    waves = torch.sin(2 * torch.pi * (fy * y + fx * x) + phase + speed * t)  # [T, H, W, 3, k]
    return (127.5 + 120 * waves.mean(-1)).round().clamp(0, 255).to(torch.uint8)


def write_tiny_text_encoder(root: Path, text_dim: int = 32):
    """Write `root/tokenizer` (see `make_tiny_tokenizer`) and `root/text_encoder`, a random 2-layer
    UMT5EncoderModel of width `text_dim` (drawn from torch's global generator)."""
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer = make_tiny_tokenizer(root / "tokenizer")
    text_cfg = UMT5Config(
        vocab_size=len(tokenizer), d_model=text_dim, d_kv=8, d_ff=2 * text_dim, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=32, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0,
    )
    UMT5EncoderModel(text_cfg).save_pretrained(str(root / "text_encoder"))


def make_tiny_wan_dir(root, text_dim: int = 32, z_dim: int = 16, seed: int = 0) -> Path:
    """Write a tiny diffusers-format Wan directory at `root` and return it. The random VAE's declared
    `latents_mean` / `latents_std` are the per-channel statistics of its posterior mean on
    `calibration_video(seed)`, so its normalised latents are near N(0, 1) on such content."""
    from diffusers import AutoencoderKLWan

    root = Path(root)
    torch.manual_seed(seed)
    vae = AutoencoderKLWan(
        base_dim=8, z_dim=z_dim, dim_mult=[1, 2, 4, 4], num_res_blocks=1, attn_scales=[],
        temperal_downsample=[False, True, True],
        latents_mean=[0.0] * z_dim, latents_std=[1.0] * z_dim,
    ).eval()
    video = calibration_video(seed).permute(3, 0, 1, 2).float().div(127.5).sub(1.0).unsqueeze(0)
    with torch.no_grad():
        mu = vae.encode(video).latent_dist.mode().double().transpose(0, 1).flatten(1)  # [z, values]
    vae.register_to_config(latents_mean=[round(v, 6) for v in mu.mean(1).tolist()],
                           latents_std=[round(v, 6) for v in mu.std(1, unbiased=False).tolist()])
    vae.save_pretrained(str(root / "vae"))
    write_tiny_text_encoder(root, text_dim)
    return root


def make_codec_wan_dir(root, patch: int = 2, latents_mean=None, latents_std=None, text_dim: int = 32, seed: int = 0) -> Path:
    """Write a Wan directory at `root` whose `vae/` is a `PatchCodec(patch)` (config.json only) beside
    the tiny random text encoder and tokenizer of `make_tiny_wan_dir`; returns `root`.

    `latents_mean` / `latents_std`: `3 * patch**2` floats each, the raw latents' statistics (pixels in
    `[-1, 1]`; `codec.codec_stats(clips, patch)` measures them on the data to be encoded). Left None,
    they are those of `calibration_video(seed)`."""
    from liveditor.pipeline.codec import PatchCodec, codec_stats

    root = Path(root)
    if latents_mean is None or latents_std is None:
        mean, std = codec_stats([calibration_video(seed)], patch)
        latents_mean = [round(v, 6) for v in mean] if latents_mean is None else latents_mean
        latents_std = [round(v, 6) for v in std] if latents_std is None else latents_std
    PatchCodec(patch, latents_mean, latents_std).save(root / "vae")
    torch.manual_seed(seed)
    write_tiny_text_encoder(root, text_dim)
    return root


def randomize_(model: torch.nn.Module, seed: int = 0, std: float = 0.05) -> torch.nn.Module:
    """Fill every parameter with noise (Wan's init zeroes the head, which would make outputs trivial)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g) * std
            # norm scales stay near 1 so activations keep their size through the blocks
            p.copy_(noise + 1.0 if ".norm" in name and name.endswith("weight") else noise)
    return model


def make_tiny_checkpoint(path, cfg: DiTConfig, seed: int = 0, layout: str = "liveditor") -> Path:
    """Save a randomly filled `EditorDiT(cfg)` at `path` in `layout`; returns the path."""
    torch.manual_seed(seed)
    model = randomize_(EditorDiT(cfg), seed)
    save_editor_weights(model, path, layout=layout)
    return Path(path)
