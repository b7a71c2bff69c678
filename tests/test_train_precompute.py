"""liveditor-precompute: latent shards from curated shards, rejects with reasons, resume after kill -9
with byte-identical output, partitions, stale-cache detection; the shards read back as WebDataset."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from liveditor.train.shards import decode_latent_sample, iter_tar_samples
from train_helpers import BIN, make_wan_dir, precompute_args, run_cli, tree_digest, write_curated_shards


def broken_samples(shard: int):
    """One bad sample per shard kind: not a video, frame counts that differ, no instruction."""
    if shard != 0:
        return []
    import numpy as np

    from liveditor.video import write_video
    from train_helpers import make_pair_frames

    rng = np.random.default_rng(9)
    tmp = Path(".").resolve() / ".broken-media"
    tmp.mkdir(exist_ok=True)
    a, b = make_pair_frames(rng, 9)
    write_video(tmp / "a.mp4", a, fps=16)
    write_video(tmp / "b.mp4", b[:5], fps=16)
    ten, ten_t = make_pair_frames(rng, 10)
    write_video(tmp / "c.mp4", ten, fps=16)
    write_video(tmp / "d.mp4", ten_t, fps=16)
    good_json = json.dumps({"instruction": "invert the colours", "category": "style"}).encode()
    out = [
        ("zbadvideo", {"src.mp4": b"this is not a video", "tgt.mp4": (tmp / "a.mp4").read_bytes(), "json": good_json}),
        ("zmismatch", {"src.mp4": (tmp / "a.mp4").read_bytes(), "tgt.mp4": (tmp / "b.mp4").read_bytes(), "json": good_json}),
        ("znojson", {"src.mp4": (tmp / "a.mp4").read_bytes(), "tgt.mp4": (tmp / "a.mp4").read_bytes(), "json": b"{}"}),
        ("ztenframes", {"src.mp4": (tmp / "c.mp4").read_bytes(), "tgt.mp4": (tmp / "d.mp4").read_bytes(), "json": good_json}),
    ]
    for p in tmp.iterdir():
        p.unlink()
    tmp.rmdir()
    return out


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("precompute")
    curated = write_curated_shards(root / "curated", shards=3, per_shard=2, extra=broken_samples)
    return root, curated, make_wan_dir(root / "wan")


@pytest.fixture(scope="module")
def latents(inputs):
    root, curated, wan = inputs
    out = root / "latents"
    run_cli("liveditor-precompute", precompute_args(curated, out, wan), root)
    return out


def test_latent_shards_hold_the_documented_tensors(latents):
    index = json.loads((latents / "index.json").read_text())
    assert index["num_samples"] == 7 and index["num_shards"] == 3  # 6 good pairs + the 10-frame pair, trimmed to 9
    assert index["members"] == ["src.mp4", "tgt.mp4", "json", "latents.safetensors"]
    assert set(index["encoders"]) >= {"vae", "text_encoder", "tokenizer", "text_len", "input_index_sha256"}
    for entry in index["shards"]:
        samples = list(iter_tar_samples(latents / entry["name"]))
        assert len(samples) == entry["samples"]
        for key, members in samples:
            s = decode_latent_sample(key, members, latent_channels=16, text_dim=32)
            # 9 frames at 64x96 -> Wan VAE latents [16, (9-1)/4+1, 64/8, 96/8]
            assert tuple(s.source_latents.shape) == tuple(s.target_latents.shape) == (16, 3, 8, 12)
            assert s.source_latents.dtype == s.target_latents.dtype == s.text_embedding.dtype == torch.bfloat16
            assert s.text_embedding.shape[1] == 32 and 1 <= s.text_embedding.shape[0] < 32  # trimmed to the prompt
            assert s.meta["latents"]["frames"] == 9 and s.meta["instruction"] == "invert the colours"
            assert not torch.equal(s.source_latents, s.target_latents)
    defaults = (latents / "text_defaults.safetensors")
    assert defaults.exists()


def test_latents_match_a_direct_encoding(inputs, latents):
    """The stored latents are the VAE's normalised posterior mean of the decoded frames (to bf16)."""
    from liveditor.pipeline.components import WanVAE
    from liveditor.video import read_video

    root, curated, wan = inputs
    key, members = next(iter_tar_samples(curated / "edit-000001.tar"))
    (root / "probe.mp4").write_bytes(members["src.mp4"])
    frames = torch.from_numpy(read_video(root / "probe.mp4").frames).permute(3, 0, 1, 2).float() / 127.5 - 1
    expected = WanVAE.load(wan).encode(frames.unsqueeze(0))[0]
    stored = dict(iter_tar_samples(latents / "edit-000001.tar"))[key]
    got = decode_latent_sample(key, stored).source_latents.float()
    assert torch.allclose(got, expected, atol=2e-2 * expected.abs().max().item())


