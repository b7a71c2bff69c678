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
        pipe(clip, "a", output_type="mp4", **STEPS)
    with pytest.raises(EditError, match="height must be a positive multiple of 16"):
        pipe(clip, "a", num_inference_steps=1, height=30, width=W)


def test_size_frames_and_prompt_length_per_call(pipe, clip, caplog):
    caplog.set_level(logging.WARNING)
    long = np.concatenate([clip, clip])  # 10 frames
    out = pipe(long, "add snow " * 40, num_inference_steps=1, height=16, num_frames=7)
    assert out.frames.shape == (1, 5, 16, 32, 3) and out.source_frames == 5 and out.size == (32, 16)  # width from the aspect ratio
    assert "video: 10 frames; num_frames=7 keeps the first 7, the last 3 are dropped" in caplog.text
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


def test_the_config_gives_the_calls_defaults_and_an_argument_overrides_it(folder, pipe, clip):
    configured = EditPipeline.from_pretrained(folder, progress=False, overrides=["sampling.steps=3", "sampling.guidance_scale=1.0",
                                                                                "sampling.sampler=euler"])
    edit = lambda p, **kw: p(clip, "add snow", height=H, width=W, output_type="pt", **kw).frames
    steps = []
    by_config = edit(configured, callback_on_step_end=lambda p, i, t, d: steps.append(i))
    assert len(steps) == 3  # not the argument's old default of 32
    torch.testing.assert_close(by_config, edit(configured, num_inference_steps=3, guidance_scale=1.0), rtol=0, atol=0)
    assert (by_config - edit(configured, guidance_scale=2.5)).abs().max() > 1e-3  # guidance from the config: 1.0
    assert (by_config - edit(pipe, num_inference_steps=3, guidance_scale=1.0)).abs().max() > 1e-3  # the sampler too: euler


def test_save_pretrained_writes_a_folder_from_pretrained_loads_with_its_settings(folder, clip, tmp_path):
    import stat

    source = EditPipeline.from_pretrained(folder, progress=False, overrides=["sampling.steps=2", "sampling.shift=4.0",
                                                                            "model.dit.attention=dense", "video.num_frames=5"])
    saved = source.save_pretrained(tmp_path / "saved")
    assert sorted(p.name for p in saved.iterdir()) == ["liveditor_edit.yaml", "text_encoder", "tokenizer", "transformer", "vae"]
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o644 for f in saved.rglob("*") if f.is_file())  # not safetensors' 0600
    loaded = EditPipeline.from_pretrained(saved, progress=False)
    assert loaded.cfg.model.name == "tiny" and loaded.cfg.model.dit.attention == "dense"
    assert (loaded.cfg.sampling.steps, loaded.cfg.sampling.shift, loaded.cfg.video.num_frames) == (2, 4.0, 5)
    edit = lambda p: p(clip, "add snow", height=H, width=W, output_type="pt").frames
    torch.testing.assert_close(edit(loaded), edit(source), rtol=0, atol=0)
    # The caller's overrides still win over the saved settings.
    assert EditPipeline.from_pretrained(saved, progress=False, overrides=["sampling.steps=4"]).cfg.sampling.steps == 4
    with pytest.raises(EditError, match="exists and is not an empty folder"):
        source.save_pretrained(saved)


def test_a_two_expert_pipeline_saved_in_shards_loads_back(folder, clip, tmp_path):
    ckpt = folder / "liveditor_tiny.safetensors"
    dit = DiTConfig.from_dict(OmegaConf.to_container(compose_edit_config(["model=tiny"]).model.dit))
    low = make_tiny_checkpoint(tmp_path / "low.safetensors", dit, seed=3)
    source = EditPipeline.from_pretrained(ckpt, "tiny", vae_path=folder, low_noise_weights_path=low, progress=False,
                                          overrides=["sampling.steps=2", "model.boundary=0.5"])
    saved = source.save_pretrained(tmp_path / "saved", max_shard_size="200KB")
    assert len(list((saved / "transformer").glob("*.safetensors"))) > 1 and (saved / "transformer_2").is_dir()
    loaded = EditPipeline.from_pretrained(saved, progress=False)  # transformer_2/ is the low-noise expert
    assert len(loaded.experts) == 2 and loaded.experts[0].min_timestep == 500.0
    edit = lambda p: p(clip, "add snow", height=H, width=W, output_type="pt").frames
    torch.testing.assert_close(edit(loaded), edit(source), rtol=0, atol=0)


