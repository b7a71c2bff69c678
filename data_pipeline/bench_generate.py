"""Benchmark the generate source's models: pairs per hour per GPU, and seconds per stage per pair.

    python -m liveditor.data_pipeline.bench_generate --anchor flux_kontext --video wan_i2v --batch 2 \\
        --frames 81 --height 480 --width 832 --steps 50 --json outputs/generate_bench.json     # H100/H200
    python -m liveditor.data_pipeline.bench_generate --anchor instruct_pix2pix --video wan_vace_1.3b --structure edges
    python -m liveditor.data_pipeline.bench_generate --tiny                                    # CPU smoke check

Real-size pipelines, random-initialised from configs written below (nothing is downloaded), called
through the same wrappers the pairs stage uses (`AnchorEditor.edit`, `TargetSynthesizer.generate`,
`ObjectDetector.presence`), in bf16 on the GPU:
- anchors: `instruct_pix2pix` (Stable Diffusion 1.5 UNet with 8 input channels, SD VAE, CLIP ViT-L/14
  text encoder: timbrooks/instruct-pix2pix), `flux_kontext` (FLUX.1 transformer, 19 double + 38 single
  blocks, 24 heads x 128, guidance-distilled; FLUX VAE with 16 latent channels; CLIP-L and T5-v1.1-XXL
  encoders: black-forest-labs/FLUX.1-Kontext-dev);
- videos: `wan_i2v` (Wan2.2 TI2V-5B: 30 layers, dim 3072 = 24 heads x 128, ffn 14336, 48 latent
  channels; Wan2.2 VAE, 16x16 spatial, 4x temporal; umT5-XXL; UniPC, shift 5; Wan-Video/Wan2.2
  `wan/configs/wan_ti2v_5B.py` and Wan-AI/Wan2.2-TI2V-5B-Diffusers `vae/config.json`),
  `wan_vace_1.3b` / `wan_vace_14b` (Wan2.1 VACE: 30 layers x 1536 with control blocks at every second
  layer / 40 layers x 5120 with control blocks every fifth; Wan2.1 VAE; umT5-XXL; diffusers'
  `scripts/convert_wan_to_diffusers.py`);
- detectors: `grounding_dino` (transformers' `GroundingDinoConfig()` defaults, the Swin-T/BERT-base
  IDEA-Research/grounding-dino-tiny; 900 queries, shortest side 800), `owlv2` (`Owlv2Config()`
  defaults with 960 px images: google/owlv2-base-patch16).
Tokenizers are small stand-ins (the encoders still run their full 77 / 512 positions, padded).

Timed, after one untimed warm-up batch at `--warmup-steps` (CUDA kernels, cuDNN plans, allocator):
each stage over `--repeats` batches of `--batch` pairs, `torch.cuda.synchronize()` around each:
anchor edit (`--anchor-steps`), target video (`--steps`, CFG `--guidance`: two transformer passes a
step above 1), and detection on `--detect-frames` frames of each target. Seconds per pair are stage
seconds / pairs; pairs per hour per GPU = 3600 / the sum over stages. Random weights make the
pictures noise, but every shape, step and kernel is the real one. The VLM instruction and QA calls
are not here: they run on their own server (an OpenAI-compatible endpoint) or are timed separately.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from liveditor.dtypes import dtype_name
from liveditor.pipeline.bench import UMT5_XXL  # google/umt5-xxl encoder sizes

from .generate import tiny
from .generate.anchor import AnchorConfig, AnchorEditor
from .generate.detect import DetectConfig, ObjectDetector
from .generate.loading import cast_keeping_fp32
from .generate.synth import SynthConfig, TargetSynthesizer, _load_class

ANCHORS = ("instruct_pix2pix", "flux_kontext")
VIDEOS = ("wan_i2v", "wan_vace_1.3b", "wan_vace_14b")
DETECTORS = ("grounding_dino", "owlv2")

# google/t5-v1_1-xxl encoder sizes (FLUX's second text encoder)
T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
              relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
              pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
# openai/clip-vit-large-patch14 text tower (SD 1.5's and FLUX's CLIP text encoder)
CLIP_L_TEXT = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, vocab_size=49408,
                   max_position_embeddings=77, projection_dim=768, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
# Wan2.2-TI2V-5B-Diffusers vae/config.json (latents_mean/std set to 0/1: they only shift random latents)
WAN22_VAE = dict(base_dim=160, decoder_base_dim=256, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                 temperal_downsample=[False, True, True], is_residual=True, in_channels=12, out_channels=12, patch_size=2,
                 scale_factor_spatial=16, scale_factor_temporal=4, latents_mean=[0.0] * 48, latents_std=[1.0] * 48)
# Wan transformers (diffusers layout); qk_norm rms_norm_across_heads, cross_attn_norm, text_dim 4096 are the defaults
WAN_TRANSFORMERS = {
    "wan_i2v": dict(num_attention_heads=24, attention_head_dim=128, in_channels=48, out_channels=48, ffn_dim=14336,
                    num_layers=30),
    "wan_vace_1.3b": dict(num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16, ffn_dim=8960,
                          num_layers=30, vace_layers=list(range(0, 30, 2)), vace_in_channels=96),
    "wan_vace_14b": dict(num_attention_heads=40, attention_head_dim=128, in_channels=16, out_channels=16, ffn_dim=13824,
                         num_layers=40, vace_layers=list(range(0, 40, 5)), vace_in_channels=96),
}
FLOW_SHIFT = {"wan_i2v": 5.0, "wan_vace_1.3b": 3.0, "wan_vace_14b": 5.0}  # Wan's sample_shift per model and size
INSTRUCTIONS = ["replace the car with a red bicycle", "add a small dog on the left", "make it look like a watercolor",
                "remove the person in the background"]


@contextlib.contextmanager
def _building(device: str, dtype: torch.dtype):
    """Modules created inside are allocated on `device` in `dtype` (random init on the GPU: seconds)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def _clip_tokenizer(scratch: Path, max_length: int = 77):
    """CLIP's real BPE tokenizer; OWLv2's text tower takes 16 tokens, CLIP's 77."""
    from transformers import CLIPTokenizer

    from liveditor.eval.tiny import make_clip_tokenizer

    return CLIPTokenizer.from_pretrained(str(make_clip_tokenizer(scratch / f"clip{max_length}")), model_max_length=max_length)


