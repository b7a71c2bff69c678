"""A tiny random-initialised Qwen2-VL in the real on-disk format, made offline (tests of the local VLM backend).

    make_tiny_vlm_dir(tmp / "vlm")   # loads with AutoProcessor + AutoModelForImageTextToText

Qwen2VLForConditionalGeneration with a 1-layer vision tower and a 2-layer, 32-wide language model;
Qwen2VLProcessor (its image processor at small pixel limits, so a frame is a few patches) with a
byte-level BPE tokenizer of the 256 byte symbols plus Qwen2-VL's special tokens, built with the
`tokenizers` library, and a chat template in Qwen2-VL's layout. Every code path of the backend
(chat template, image placeholders, generation, decoding) is the real one; the random weights
answer noise, so the answers are malformed.
"""

from __future__ import annotations

from pathlib import Path

import torch

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
# Qwen2-VL's chat layout: <|im_start|>role\n ... <|im_end|>\n, each image as <|vision_start|><|image_pad|><|vision_end|>.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_tiny_vlm_dir(out_dir, seed: int = 0) -> Path:
    """Write a tiny Qwen2-VL model, processor and tokenizer to `out_dir`; returns it."""
    import transformers as tf
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={s: i for i, s in enumerate(symbols)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    tokenizer = tf.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                           chat_template=CHAT_TEMPLATE)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    pixels = dict(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16)  # 2x2 to 4x4 merged patches per frame
    processor = tf.Qwen2VLProcessor(image_processor=tf.Qwen2VLImageProcessor(**pixels), tokenizer=tokenizer,
                                    video_processor=tf.Qwen2VLVideoProcessor(**pixels), chat_template=CHAT_TEMPLATE)
    cfg = tf.Qwen2VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=4096, bos_token_id=ids["<|endoftext|>"],
                         eos_token_id=ids["<|im_end|>"],
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]}),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, patch_size=14, spatial_merge_size=2,
                           temporal_patch_size=2),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    tf.Qwen2VLForConditionalGeneration(cfg).eval().save_pretrained(str(out_dir))
    processor.save_pretrained(str(out_dir))
    return out_dir
