"""Tiny random-initialised components in the real on-disk formats, made offline.

`make_tiny_wan_dir` writes a diffusers-format Wan directory (`vae/` AutoencoderKLWan, `text_encoder/`
UMT5EncoderModel, `tokenizer/` a byte-level BPE tokenizer trained here on a few sentences), and
`make_tiny_checkpoint` a LIVEditor-layout DiT checkpoint matching `configs/model/tiny.yaml`. The
edit pipeline loads them exactly as it loads released weights; the tests and the CPU demo use them
so that nothing is downloaded.
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


def make_tiny_wan_dir(root, text_dim: int = 32, z_dim: int = 16, seed: int = 0) -> Path:
    """Write a tiny diffusers-format Wan directory at `root` and return it."""
    from diffusers import AutoencoderKLWan
    from transformers import UMT5Config, UMT5EncoderModel

    root = Path(root)
    torch.manual_seed(seed)
    tokenizer = make_tiny_tokenizer(root / "tokenizer")
    vae = AutoencoderKLWan(
        base_dim=8, z_dim=z_dim, dim_mult=[1, 2, 4, 4], num_res_blocks=1, attn_scales=[],
        temperal_downsample=[False, True, True],
        latents_mean=[0.0] * z_dim, latents_std=[1.0] * z_dim,
    )
    vae.save_pretrained(str(root / "vae"))
    text_cfg = UMT5Config(
        vocab_size=len(tokenizer), d_model=text_dim, d_kv=8, d_ff=2 * text_dim, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=32, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0,
    )
    UMT5EncoderModel(text_cfg).save_pretrained(str(root / "text_encoder"))
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