def _stand_in_tokenizer(scratch: Path):
    from liveditor.pipeline.tiny import make_tiny_tokenizer

    return make_tiny_tokenizer(scratch / "t5")


def build_anchor_pipeline(kind: str, device: str, dtype: torch.dtype, scratch: Path):
    import diffusers as d
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    with _building(device, dtype):
        clip = CLIPTextModel(CLIPTextConfig(**CLIP_L_TEXT)).eval()
        if kind == "instruct_pix2pix":  # timbrooks/instruct-pix2pix: SD 1.5 with 8 input channels
            unet = d.UNet2DConditionModel(in_channels=8, out_channels=4, sample_size=64, cross_attention_dim=768,
                                          attention_head_dim=8, block_out_channels=(320, 640, 1280, 1280),
                                          layers_per_block=2).eval()
            vae = d.AutoencoderKL(block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
                                  up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=2, latent_channels=4,
                                  sample_size=512).eval()
        else:  # black-forest-labs/FLUX.1-Kontext-dev: FluxTransformer2DModel's defaults are FLUX.1's sizes
            transformer = d.FluxTransformer2DModel(guidance_embeds=True).eval()
            vae = d.AutoencoderKL(block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
                                  up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=2, latent_channels=16,
                                  sample_size=1024, shift_factor=0.1159, scaling_factor=0.3611, use_quant_conv=False,
                                  use_post_quant_conv=False).eval()
            t5 = T5EncoderModel(T5Config(**T5_XXL)).eval()
    # schedulers hold CPU tensors and numpy arrays: made outside the device context
    if kind == "instruct_pix2pix":
        return d.StableDiffusionInstructPix2PixPipeline(
            vae=vae, text_encoder=clip, tokenizer=_clip_tokenizer(scratch), unet=unet,
            scheduler=d.EulerAncestralDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    return d.FluxKontextPipeline(
        scheduler=d.FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                    base_image_seq_len=256, max_image_seq_len=4096),
        vae=vae, text_encoder=clip, tokenizer=_clip_tokenizer(scratch), text_encoder_2=t5,
        tokenizer_2=_stand_in_tokenizer(scratch), transformer=transformer)


