"""Random-initialised scoring models in the real on-disk formats, made offline (tests, demo, benchmark).

The CLIP tokenizer is the real one: its `vocab.json` and `merges.txt` are built from the BPE
vocabulary that open_clip ships (`bpe_simple_vocab_16e6.txt.gz`, the file OpenAI's CLIP uses), so
text is tokenised exactly as with the released models. Model weights are random: scores carry no
meaning, but every code path (loading, preprocessing, pooling, projection) is the real one.

    make_clip_dir(tmp / "clip", "tiny")        # transformers CLIPModel folder + tokenizer
    make_clip_dir(tmp / "clip_l14", "l14")     # real-size CLIP ViT-L/14, random weights
    make_dinov2_dir(tmp / "dinov2", "tiny"); make_dino_vit_dir(tmp / "dino"); make_viclip_checkpoint(tmp / "viclip.pth")
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import torch

# name -> (vision width, layers, heads, patch, image size, text width, layers, heads, projection dim)
CLIP_SIZES = {
    "tiny": (32, 2, 2, 14, 224, 32, 2, 2, 16),
    "b32": (768, 12, 12, 32, 224, 512, 12, 8, 512),
    "l14": (1024, 24, 16, 14, 224, 768, 12, 12, 768),
    "h14": (1280, 32, 16, 14, 224, 1024, 24, 16, 1024),  # PickScore_v1 / LAION ViT-H/14
}
DINOV2_SIZES = {"tiny": (32, 2, 2), "base": (768, 12, 12)}


def _bytes_to_unicode() -> dict:
    """GPT-2/CLIP's reversible byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def make_clip_tokenizer(out_dir) -> Path:
    """Write CLIP's `vocab.json`, `merges.txt` and tokenizer config (49408 tokens) to `out_dir`."""
    import open_clip

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    merges = gzip.open(bpe).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in merges]
    vocab = list(_bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    (out_dir / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer(str(out_dir / "vocab.json"), str(out_dir / "merges.txt"), model_max_length=77)
    tok.save_pretrained(str(out_dir))
    return out_dir


def make_clip_dir(out_dir, size: str = "tiny", seed: int = 0) -> Path:
    """A transformers CLIPModel folder of `size` (`CLIP_SIZES`) with random weights and CLIP's tokenizer."""
    from transformers import CLIPConfig, CLIPModel

    vw, vl, vh, patch, image, tw, tl, th, proj = CLIP_SIZES[size]
    torch.manual_seed(seed)
    cfg = CLIPConfig(
        text_config=dict(hidden_size=tw, intermediate_size=4 * tw, num_hidden_layers=tl, num_attention_heads=th,
                         vocab_size=49408, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
                         hidden_act="gelu" if size == "h14" else "quick_gelu"),
        vision_config=dict(hidden_size=vw, intermediate_size=4 * vw, num_hidden_layers=vl, num_attention_heads=vh,
                           patch_size=patch, image_size=image, hidden_act="gelu" if size == "h14" else "quick_gelu"),
        projection_dim=proj,
    )
    out_dir = Path(out_dir)
    CLIPModel(cfg).eval().save_pretrained(str(out_dir))
    make_clip_tokenizer(out_dir)
    return out_dir


def make_dinov2_dir(out_dir, size: str = "tiny", seed: int = 0) -> Path:
    """A transformers Dinov2Model folder (`DINOV2_SIZES`: "tiny" or "base") with random weights."""
    from transformers import Dinov2Config, Dinov2Model

    width, layers, heads = DINOV2_SIZES[size]
    torch.manual_seed(seed)
    Dinov2Model(Dinov2Config(hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads, patch_size=14,
                             image_size=518)).eval().save_pretrained(str(out_dir))
    return Path(out_dir)


def make_dino_vit_dir(out_dir, width: int = 32, layers: int = 2, heads: int = 2, seed: int = 0) -> Path:
    """A transformers ViTModel folder shaped like DINO ViT-S/16 (patch 16, 224 px) at `width`, random weights."""
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(seed)
    ViTModel(ViTConfig(hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=4 * width,
                       patch_size=16, image_size=224), add_pooling_layer=False).eval().save_pretrained(str(out_dir))
    return Path(out_dir)


def make_viclip_checkpoint(path, tiny: bool = True, seed: int = 0) -> Path:
    """A `{"model": state_dict}` file in ViClip-InternVid-10M-FLT.pth's layout, random weights."""
    from .viclip import ViCLIP, ViCLIPConfig

    torch.manual_seed(seed)
    cfg = ViCLIPConfig(vision_width=64, vision_layers=2, vision_heads=1, embed_dim=32, text_width=64, text_layers=2,
                       text_heads=1) if tiny else ViCLIPConfig()
    model = ViCLIP(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2 or name.endswith("class_embedding"):
                p.normal_(0.0, 0.02)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict()}, path)
    return path


def make_grounding_dino_dir(out_dir, num_queries: int = 10, seed: int = 0) -> Path:
    """A transformers Grounding DINO folder (Swin backbone, BERT text encoder, both tiny) with random
    weights and a processor with a small word-level BERT vocabulary; loads with
    `AutoModelForZeroShotObjectDetection` and `AutoProcessor` like the released model."""
    import transformers as tf

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "a", "the", "two", "three", "cat", "cats", "apple",
             "apples", "car", "cars", "dog", "dogs", "person", "people"]
    (out_dir / "vocab.txt").write_text("\n".join(words) + "\n")
    cfg = tf.GroundingDinoConfig(
        backbone_config=tf.SwinConfig(embed_dim=16, depths=[1, 1], num_heads=[1, 1], window_size=4, image_size=64,
                                      out_features=["stage1", "stage2"]),
        text_config=tf.BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=64),
        d_model=32, encoder_layers=1, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=32, decoder_ffn_dim=32, num_queries=num_queries, num_feature_levels=2, encoder_n_points=2,
        decoder_n_points=2, max_text_len=32, use_timm_backbone=False, use_pretrained_backbone=False,
    )
    torch.manual_seed(seed)
    tf.GroundingDinoForObjectDetection(cfg).eval().save_pretrained(str(out_dir))
    processor = tf.GroundingDinoProcessor(image_processor=tf.GroundingDinoImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}),
                                          tokenizer=tf.BertTokenizer(str(out_dir / "vocab.txt")))
    processor.save_pretrained(str(out_dir))
    return out_dir
