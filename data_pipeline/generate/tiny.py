"""Tiny random-initialised generation models in the real on-disk formats, made offline (tests, demo).

Each builder writes a folder with `save_pretrained`, exactly what the wrappers (`anchor`, `synth`,
`detect`) load from a config path, so every loading and calling code path is the real one; the
weights are random, so the pictures carry no meaning. Each takes a second or two on a CPU.

    make_tiny_anchor_pipeline_dir(tmp / "ip2p")                        # StableDiffusionInstructPix2PixPipeline
    make_tiny_anchor_pipeline_dir(tmp / "kontext", kind="flux_kontext")  # FluxKontextPipeline
    make_tiny_anchor_pipeline_dir(tmp / "qwen", kind="qwen_image_edit")  # QwenImageEditPipeline
    make_tiny_video_pipeline_dir(tmp / "ti2v")                         # WanImageToVideoPipeline, Wan2.2 TI2V style
    make_tiny_video_pipeline_dir(tmp / "vace", kind="wan_vace")        # WanVACEPipeline
    make_tiny_video_pipeline_dir(tmp / "i2v21", kind="wan21_i2v")      # WanImageToVideoPipeline, Wan2.1 I2V style
    make_tiny_detector_dir(tmp / "gdino"); make_tiny_detector_dir(tmp / "owl", kind="owlv2")
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from liveditor.eval.tiny import make_clip_tokenizer, make_grounding_dino_dir
from liveditor.pipeline.tiny import make_tiny_tokenizer

ANCHOR_KINDS = ("instruct_pix2pix", "flux_kontext", "qwen_image_edit")
VIDEO_KINDS = ("wan_i2v", "wan_vace", "wan21_i2v")
DETECTOR_KINDS = ("grounding_dino", "owlv2")


def _check_kind(kind: str, kinds: tuple) -> None:
    if kind not in kinds:
        raise ValueError(f"unknown tiny model kind {kind!r}: choose from {', '.join(kinds)}")


def _tiny_clip_text(seed: int, width: int = 32):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    return CLIPTextModel(CLIPTextConfig(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                                        num_attention_heads=2, vocab_size=49408, max_position_embeddings=77,
                                        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)).eval()


def _tiny_sd_vae(seed: int, latent_channels: int = 4, **extra):
    """An AutoencoderKL with Stable Diffusion's 8x spatial factor (four levels), 32 channels wide."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent_channels, block_out_channels=[32] * 4,
                         down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                         layers_per_block=1, norm_num_groups=32, sample_size=64, **extra).eval()


def make_tiny_anchor_pipeline_dir(out_dir, kind: str = "instruct_pix2pix", seed: int = 0) -> Path:
    """A diffusers image-editing pipeline folder (`kind` in `ANCHOR_KINDS`) with random weights.

    `instruct_pix2pix`: StableDiffusionInstructPix2PixPipeline (UNet with 8 input channels: noisy
    latents + the source image's latents; CLIP text encoder with CLIP's real tokenizer; Euler
    ancestral scheduler as in timbrooks/instruct-pix2pix). `flux_kontext`: FluxKontextPipeline (a
    one-double-block, one-single-block Flux transformer, CLIP + T5 text encoders, flow-matching Euler).
    `qwen_image_edit`: QwenImageEditPipeline (a one-block QwenImage transformer, a Qwen2.5-VL text
    encoder with the processor and tokenizer of `tiny_vlm`, a Qwen-Image VAE); note that the pipeline
    encodes the conditioning image at about 1 MP whatever the output size, so a call takes seconds.
    """
    _check_kind(kind, ANCHOR_KINDS)
    if kind == "qwen_image_edit":
        return _make_tiny_qwen_image_edit(Path(out_dir), seed)
    import diffusers as d

    from transformers import CLIPTokenizer

    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = CLIPTokenizer.from_pretrained(str(make_clip_tokenizer(Path(scratch) / "clip")))
        t5_tokenizer = make_tiny_tokenizer(Path(scratch) / "t5") if kind == "flux_kontext" else None
    if kind == "instruct_pix2pix":
        torch.manual_seed(seed)
        unet = d.UNet2DConditionModel(
            sample_size=8, in_channels=8, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32,
        ).eval()
        pipe = d.StableDiffusionInstructPix2PixPipeline(
            vae=_tiny_sd_vae(seed + 1), text_encoder=_tiny_clip_text(seed + 2), tokenizer=tokenizer, unet=unet,
            scheduler=d.EulerAncestralDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
    else:
        from transformers import T5Config, T5EncoderModel

        torch.manual_seed(seed)
        transformer = d.FluxTransformer2DModel(
            patch_size=1, in_channels=16, out_channels=None, num_layers=1, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
            axes_dims_rope=(4, 4, 8),
        ).eval()
        torch.manual_seed(seed + 3)
        t5 = T5EncoderModel(T5Config(vocab_size=len(t5_tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                     relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
                                     decoder_start_token_id=0)).eval()
        pipe = d.FluxKontextPipeline(
            scheduler=d.FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                        base_image_seq_len=256, max_image_seq_len=4096),
            vae=_tiny_sd_vae(seed + 1, shift_factor=0.1159, scaling_factor=0.3611, use_quant_conv=False,
                             use_post_quant_conv=False),
            text_encoder=_tiny_clip_text(seed + 2), tokenizer=tokenizer, text_encoder_2=t5, tokenizer_2=t5_tokenizer,
            transformer=transformer,
        )
    pipe.save_pretrained(str(out_dir))
    return out_dir


def _make_tiny_qwen_image_edit(out_dir: Path, seed: int) -> Path:
    import diffusers as d
    import transformers as tf

    from .tiny_vlm import make_tiny_vlm_dir

    with tempfile.TemporaryDirectory() as scratch:  # the tiny Qwen2-VL's processor and tokenizer
        processor = tf.AutoProcessor.from_pretrained(str(make_tiny_vlm_dir(Path(scratch) / "vlm", seed)))
    tokenizer = processor.tokenizer
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_end|>", "<|image_pad|>", "<|video_pad|>",
                                                           "<|vision_start|>", "<|vision_end|>")}
    cfg = tf.Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]}),
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, out_hidden_size=32, num_heads=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, window_size=56, fullatt_block_indexes=[0]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(seed)
    text_encoder = tf.Qwen2_5_VLForConditionalGeneration(cfg).eval()
    torch.manual_seed(seed + 1)
    vae = d.AutoencoderKLQwenImage(base_dim=4, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                   latents_mean=[0.0] * 4, latents_std=[1.0] * 4).eval()
    torch.manual_seed(seed + 2)
    # in_channels: 4 latent channels packed 2x2; joint_attention_dim: the text encoder's width
    transformer = d.QwenImageTransformer2DModel(patch_size=2, in_channels=16, out_channels=4, num_layers=1,
                                                attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                                axes_dims_rope=(4, 6, 6)).eval()
    pipe = d.QwenImageEditPipeline(
        scheduler=d.FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9,
                                                    base_image_seq_len=256, max_image_seq_len=8192),
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, processor=processor, transformer=transformer)
    pipe.save_pretrained(str(out_dir))
    return out_dir