def build_video_pipeline(kind: str, device: str, dtype: torch.dtype, scratch: Path):
    import diffusers as d
    from transformers import UMT5Config, UMT5EncoderModel

    with _building(device, dtype):
        text_encoder = UMT5EncoderModel(UMT5Config(**UMT5_XXL)).eval()
        if kind == "wan_i2v":
            vae = d.AutoencoderKLWan(**WAN22_VAE).eval()
            transformer = d.WanTransformer3DModel(**WAN_TRANSFORMERS[kind]).eval()
        else:
            vae = d.AutoencoderKLWan(latents_mean=[0.0] * 16, latents_std=[1.0] * 16).eval()  # Wan2.1 VAE: the defaults
            transformer = d.WanVACETransformer3DModel(**WAN_TRANSFORMERS[kind]).eval()
    cast_keeping_fp32(transformer, dtype)  # the norms and time embedding stay float32, as when loaded
    scheduler = d.UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                          flow_shift=FLOW_SHIFT[kind], num_train_timesteps=1000)
    parts = dict(tokenizer=_stand_in_tokenizer(scratch), text_encoder=text_encoder, vae=vae, scheduler=scheduler,
                 transformer=transformer)
    if kind == "wan_i2v":
        return _load_class("WanImageToVideoPipeline")(**parts, expand_timesteps=True)
    return d.WanVACEPipeline(**parts)


def build_detector(kind: str, device: str, dtype: torch.dtype, scratch: Path):
    import transformers as tf

    with _building(device, dtype):
        if kind == "grounding_dino":
            model = tf.GroundingDinoForObjectDetection(tf.GroundingDinoConfig()).eval()
        else:
            # google/owlv2-base-patch16: the ViT-B/16 defaults, at OWLv2's 960 px (Owlv2Config's default is 768)
            model = tf.Owlv2ForObjectDetection(tf.Owlv2Config(vision_config=dict(image_size=960))).eval()
    if kind == "grounding_dino":
        words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "a", "the", "red", "small", "bicycle", "dog", "car",
                 "person", "cat", "on", "left"]
        (scratch / "vocab.txt").write_text("\n".join(words) + "\n")
        processor = tf.GroundingDinoProcessor(image_processor=tf.GroundingDinoImageProcessor(),
                                              tokenizer=tf.BertTokenizer(str(scratch / "vocab.txt")))
    else:
        processor = tf.Owlv2Processor(image_processor=tf.Owlv2ImageProcessor(), tokenizer=_clip_tokenizer(scratch, 16))
    # Grounding DINO builds its BERT text backbone's parameters on the CPU whatever the default device
    # (transformers 5.17, seen on an H100): move the whole model, as from_pretrained(...).to(device) would.
    return model.to(device), processor


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(device: str, fn):
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - start


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _models(args, device: str, dtype: torch.dtype, scratch: Path):
    """(AnchorEditor, TargetSynthesizer, ObjectDetector): tiny ones saved and loaded through the
    wrappers' `from_config` with `--tiny`, else real-size ones built in memory."""
    anchor_cfg = AnchorConfig(path=str(scratch / "anchor"), steps=args.anchor_steps, guidance_scale=args.anchor_guidance)
    video_cfg = SynthConfig(path=str(scratch / "video"), steps=args.steps, guidance_scale=args.guidance,
                            structure=args.structure)
    detect_cfg = DetectConfig(path=str(scratch / "detect"), batch_size=args.detect_batch)
    if args.tiny:
        tiny.make_tiny_anchor_pipeline_dir(anchor_cfg.path, args.anchor)
        tiny.make_tiny_video_pipeline_dir(video_cfg.path, "wan_i2v" if args.video == "wan_i2v" else "wan_vace")
        tiny.make_tiny_detector_dir(detect_cfg.path, args.detect)
        return (AnchorEditor.from_config(anchor_cfg, device, dtype), TargetSynthesizer.from_config(video_cfg, device, dtype),
                ObjectDetector.from_config(detect_cfg, device, dtype))
    anchor_pipe = build_anchor_pipeline(args.anchor, device, dtype, scratch)
    anchor_pipe.set_progress_bar_config(disable=True)
    video_pipe = build_video_pipeline(args.video, device, dtype, scratch)
    video_pipe.set_progress_bar_config(disable=True)
    model, processor = build_detector(args.detect, device, dtype, scratch)
    video_class = "WanImageToVideoPipeline" if args.video == "wan_i2v" else "WanVACEPipeline"
    return (AnchorEditor(anchor_pipe, anchor_cfg, type(anchor_pipe).__name__, dtype),
            TargetSynthesizer(video_pipe, video_cfg, video_class, dtype),
            ObjectDetector(model, processor, detect_cfg, model.config.model_type, dtype))