def test_rejects_are_kept_with_reasons(latents):
    rows = {r["key"]: r for r in pq.read_table(latents / "rejects.parquet").to_pylist()}
    assert rows["zbadvideo"]["reject_reason"] == "undecodable_video" and "zbadvideo.src.mp4" in rows["zbadvideo"]["detail"]
    assert rows["zmismatch"]["reject_reason"] == "frame_count_mismatch"
    assert rows["znojson"]["reject_reason"] == "bad_json"
    assert "ztenframes" not in rows
    index = json.loads((latents / "index.json").read_text())
    assert index["num_rejected"] == 3 and index["reject_reasons"] == {"bad_json": 1, "frame_count_mismatch": 1, "undecodable_video": 1}


def test_reject_policy_for_frame_counts(inputs, tmp_path):
    root, curated, wan = inputs
    run_cli("liveditor-precompute", precompute_args(curated, tmp_path / "strict", wan, "video.frames=reject"), root)
    rows = {r["key"]: r["reject_reason"] for r in pq.read_table(tmp_path / "strict" / "rejects.parquet").to_pylist()}
    assert rows["ztenframes"] == "frame_count_not_4k1"


def test_webdataset_reads_the_latent_shards(latents):
    import webdataset as wds

    urls = sorted(str(p) for p in latents.glob("edit-*.tar"))
    keys = [s["__key__"] for s in wds.WebDataset(urls, shardshuffle=False)]
    assert len(keys) == 7
    sample = next(iter(wds.WebDataset(urls[:1], shardshuffle=False)))
    assert {"src.mp4", "tgt.mp4", "json", "latents.safetensors"} <= set(sample)


def test_kill_9_and_resume_is_byte_identical(inputs, latents, tmp_path):
    root, curated, wan = inputs
    out = tmp_path / "killed"
    proc = subprocess.Popen([str(BIN / "liveditor-precompute"), *precompute_args(curated, out, wan)], cwd=root,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not (out / "edit-000000.tar").exists() and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "index.json").exists(), "the run finished before it could be killed"
    run_cli("liveditor-precompute", precompute_args(curated, out, wan), root)
    assert not list(out.rglob(".*partial*"))
    assert tree_digest(out) == tree_digest(latents)


def test_partitions_give_the_same_shards(inputs, latents, tmp_path):
    root, curated, wan = inputs
    out = tmp_path / "parts"
    run_cli("liveditor-precompute", precompute_args(curated, out, wan, "partition.index=1", "partition.count=2"), root)
    assert not (out / "index.json").exists() and (out / "edit-000001.tar").exists() and not (out / "edit-000000.tar").exists()
    run_cli("liveditor-precompute", precompute_args(curated, out, wan, "partition.index=0", "partition.count=2"), root)
    assert tree_digest(out) == tree_digest(latents)


def test_other_encoders_are_refused_as_stale(inputs, latents, tmp_path):
    root, curated, _ = inputs
    other = make_wan_dir(tmp_path / "other-wan", seed=1)
    done = run_cli("liveditor-precompute", precompute_args(curated, latents, other), root, check=False)
    assert done.returncode == 2 and "stale" in done.stderr and str(latents) in done.stderr


def test_bad_paths_name_the_config_key(inputs, tmp_path):
    root, curated, wan = inputs
    done = run_cli("liveditor-precompute", precompute_args(tmp_path / "nowhere", tmp_path / "o", wan), root, check=False)
    assert done.returncode == 2 and "input_dir" in done.stderr
    done = run_cli("liveditor-precompute", precompute_args(curated, tmp_path / "o", tmp_path / "no-wan"), root, check=False)
    assert done.returncode == 2 and "encoders.path" in done.stderr


# ------------------------------------------------------------------------------- latent statistics

def test_latent_stats_are_measured_and_the_tiny_vae_passes_the_check(latents):
    """index.json holds the per-channel mean/std of the stored latents (source and target); the tiny
    random Wan VAE declares calibrated statistics, so its latents are near N(0, 1)."""
    stats = json.loads((latents / "index.json").read_text())["latent_stats"]
    assert stats["count"] == 7 * 2 * 3 * 8 * 12  # 7 samples x (source, target) x [3, 8, 12] per channel
    assert len(stats["mean"]) == len(stats["std"]) == 16
    assert 0.5 < min(stats["std"]) and max(stats["std"]) < 2 and max(abs(m) for m in stats["mean"]) < 1
    assert sorted(p.name for p in (latents / "rejects").glob("*.stats.json")) == [f"edit-00000{i}.stats.json" for i in range(3)]
    assert not (latents / "vae_latent_stats.json").exists()


def run_main(args, capsys):
    from liveditor.train.precompute import main

    code = main(args + ["runtime.deterministic=false"])  # in-process: leave torch's global switch alone
    return code, capsys.readouterr().err


