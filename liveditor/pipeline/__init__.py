"""Edit inference: Wan VAE and umT5 from a diffusers-format Wan directory, flow-matching sampling
with CFG over the editor DiT, resolution buckets, mp4 out.

    from liveditor.pipeline import EditPipeline
    pipe = EditPipeline.from_pretrained("/ckpt/liveditor-1.3b")      # local files only
    out = pipe("in.mp4", "make it snowy", num_inference_steps=32)    # out.frames[0]: uint8 [T, H, W, 3]
    pipe.save_pretrained("/ckpt/my-copy")                            # a folder from_pretrained loads back

    from liveditor.pipeline import EditPipeline, check_edit_config, compose_edit_config
    cfg = compose_edit_config(["input=in.mp4", "prompt='make it snowy'", "output=out.mp4", "model.vae_path=..."])
    check_edit_config(cfg)
    result = EditPipeline.from_config(cfg).edit_file(cfg.input, cfg.prompt)
"""

from liveditor.pipeline.cli import compose_edit_config, run_edit
from liveditor.pipeline.codec import PatchCodec, codec_stats
from liveditor.pipeline.components import ComponentError, TextEncoder, WanVAE, check_wan_dir
from liveditor.pipeline.editor import (
    OUTPUT_TYPES,
    PIPELINE_CONFIG,
    VIDEO_FORMS,
    EditError,
    EditOutput,
    EditPipeline,
    EditResult,
    check_checkpoint_size,
    check_edit_config,
    check_edit_values,
    checkpoint_sizes,
    infer_model_name,
)
from liveditor.pipeline.preprocess import DEFAULT_BUCKETS, choose_bucket, frame_count_4k1, load_source_video, resize_and_crop
from liveditor.pipeline.sampling import SAMPLERS, Expert, make_scheduler, pick_expert, sample_edit

__all__ = [
    "ComponentError",
    "DEFAULT_BUCKETS",
    "EditError",
    "EditPipeline",
    "EditOutput",
    "EditResult",
    "OUTPUT_TYPES",
    "PIPELINE_CONFIG",
    "PatchCodec",
    "VIDEO_FORMS",
    "check_checkpoint_size",
    "check_edit_values",
    "checkpoint_sizes",
    "infer_model_name",
    "Expert",
    "SAMPLERS",
    "TextEncoder",
    "WanVAE",
    "check_edit_config",
    "check_wan_dir",
    "codec_stats",
    "choose_bucket",
    "compose_edit_config",
    "frame_count_4k1",
    "load_source_video",
    "make_scheduler",
    "pick_expert",
    "resize_and_crop",
    "run_edit",
    "sample_edit",
]