def _inputs(n: int, frames: int, height: int, width: int, seed: int):
    rng = np.random.default_rng(seed)
    anchors = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(n)]
    sources = [rng.integers(0, 256, (frames, height, width, 3), dtype=np.uint8) for _ in range(n)]
    return anchors, sources, [INSTRUCTIONS[i % len(INSTRUCTIONS)] for i in range(n)]


def run_batch(anchor: AnchorEditor, synth: TargetSynthesizer, detector: ObjectDetector, args, device: str, seed: int) -> dict:
    """One batch through the three stages; seconds per stage."""
    frames_in, sources, instructions = _inputs(args.batch, args.frames, args.height, args.width, seed)
    seeds = [seed * 1000 + i for i in range(args.batch)]
    edited, t_anchor = _timed(device, lambda: anchor.edit(frames_in, instructions, seeds))
    videos, t_video = _timed(device, lambda: synth.generate(edited, instructions, sources, seeds, args.frames))
    index = np.linspace(0, args.frames - 1, min(args.detect_frames, args.frames)).round().astype(int)
    _, t_detect = _timed(device, lambda: [detector.presence([v[i] for i in index], "a small dog") for v in videos])
    return {"anchor": t_anchor, "video": t_video, "detect": t_detect}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--anchor", choices=ANCHORS, default="flux_kontext")
    ap.add_argument("--video", choices=VIDEOS, default="wan_i2v")
    ap.add_argument("--detect", choices=DETECTORS, default="grounding_dino")
    ap.add_argument("--batch", type=int, default=1, help="pairs per pipeline call")
    ap.add_argument("--frames", type=int, default=None, help="target frames, 4k+1 (default 81; 5 with --tiny)")
    ap.add_argument("--height", type=int, default=None, help="default 480 (32 with --tiny)")
    ap.add_argument("--width", type=int, default=None, help="default 832 (64 with --tiny)")
    ap.add_argument("--steps", type=int, default=None, help="video denoising steps (default 50, Wan2.2 TI2V's; 2 with --tiny)")
    ap.add_argument("--guidance", type=float, default=5.0, help="video CFG scale (Wan's 5.0; <= 1 turns CFG off)")
    ap.add_argument("--anchor-steps", type=int, default=None, help="anchor denoising steps (default 28; 2 with --tiny)")
    ap.add_argument("--anchor-guidance", type=float, default=2.5)
    ap.add_argument("--structure", default="none", help="VACE structure control: none | edges | gray")
    ap.add_argument("--detect-frames", type=int, default=8, help="target frames the detector checks per pair")
    ap.add_argument("--detect-batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=1, help="timed batches (after one warm-up batch)")
    ap.add_argument("--warmup-steps", type=int, default=2)
    ap.add_argument("--tiny", action="store_true", help="tiny models on the CPU (a smoke check; numbers mean nothing)")
    ap.add_argument("--device", default=None, help="default cuda when present, else cpu")
    ap.add_argument("--json", default=None, help="also write the result here")
    args = ap.parse_args(argv)
    small = args.tiny
    args.frames = args.frames or (5 if small else 81)
    args.height, args.width = args.height or (32 if small else 480), args.width or (64 if small else 832)
    args.steps, args.anchor_steps = args.steps or (2 if small else 50), args.anchor_steps or (2 if small else 28)
    device = args.device or ("cuda" if torch.cuda.is_available() and not small else "cpu")
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as scratch, torch.inference_mode():
        t0 = time.perf_counter()
        anchor, synth, detector = _models(args, device, dtype, Path(scratch))
        build_s = time.perf_counter() - t0
        warm = argparse.Namespace(**{**vars(args), "batch": 1})
        steps = (anchor.cfg, synth.cfg)
        anchor.cfg = dataclasses.replace(anchor.cfg, steps=args.warmup_steps)
        synth.cfg = dataclasses.replace(synth.cfg, steps=args.warmup_steps)
        run_batch(anchor, synth, detector, warm, device, seed=0)  # not timed
        anchor.cfg, synth.cfg = steps
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        totals = {"anchor": 0.0, "video": 0.0, "detect": 0.0}
        for r in range(args.repeats):
            for stage, seconds in run_batch(anchor, synth, detector, args, device, seed=r + 1).items():
                totals[stage] += seconds
    pairs = args.batch * args.repeats
    per_pair = {stage: seconds / pairs for stage, seconds in totals.items()}
    latent_frames = (args.frames - 1) // synth.temporal_factor + 1
    video_tokens = latent_frames * (args.height // synth.size_multiple) * (args.width // synth.size_multiple)
    result = {
        "benchmark": "generate", "tiny": small, "device": torch.cuda.get_device_name(device) if device.startswith("cuda")
        else platform.processor() or platform.machine(), "dtype": dtype_name(dtype),
        "anchor": args.anchor, "video": args.video, "detect": args.detect, "structure": args.structure,
        "batch": args.batch, "repeats": args.repeats, "frames": args.frames, "height": args.height, "width": args.width,
        "video_steps": args.steps, "video_guidance": args.guidance, "anchor_steps": args.anchor_steps,
        "detect_frames": min(args.detect_frames, args.frames), "video_tokens": video_tokens,
        "seconds_per_pair": {k: round(v, 6) for k, v in per_pair.items()},
        "seconds_per_pair_total": round(sum(per_pair.values()), 6),
        "pairs_per_hour_per_gpu": round(3600.0 / sum(per_pair.values()), 2),
        "peak_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.startswith("cuda") else None,
        "build_s": round(build_s, 1), "commit": _commit(), "torch": torch.__version__,
    }
    print(json.dumps(result))
    print(f"{'stage':<8} {'s/pair':>10}\n" + "\n".join(f"{k:<8} {v:>10.3f}" for k, v in per_pair.items())
          + f"\n{'total':<8} {sum(per_pair.values()):>10.3f}   -> {result['pairs_per_hour_per_gpu']:.1f} pairs/hour/GPU "
          f"({args.anchor} + {args.video} + {args.detect}, batch {args.batch}, {args.frames}x{args.height}x{args.width}, "
          f"{args.steps} video steps, {result['device']}{'; tiny models: a smoke check, not a speed' if small else ''})")
    if args.json:
        from liveditor.files import atomic_write_json

        atomic_write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