def kept_clips(curated: Path, latents: Path):
    """The decoded source and target frames of every stored sample, cut to the frames it used."""
    from liveditor.video import read_video

    members = {k: m for tar in sorted(curated.glob("edit-*.tar")) for k, m in iter_tar_samples(tar)}
    clips = []
    for tar in sorted(latents.glob("edit-*.tar")):
        for key, stored in iter_tar_samples(tar):
            n = json.loads(stored["json"])["latents"]["frames"]
            for side in ("src", "tgt"):
                (latents.parent / "probe.mp4").write_bytes(members[key][f"{side}.mp4"])
                clips.append(read_video(latents.parent / "probe.mp4").frames[:n])
    return clips


def test_codec_dir_latent_stats_equal_the_clips_stats(inputs, tmp_path, capsys):
    from liveditor.pipeline.codec import PatchCodec, codec_stats
    from liveditor.pipeline.tiny import make_codec_wan_dir

    root, curated, _ = inputs
    declared_mean, declared_std = [0.1] * 12, [0.4] * 12
    codec_dir = make_codec_wan_dir(tmp_path / "codec", patch=2, latents_mean=declared_mean, latents_std=declared_std)
    out = tmp_path / "latents"
    code, err = run_main(precompute_args(curated, out, codec_dir), capsys)
    assert code == 0, err
    stats = json.loads((out / "index.json").read_text())["latent_stats"]
    clips = kept_clips(curated, out)
    assert len(clips) == 14
    mean, std = codec_stats(clips, patch=2)
    assert stats["count"] == sum(c.shape[0] * c.shape[1] * c.shape[2] for c in clips) // 4
    assert stats["mean"] == pytest.approx([(m - 0.1) / 0.4 for m in mean], abs=1e-2)
    assert stats["std"] == pytest.approx([s / 0.4 for s in std], rel=1e-2)
    # a shard without its stats file (written before they existed) is measured from its tar: same numbers
    (out / "rejects" / "edit-000001.stats.json").unlink()
    assert run_main(precompute_args(curated, out, codec_dir), capsys)[0] == 0
    assert json.loads((out / "index.json").read_text())["latent_stats"] == stats
    # the stored (bf16) latents decode to the pixels to within one 8-bit level
    key, stored = next(iter_tar_samples(out / "edit-000000.tar"))
    video = PatchCodec.from_dir(codec_dir / "vae").decode(decode_latent_sample(key, stored, latent_channels=12).source_latents[None])
    assert tuple(video.shape) == (1, 3, 9, 64, 96)
    assert ((video[0].permute(1, 2, 3, 0) + 1) * 127.5 - torch.from_numpy(clips[0]).float()).abs().max() <= 1.0


def test_a_miscalibrated_vae_fails_the_check_with_the_fix(inputs, tmp_path, capsys, caplog):
    from liveditor.pipeline.codec import codec_stats
    from liveditor.pipeline.tiny import calibration_video, make_codec_wan_dir

    root, curated, _ = inputs
    mean, std = codec_stats([calibration_video(0)], patch=2)
    wrong = make_codec_wan_dir(tmp_path / "wrong", patch=2, latents_mean=mean, latents_std=[40 * s for s in std])
    out = tmp_path / "latents"
    code, err = run_main(precompute_args(curated, out, wrong), capsys)
    lines = [line for line in err.splitlines() if line.startswith("liveditor-precompute: error:")]
    assert code == 2 and len(lines) == 1, err
    assert "channel" in lines[0] and str(wrong / "vae" / "config.json") in lines[0] and "vae_latent_stats.json" in lines[0]
    assert (out / "index.json").exists()  # nothing is lost: the latents and their index are written
    fix = json.loads((out / "vae_latent_stats.json").read_text())
    assert fix["vae_config"] == str(wrong / "vae" / "config.json")
    real = codec_stats(kept_clips(curated, out), patch=2)
    assert fix["latents_std"] == pytest.approx(real[1], rel=2e-2) and fix["latents_mean"] == pytest.approx(real[0], abs=2e-2)
    caplog.clear()
    code, err = run_main(precompute_args(curated, out, wrong, "latent_stats.check=warn"), capsys)
    assert code == 0 and "far from N(0, 1)" in caplog.text
    caplog.clear()
    code, err = run_main(precompute_args(curated, out, wrong, "latent_stats.check=off"), capsys)
    assert code == 0 and "far from N(0, 1)" not in caplog.text


@pytest.mark.parametrize("override, named", [
    ("latent_stats.check=maybe", "latent_stats.check"), ("latent_stats.min_std=-1", "latent_stats.min_std"),
    ("latent_stats.max_std=0.1", "latent_stats.max_std"), ("latent_stats.max_abs_mean=big", "latent_stats.max_abs_mean"),
])
def test_bad_latent_stats_settings_are_refused_before_any_work(inputs, tmp_path, capsys, override, named):
    root, curated, wan = inputs
    code, err = run_main(precompute_args(curated, tmp_path / "o", wan, override), capsys)
    assert code == 2 and named in err and not (tmp_path / "o").exists()