def test_liveditor_export_writes_a_pipeline_folder(folder, tmp_path, capsys):
    from liveditor.train.export import main as export_main

    from liveditor.models import DiTConfig, EditorDiT
    from liveditor.pipeline.tiny import randomize_

    dit = DiTConfig.from_dict({**OmegaConf.to_container(compose_edit_config(["model=tiny"]).model.dit), "attention": "dense"})
    model = randomize_(EditorDiT(dit), seed=5)
    ckpt = tmp_path / "last.ckpt"  # what liveditor-train saves: the DiT under "model." and its architecture
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "hyper_parameters": {"dit": dit.to_dict()},
                "global_step": 7}, ckpt)
    out = tmp_path / "exported"
    assert export_main([str(ckpt), str(out), "--pipeline", str(folder), "--dtype", "float32"]) == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "liveditor_edit.yaml", "text_encoder", "tokenizer", "transformer", "vae"]
    pipe = EditPipeline.from_pretrained(out, progress=False)  # no model= needed, and the DiT settings come along
    assert pipe.cfg.model.name == "tiny" and pipe.cfg.model.dit.attention == "dense"
    for key, value in model.state_dict().items():
        assert torch.equal(pipe.experts[0].model.state_dict()[key], value), key
    assert export_main([str(ckpt), str(out), "--pipeline", str(folder)]) == 2
    assert "exists and is not an empty folder" in capsys.readouterr().err
    assert export_main([str(ckpt), str(tmp_path / "x"), "--pipeline", str(tmp_path / "nowhere")]) == 2
    assert "--pipeline='" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_return_dict_and_latent_output(pipe, clip):
    frames = pipe(clip, "add snow", output_type="pt", return_dict=False, **STEPS)
    assert isinstance(frames, tuple) and len(frames) == 1 and frames[0].shape == (1, 3, T, H, W)
    out = pipe(clip, "add snow", output_type="latent", **STEPS)
    assert out.frames.shape == (1, 16, 2, H // 8, W // 8) and out.frames.dtype == torch.float32
    torch.testing.assert_close(pipe.decode_latents(out.frames, T), frames[0], rtol=0, atol=0)


def test_progress_bar_config(folder, pipe, clip, capfd):
    import io

    capfd.readouterr()
    quiet = EditPipeline.from_pretrained(folder, progress=False)
    err = capfd.readouterr().err
    assert "Loading weights" not in err and "it/s" not in err, err  # transformers' bar too
    from transformers.utils.logging import is_progress_bar_enabled

    assert is_progress_bar_enabled()  # its setting is put back after loading
    shown = io.StringIO()
    quiet.set_progress_bar_config(disable=False, file=shown, desc="my edit")
    quiet(clip, "add snow", **STEPS)
    assert "my edit" in shown.getvalue() and "2/2" in shown.getvalue()
    loud = EditPipeline.from_pretrained(folder, progress=True)
    capfd.readouterr()
    loud.set_progress_bar_config(disable=True)
    loud(clip, "add snow", **STEPS)
    assert "denoising" not in capfd.readouterr().err


def test_model_cpu_offload_moves_one_model_at_a_time(folder, pipe, clip):
    offloaded = EditPipeline.from_pretrained(folder, progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(EditError, match="no CUDA device"):
            offloaded.enable_model_cpu_offload()
    offloaded.enable_model_cpu_offload(device="cpu").enable_model_cpu_offload(device="cpu")  # again: the hooks are not doubled
    assert sum(len(e.model._forward_pre_hooks) for e in offloaded.experts) == 1
    out = offloaded(clip, "add snow", output_type="pt", **STEPS).frames
    torch.testing.assert_close(out, pipe(clip, "add snow", output_type="pt", **STEPS).frames, rtol=0, atol=0)
    assert offloaded._offload.moves == ["text_encoder", "vae", "transformer", "vae"] and offloaded._offload.resident is None
    with pytest.raises(EditError, match="model CPU offload is on"):
        offloaded.to("cpu")


@pytest.mark.gpu
def test_model_cpu_offload_on_a_gpu(folder, clip):
    offloaded = EditPipeline.from_pretrained(folder, progress=False).enable_model_cpu_offload()
    out = offloaded(clip, "add snow", output_type="pt", **STEPS).frames
    assert all(p.device.type == "cpu" for e in offloaded.experts for p in e.model.parameters())  # back after the call
    assert all(p.device.type == "cpu" for p in offloaded.text_encoder.model.parameters())
    on_gpu = EditPipeline.from_pretrained(folder, progress=False, device="cuda")
    torch.testing.assert_close(out, on_gpu(clip, "add snow", output_type="pt", **STEPS).frames, rtol=0, atol=2e-2)


def test_a_file_trimmed_to_num_frames_is_said(pipe, clip, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    path = tmp_path / "long.mp4"
    write_video(path, np.concatenate([clip] * 4), fps=16)  # 20 frames, 1.25 s
    out = pipe(str(path), "add snow", num_frames=9, num_inference_steps=1, height=H, width=W)
    assert out.source_frames == 9
    assert "20 frames at 16 fps (1.25 s) from 0 s; num_frames=9 keeps the first 9 (0.56 s), the last 11 (0.69 s) are dropped" in caplog.text