def _tiny_wan_text(seed: int, text_dim: int):
    from transformers import UMT5Config, UMT5EncoderModel

    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = make_tiny_tokenizer(Path(scratch))
    torch.manual_seed(seed)
    text_encoder = UMT5EncoderModel(UMT5Config(
        vocab_size=len(tokenizer), d_model=text_dim, d_kv=8, d_ff=2 * text_dim, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=32, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0)).eval()
    return tokenizer, text_encoder


def make_tiny_video_pipeline_dir(out_dir, kind: str = "wan_i2v", seed: int = 0) -> Path:
    """A diffusers Wan video pipeline folder (`kind` in `VIDEO_KINDS`) with random weights.

    `wan_i2v`: WanImageToVideoPipeline laid out like Wan2.2 TI2V-5B: `expand_timesteps=True`, no image
    encoder, a Wan2.2-style VAE (residual, patch size 2: 16x spatial, 4x temporal, 48 latent channels
    in the real model, 8 here), UniPC flow scheduler; sizes must be multiples of 32.
    `wan_vace`: WanVACEPipeline with a Wan2.1 VAE (8x spatial, 16 latent channels) and a VACE
    transformer with one control layer; sizes must be multiples of 16.
    `wan21_i2v`: WanImageToVideoPipeline laid out like Wan2.1 I2V-14B: a CLIP vision encoder whose
    penultimate hidden states enter the transformer's image cross-attention, the first-frame mask and
    condition latents concatenated to the noise (16 + 4 + 16 input channels), Wan2.1 VAE.
    Both use a tiny umT5 and a byte-level BPE tokenizer (`liveditor.pipeline.tiny`).
    """
    _check_kind(kind, VIDEO_KINDS)
    import diffusers as d

    out_dir = Path(out_dir)
    text_dim = 32
    tokenizer, text_encoder = _tiny_wan_text(seed + 1, text_dim)
    scheduler = d.UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0,
                                          num_train_timesteps=1000)
    torch.manual_seed(seed + 2)
    if kind == "wan_i2v":
        z_dim = 8
        vae = d.AutoencoderKLWan(base_dim=8, decoder_base_dim=8, z_dim=z_dim, dim_mult=[1, 2, 4, 4], num_res_blocks=1,
                                 temperal_downsample=[False, True, True], is_residual=True, in_channels=12, out_channels=12,
                                 patch_size=2, scale_factor_spatial=16, scale_factor_temporal=4,
                                 latents_mean=[0.0] * z_dim, latents_std=[1.0] * z_dim).eval()
        torch.manual_seed(seed)
        transformer = d.WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=z_dim, out_channels=z_dim,
            text_dim=text_dim, freq_dim=32, ffn_dim=32, num_layers=2, rope_max_seq_len=32).eval()
        pipe = d.WanImageToVideoPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler,
                                         transformer=transformer, expand_timesteps=True)
    elif kind == "wan21_i2v":
        import transformers as tf

        z_dim = 16
        vae = d.AutoencoderKLWan(base_dim=8, z_dim=z_dim, dim_mult=[1, 2, 4, 4], num_res_blocks=1,
                                 temperal_downsample=[False, True, True],
                                 latents_mean=[0.0] * z_dim, latents_std=[1.0] * z_dim).eval()
        image_encoder = tf.CLIPVisionModel(tf.CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                                               num_attention_heads=2, patch_size=8, image_size=32)).eval()
        torch.manual_seed(seed)
        transformer = d.WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=2 * z_dim + 4,
            out_channels=z_dim, text_dim=text_dim, freq_dim=32, ffn_dim=32, num_layers=2, rope_max_seq_len=32,
            image_dim=16, added_kv_proj_dim=24).eval()
        image_processor = tf.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
        pipe = d.WanImageToVideoPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler,
                                         image_processor=image_processor, image_encoder=image_encoder,
                                         transformer=transformer)
    else:
        z_dim = 16
        vae = d.AutoencoderKLWan(base_dim=8, z_dim=z_dim, dim_mult=[1, 2, 4, 4], num_res_blocks=1,
                                 temperal_downsample=[False, True, True],
                                 latents_mean=[0.0] * z_dim, latents_std=[1.0] * z_dim).eval()
        torch.manual_seed(seed)
        # VACE's control input: inactive + reactive latents (2 x z_dim) and the 8x8 pixel mask folded to 64 channels
        transformer = d.WanVACETransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=z_dim, out_channels=z_dim,
            text_dim=text_dim, freq_dim=32, ffn_dim=32, num_layers=2, rope_max_seq_len=32, vace_layers=[0],
            vace_in_channels=2 * z_dim + 64).eval()
        pipe = d.WanVACEPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler,
                                 transformer=transformer)
    pipe.save_pretrained(str(out_dir))
    return out_dir


