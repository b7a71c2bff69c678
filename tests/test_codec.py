"""PatchCodec: exact round trip at odd sizes, documented channel order, on-disk config loaded by
WanVAE.load, statistics measured by codec_stats; the tiny random Wan VAE declares measured statistics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from liveditor.pipeline.codec import PatchCodec, codec_stats


@pytest.mark.parametrize("patch, size", [(2, (6, 10)), (3, (9, 15)), (1, (5, 7))])
def test_round_trip_is_exact_at_odd_sizes(patch, size):
    g = torch.Generator().manual_seed(patch)
    z = 3 * patch * patch
    codec = PatchCodec(patch, (torch.rand(z, generator=g) - 0.5).tolist(), (torch.rand(z, generator=g) + 0.05).tolist())
    video = torch.rand(2, 3, 3, *size, generator=g) * 2 - 1  # T=3: the codec has temporal stride 1
    latents = codec.encode(video)
    assert latents.shape == (2, z, 3, size[0] // patch, size[1] // patch) and latents.dtype == torch.float32
    assert codec.latent_shape(3, *size) == tuple(latents.shape[1:])
    assert (codec.decode(latents) - video).abs().max() < 1e-6
    assert torch.equal(codec.unpatchify(codec.patchify(video)), video)  # the reshape alone is bit-exact


def test_channel_order_is_c_p2_plus_dy_p_plus_dx():
    p, H, W = 2, 6, 10
    codec = PatchCodec(p)
    c, t, y, x = torch.meshgrid(torch.arange(3), torch.arange(2), torch.arange(H), torch.arange(W), indexing="ij")
    video = (c * 1000 + t * 100 + y * 10 + x).float().unsqueeze(0)  # every pixel names itself
    latents = codec.encode(video)
    for ch in range(3):
        for dy in range(p):
            for dx in range(p):
                assert torch.equal(latents[0, ch * p * p + dy * p + dx], video[0, ch, :, dy::p, dx::p])
    frames = video[0].transpose(0, 1)  # [T, 3, H, W]: pixel_unshuffle has the same order
    assert torch.equal(latents[0].transpose(0, 1), torch.nn.functional.pixel_unshuffle(frames, p))


def test_decode_clamps_to_the_video_range():
    codec = PatchCodec(2)
    assert codec.decode(torch.full((1, 12, 1, 2, 2), 5.0)).max() == 1.0


def test_bad_shapes_and_statistics_name_the_problem():
    with pytest.raises(ValueError, match="multiples of 2"):
        PatchCodec(2).encode(torch.zeros(1, 3, 1, 5, 4))
    with pytest.raises(ValueError, match="12 finite numbers"):
        PatchCodec(2, latents_std=[1.0] * 3)
    with pytest.raises(ValueError, match="> 0"):
        PatchCodec(2, latents_std=[0.0] * 12)


def test_codec_stats_measure_the_raw_latents():
    rng = np.random.default_rng(0)
    clips = [rng.integers(0, 256, (3, 4, 6, 3), dtype=np.uint8), rng.integers(0, 256, (2, 4, 6, 3), dtype=np.uint8)]
    mean, std = codec_stats(clips, patch=2)
    values = np.concatenate([c.astype(np.float64) / 127.5 - 1 for c in clips])  # [T, H, W, 3]
    # channel c*4 + dy*2 + dx holds colour c at (dy, dx) of each 2x2 patch
    for ch in range(12):
        c, dy, dx = ch // 4, (ch // 2) % 2, ch % 2
        v = values[:, dy::2, dx::2, c]
        assert mean[ch] == pytest.approx(v.mean(), abs=1e-12) and std[ch] == pytest.approx(v.std(), abs=1e-12)
    normalised = PatchCodec(2, mean, std).encode(torch.from_numpy(np.concatenate(clips)).permute(3, 0, 1, 2).float().div(127.5).sub(1).unsqueeze(0))
    assert normalised.mean((0, 2, 3, 4)).abs().max() < 1e-5 and (normalised.std((0, 2, 3, 4), unbiased=False) - 1).abs().max() < 1e-5


def test_wan_vae_loads_a_codec_dir(tmp_path):
    from liveditor.pipeline.components import TextEncoder, WanVAE
    from liveditor.pipeline.tiny import make_codec_wan_dir

    mean, std = [0.1 * i for i in range(12)], [0.5 + 0.01 * i for i in range(12)]
    root = make_codec_wan_dir(tmp_path / "codec", patch=2, latents_mean=mean, latents_std=std)
    cfg = json.loads((root / "vae" / "config.json").read_text())
    assert cfg == {"_class_name": "PatchCodec", "patch": 2, "z_dim": 12, "latents_mean": mean, "latents_std": std}
    assert sorted(p.name for p in (root / "vae").iterdir()) == ["config.json"]  # no weight file
    vae = WanVAE.load(root, device="cpu", dtype=torch.bfloat16)
    assert (vae.z_dim, vae.temporal_stride, vae.spatial_stride) == (12, 1, 2)
    assert vae.latent_shape(9, 64, 96) == (12, 9, 32, 48)
    video = torch.rand(1, 3, 5, 8, 12) * 2 - 1
    latents = vae.encode(video, progress=True)
    assert latents.shape == (1, 12, 5, 4, 6) and latents.dtype == torch.float32
    assert vae.to("cpu", torch.float32) is vae and vae.dtype == torch.float32 and vae.device == torch.device("cpu")
    assert (vae.decode(latents, progress=True) - video).abs().max() < 1e-6  # float32 whatever the dtype
    assert TextEncoder.load(root, text_len=16).encode(["make it red"]).shape == (1, 16, 32)


def test_default_codec_dir_is_calibrated(tmp_path):
    from liveditor.pipeline.tiny import calibration_video, make_codec_wan_dir

    cfg = json.loads((make_codec_wan_dir(tmp_path / "c", patch=1) / "vae" / "config.json").read_text())
    mean, std = codec_stats([calibration_video(0)], patch=1)
    assert cfg["latents_mean"] == pytest.approx(mean, abs=1e-6) and cfg["latents_std"] == pytest.approx(std, abs=1e-6)


def test_a_bad_codec_config_names_the_key_and_file(tmp_path):
    from liveditor.pipeline.components import ComponentError, WanVAE

    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text(json.dumps({"_class_name": "PatchCodec", "patch": 2, "z_dim": 16}))
    with pytest.raises(ComponentError, match=r"encoders\.path=.*vae/config\.json.*z_dim is 16"):
        WanVAE.load(tmp_path, key="encoders.path")


def test_tiny_wan_vae_declares_its_measured_statistics(tmp_path):
    """The random tiny VAE's per-channel latent std is ~0.1; its declared statistics are measured at
    creation, so its normalised latents are near N(0, 1) on other content too."""
    from train_helpers import make_pair_frames

    from liveditor.pipeline.components import WanVAE
    from liveditor.pipeline.tiny import make_tiny_wan_dir

    cfg = json.loads((make_tiny_wan_dir(tmp_path / "wan") / "vae" / "config.json").read_text())
    assert max(cfg["latents_std"]) < 0.5  # the raw latents are far from unit scale
    src, _ = make_pair_frames(np.random.default_rng(3), 9)
    video = torch.from_numpy(src).permute(3, 0, 1, 2).float().div(127.5).sub(1).unsqueeze(0)
    latents = WanVAE.load(tmp_path / "wan").encode(video)
    std, mean = latents.std((0, 2, 3, 4)), latents.mean((0, 2, 3, 4))
    assert 0.5 < std.min() and std.max() < 2 and mean.abs().max() < 1


def test_the_edit_pipeline_runs_on_a_codec_dir(tmp_path):
    """EditPipeline.from_config takes a codec dir as model.vae_path unchanged (a DiT with in_dim = z_dim)."""
    from omegaconf import OmegaConf

    from liveditor.models import DiTConfig
    from liveditor.pipeline import EditPipeline
    from liveditor.pipeline.cli import compose_edit_config
    from liveditor.pipeline.tiny import make_codec_wan_dir, make_tiny_checkpoint

    model = ["model=tiny", "model.dit.in_dim=12", "model.dit.out_dim=12"]
    make_tiny_checkpoint(tmp_path / "dit.safetensors", DiTConfig.from_dict(OmegaConf.to_container(compose_edit_config(model).model.dit)))
    cfg = compose_edit_config(model + [f"model.weights_path={tmp_path / 'dit.safetensors'}", f"model.vae_path={make_codec_wan_dir(tmp_path / 'codec')}",
                                       "runtime.device=cpu", "runtime.progress=false"])
    clip = np.random.default_rng(0).integers(0, 256, (5, 16, 32, 3), dtype=np.uint8)
    out = EditPipeline.from_config(cfg)(clip, "make it red", num_inference_steps=2, height=16, width=32)
    assert out.frames.shape == (1, 5, 16, 32, 3) and out.frames.dtype == np.uint8
