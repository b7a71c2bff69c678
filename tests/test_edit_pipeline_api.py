"""EditPipeline as diffusers users expect it: from_pretrained on local files, .to(), and a callable
taking every video form, batched prompts and per-call settings, with tiny random models in the real
on-disk formats."""

import logging
import shutil

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from liveditor.models import DiTConfig
from liveditor.pipeline import EditError, EditPipeline
from liveditor.pipeline.cli import compose_edit_config
from liveditor.pipeline.tiny import make_tiny_checkpoint, make_tiny_wan_dir
from liveditor.video import read_video, write_video

H, W, T = 32, 64, 5  # width 64: decord cannot read mp4s 48 px wide (noted in the report)
STEPS = dict(num_inference_steps=2, height=H, width=W)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A folder as a user would download it: the Wan parts and one LIVEditor checkpoint at its top."""
    root = tmp_path_factory.mktemp("liveditor-tiny")
    make_tiny_wan_dir(root)
    dit = DiTConfig.from_dict(OmegaConf.to_container(compose_edit_config(["model=tiny"]).model.dit))
    make_tiny_checkpoint(root / "liveditor_tiny.safetensors", dit)
    return root


@pytest.fixture(scope="module")
def pipe(folder):
    return EditPipeline.from_pretrained(folder, progress=False)


@pytest.fixture(scope="module")
def clip():
    g = np.random.default_rng(0)
    frames = g.integers(0, 256, size=(T, H, W, 3), dtype=np.uint8)
    return np.clip(frames.astype(int) // 2 + np.linspace(0, 120, W, dtype=int)[None, None, :, None], 0, 255).astype(np.uint8)


def test_from_pretrained_reads_a_local_folder_or_a_checkpoint_file(folder, pipe, tmp_path):
    assert pipe.cfg.model.name == "tiny"  # inferred from the checkpoint's shapes
    assert (pipe.device.type, pipe.dtype) == ("cpu", torch.float32)
    assert pipe.cfg.runtime.device == "cpu" and pipe.cfg.runtime.dtype == "float32"
    # A checkpoint file and the Wan folder given apart, the architecture named.
    other = EditPipeline.from_pretrained(folder / "liveditor_tiny.safetensors", "tiny", vae_path=folder, progress=False,
                                         overrides=["sampling.shift=5.0"])
    assert other.cfg.sampling.shift == 5.0
    with pytest.raises(EditError, match="does not exist: give a local folder or checkpoint file"):
        EditPipeline.from_pretrained(tmp_path / "nothing-here")
    with pytest.raises(EditError, match="pass vae_path="):
        EditPipeline.from_pretrained(folder / "liveditor_tiny.safetensors")
    lonely = tmp_path / "only-wan"
    shutil.copytree(folder, lonely, ignore=shutil.ignore_patterns("*.safetensors"))
    with pytest.raises(EditError, match="no DiT checkpoint"):
        EditPipeline.from_pretrained(lonely)
    with pytest.raises(EditError, match="model.weights_path"):  # the wrong architecture named: a load error naming the key
        EditPipeline.from_pretrained(folder, "wan2.1-1.3b", progress=False)


def test_every_video_form_gives_the_same_edit(pipe, clip, tmp_path):
    def edit(video):
        return pipe(video, "make the sky purple", generator=torch.Generator().manual_seed(1), **STEPS).frames

    reference = edit(clip)
    assert reference.shape == (1, T, H, W, 3) and reference.dtype == np.uint8 and reference.std() > 0
    as_float = torch.from_numpy(clip).permute(3, 0, 1, 2).float() / 127.5 - 1.0  # [3, T, H, W] in [-1, 1]
    forms = {
        "pil": [Image.fromarray(f) for f in clip],
        "tensor [3, T, H, W]": as_float,
        "tensor [T, 3, H, W]": as_float.permute(1, 0, 2, 3),
        "uint8 tensor [T, 3, H, W]": torch.from_numpy(clip).permute(0, 3, 1, 2),
    }
    for name, video in forms.items():
        np.testing.assert_array_equal(edit(video), reference, err_msg=name)
    # A file path: the decoded (lossy) frames are what the model sees.
    path = tmp_path / "clip.mp4"
    write_video(path, clip, fps=16)
    np.testing.assert_array_equal(edit(str(path)), edit(read_video(path).frames))


@pytest.mark.parametrize("video,fragment", [
    ({"frames": 1}, "video must be one of"),
    (np.zeros((T, H, W, 3), dtype=np.float32), "a numpy video must be uint8 [T, H, W, 3]"),
    (np.zeros((H, W, 3), dtype=np.uint8), "a numpy video must be uint8 [T, H, W, 3]"),
    (torch.zeros(H, W, 3), "a tensor video must be [3, T, H, W] or [T, 3, H, W]"),
    (torch.full((3, T, H, W), 200.0), "a float tensor video must lie in [-1, 1]"),
    ([1, 2, 3], "a list must hold PIL images"),
    ([], "a list must hold PIL images"),
])
def test_other_video_forms_are_an_error_naming_the_argument_and_the_forms(pipe, video, fragment):
    with pytest.raises(EditError) as err:
        pipe(video, "x", **STEPS)
    assert fragment in str(err.value)
    assert str(err.value).startswith("video")
    if "must be one of" in fragment or "numpy" in fragment:
        assert "a list of PIL images" in str(err.value) and "a path to a video file" in str(err.value)


def test_batched_prompts_output_types_and_the_step_callback(pipe, clip):
    gens = lambda: [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)]
    out = pipe(clip, ["make the sky purple", "add snow"], generator=gens(), output_type="pt", **STEPS)
    assert out.frames.shape == (2, 3, T, H, W) and out.frames.dtype == torch.float32
    assert out.frames.min() >= -1 and out.frames.max() <= 1
    single = pipe(clip, "add snow", generator=torch.Generator().manual_seed(2), output_type="pt", **STEPS).frames
    torch.testing.assert_close(out.frames[1:], single, rtol=0, atol=1e-4)  # row 2 is the second prompt's edit
    assert (out.frames[0] - out.frames[1]).abs().max() > 1e-3
    pil = pipe(clip, "add snow", guidance_scale=1.0, output_type="pil", **STEPS).frames
    assert len(pil) == 1 and len(pil[0]) == T and pil[0][0].size == (W, H)
    seen = []

    def on_step(p, i, t, tensors):
        seen.append((p is pipe, i, t, tuple(tensors["latents"].shape)))
        return {"latents": tensors["latents"]}

    pipe(clip, "add snow", callback_on_step_end=on_step, num_inference_steps=3, height=H, width=W)
    assert [s[:2] for s in seen] == [(True, 0), (True, 1), (True, 2)]
    assert seen[0][2] > seen[-1][2] and seen[0][3] == (1, 16, 2, H // 8, W // 8)
    with pytest.raises(EditError, match="negative_prompt has 3 entries"):
        pipe(clip, ["a", "b"], negative_prompt=["x", "y", "z"], **STEPS)
    with pytest.raises(EditError, match="output_type must be one of"):
        pipe(clip, "a", output_type="latent", **STEPS)
    with pytest.raises(EditError, match="height must be a positive multiple of 16"):
        pipe(clip, "a", num_inference_steps=1, height=30, width=W)


def test_size_frames_and_prompt_length_per_call(pipe, clip, caplog):
    caplog.set_level(logging.WARNING)
    long = np.concatenate([clip, clip])  # 10 frames
    out = pipe(long, "add snow " * 40, num_inference_steps=1, height=16, num_frames=7)
    assert out.frames.shape == (1, 5, 16, 32, 3) and out.source_frames == 5 and out.size == (32, 16)  # width from the aspect ratio
    assert "7 frames taken, 5 kept" in caplog.text
    assert "prompt 1 of 1" in caplog.text and "the text encoder takes 32 (model.dit.text_len)" in caplog.text


def test_to_moves_and_casts_and_the_config_follows(folder):
    pipe = EditPipeline.from_pretrained(folder, progress=False)
    pipe.to(torch.bfloat16)
    assert pipe.dtype == torch.bfloat16 and pipe.text_encoder.dtype == torch.bfloat16
    assert pipe.experts[0].model.time_embedding[0].weight.dtype == torch.float32  # Wan's float32 parts stay float32
    assert pipe.vae.dtype == torch.float32 and pipe.cfg.runtime.dtype == "bfloat16"
    pipe.to("cpu", torch.float32)
    assert pipe.dtype == torch.float32 and pipe.cfg.runtime.dtype == "float32" and pipe.cfg.runtime.device == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(EditError, match="no CUDA device"):
            pipe.to("cuda")


def test_edit_takes_the_in_memory_forms_at_their_own_size(pipe, clip):
    with pipe_settings(pipe, steps=2):
        a = pipe.edit(clip, "add snow", seed=3)
        b = pipe.edit(torch.from_numpy(clip).permute(3, 0, 1, 2).float() / 127.5 - 1.0, "add snow", seed=3)
    assert a.frames.shape == (T, H, W, 3) and a.size == (W, H)
    np.testing.assert_array_equal(a.frames, b.frames)
    with pytest.raises(EditError, match="use edit_file"):
        pipe.edit("in.mp4", "x")
    with pytest.raises(EditError, match="multiples of 16"):
        pipe.edit(clip[:, :30], "x")


class pipe_settings:
    """Temporarily set the pipeline config's sampling steps."""

    def __init__(self, pipe, steps):
        self.pipe, self.steps = pipe, steps

    def __enter__(self):
        self.old = self.pipe.cfg.sampling.steps
        self.pipe.cfg.sampling.steps = self.steps

    def __exit__(self, *exc):
        self.pipe.cfg.sampling.steps = self.old