def make_tiny_detector_dir(out_dir, kind: str = "grounding_dino", seed: int = 0) -> Path:
    """A transformers zero-shot object detector folder (`kind` in `DETECTOR_KINDS`) with random weights
    and its processor. `grounding_dino`: `liveditor.eval.tiny.make_grounding_dino_dir` (eval's quantity
    metric uses the same model); `owlv2`: Owlv2ForObjectDetection (ViT patch 16 at 64 px, CLIP's
    tokenizer). Both load with `AutoModelForZeroShotObjectDetection` and `AutoProcessor`."""
    _check_kind(kind, DETECTOR_KINDS)
    if kind == "grounding_dino":
        return make_grounding_dino_dir(out_dir, num_queries=10, seed=seed)
    import transformers as tf

    out_dir = Path(out_dir)
    make_clip_tokenizer(out_dir)
    torch.manual_seed(seed)
    cfg = tf.Owlv2Config(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=49408,
                         max_position_embeddings=16, bos_token_id=49406, eos_token_id=49407, pad_token_id=0),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, patch_size=16,
                           image_size=64),
        projection_dim=32,
    )
    tf.Owlv2ForObjectDetection(cfg).eval().save_pretrained(str(out_dir))
    tokenizer = tf.CLIPTokenizer.from_pretrained(str(out_dir), model_max_length=16)
    processor = tf.Owlv2Processor(image_processor=tf.Owlv2ImageProcessor(size={"height": 64, "width": 64}), tokenizer=tokenizer)
    processor.save_pretrained(str(out_dir))
    return out_dir


def main(argv=None) -> None:
    """`python -m liveditor.data_pipeline.generate.tiny --out DIR`: tiny random anchor, video and detector
    folders in DIR/anchor, DIR/video, DIR/detect, for a CPU dry run of `pairs=generate` (docs/curation.md,
    "A CPU dry run")."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m liveditor.data_pipeline.generate.tiny", description=main.__doc__)
    parser.add_argument("--out", required=True, help="folder to write anchor/, video/ and detect/ into")
    parser.add_argument("--anchor-kind", default=ANCHOR_KINDS[0], choices=ANCHOR_KINDS)
    parser.add_argument("--video-kind", default=VIDEO_KINDS[0], choices=VIDEO_KINDS)
    parser.add_argument("--detector-kind", default=DETECTOR_KINDS[0], choices=DETECTOR_KINDS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = Path(args.out)
    for name, make, kind in (("anchor", make_tiny_anchor_pipeline_dir, args.anchor_kind),
                             ("video", make_tiny_video_pipeline_dir, args.video_kind),
                             ("detect", make_tiny_detector_dir, args.detector_kind)):
        print(f"{name}: {make(out / name, kind=kind, seed=args.seed)}")


if __name__ == "__main__":
    main()
