"""liveditor-train on the tiny model: the loss falls, kill -9 and resume reproduce the uninterrupted
sample order and loss curve, bad shards are skipped and counted, EMA and validation edits, export
then liveditor-edit, clear errors for bad paths; the timestep samplers and the data order."""

from __future__ import annotations

import importlib.util
import json
import math
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from liveditor.train.callbacks import read_sample_log
from liveditor.train.cli import compose_train_config, run_training
from liveditor.train.data import EditBatchStream, ShardInfo, list_shards
from liveditor.train.flow import TimestepConfig, sample_sigmas, shift_sigma
from liveditor.train.precompute import run_precompute, compose_config
from liveditor.train.shards import ShardError, iter_tar_samples, sha256_file, write_tar
from train_helpers import make_wan_dir, precompute_args, run_cli, write_curated_shards

TINY = ["experiment=tiny", "callbacks.sample_log=true"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Tiny Wan dir and 4 latent shards of 3 pairs each, made by the real precompute code."""
    root = tmp_path_factory.mktemp("train")
    wan = make_wan_dir(root / "wan")
    curated = write_curated_shards(root / "curated", shards=4, per_shard=3)
    run_precompute(compose_config("precompute", precompute_args(curated, root / "latents", wan)))
    return root, root / "latents", wan


def train_cfg(data, run_dir, *more):
    root, latents, wan = data
    return compose_train_config(TINY + [f"data.shards={latents}", f"run_dir={run_dir}", f"model.vae_path={wan}", *more])


# ---- the pieces -------------------------------------------------------------------------------

def test_shifted_uniform_sigmas_follow_the_shift_and_respect_the_expert_range():
    g = torch.Generator().manual_seed(0)
    s = sample_sigmas(200_000, TimestepConfig(shift=5.0), g)
    # s = shift(u), u uniform: P(s <= shift(q)) = q
    for q in (0.1, 0.5, 0.9):
        assert abs((s <= shift_sigma(torch.tensor(q, dtype=torch.float64), 5.0)).double().mean().item() - q) < 5e-3
    high = sample_sigmas(10_000, TimestepConfig(shift=5.0, min_timestep=875), g)
    assert high.min().item() >= 0.875 and high.max().item() <= 1.0
    ln = sample_sigmas(10_000, TimestepConfig(sampler="logit_normal", shift=1.0, min_timestep=200, max_timestep=400), g)
    assert ln.min().item() >= 0.2 and ln.max().item() <= 0.4
    with pytest.raises(ValueError, match="min_timestep"):
        TimestepConfig(min_timestep=900, max_timestep=800)


def test_data_order_is_a_pure_function_of_seed_epoch_rank_worker(data):
    _, latents, _ = data
    shards, _ = list_shards(latents)

    def keys(rank, world, workers, epoch, seed=0):
        stream = EditBatchStream(shards, 1, workers, rank, world, seed=seed, shuffle_buffer=4)
        return [tuple(b["keys"]) for w in range(workers) for _, b in stream.worker_batches(epoch, w)]

    assert keys(0, 2, 1, 0) == keys(0, 2, 1, 0)
    assert keys(0, 2, 1, 0) != keys(0, 2, 1, 1)  # epochs reshuffle
    r0, r1 = set(keys(0, 2, 1, 0)), set(keys(1, 2, 1, 0))
    assert r0 and r1 and not (r0 & r1)  # ranks see disjoint shards
    assert len(keys(0, 1, 2, 0)) == 2 * EditBatchStream(shards, 1, 2, 0, 1).batches_per_worker
    with pytest.raises(ShardError, match="fewer than ranks x workers"):
        EditBatchStream(shards, 1, 3, 0, 2)


def test_loss_falls_on_a_fixed_batch(data, tmp_path):
    from liveditor.train.cli import dit_config_of, train_options
    from liveditor.train.data import collate, read_samples
    from liveditor.train.module import EditorTrainingModule

    cfg = train_cfg(data, tmp_path / "fixed", "text_dropout=0.0")
    shards, _ = list_shards(cfg.data.shards)
    batch = collate(list(read_samples(shards[:1], {"skipped": 0}))[:2])
    batch["position"] = {"epoch": 0, "worker": 0, "seq": 0}  # the same noise and timesteps every step
    module = EditorTrainingModule(dit_config_of(cfg), train_options(cfg))
    optimizer = torch.optim.AdamW(module.model.parameters(), lr=1e-3)
    losses = []
    for _ in range(40):
        loss = module.compute_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses[::5]


# ---- whole runs -------------------------------------------------------------------------------

def _train_args(data, run_dir, *more):
    root, latents, wan = data
    return TINY + [f"data.shards={latents}", f"run_dir={run_dir}", f"model.vae_path={wan}", *more]


RESUME = ["trainer.max_steps=12", "callbacks.checkpoint.every_n_steps=5", "data.num_workers=2", "data.batch_size=1", "logger=csv",
          "ema.decay=0.9"]

# `liveditor-train` that SIGKILLs itself at a chosen point, so a kill test hits its window on every
# machine whatever the load: `step <N>` right after step N's sample log line (before any checkpoint
# of step N), `prune` when a checkpoint file is about to be deleted (after the newer one was written).
KILLED_TRAIN = """
import os, signal, sys
import lightning.pytorch.strategies.strategy as strategy
import liveditor.train.callbacks as callbacks
from liveditor.train.cli import main

where, at = sys.argv[1], int(sys.argv[2])
if where == "step":
    logged = callbacks.SampleLogCallback.on_train_batch_end
    def on_train_batch_end(self, trainer, *args):
        logged(self, trainer, *args)
        if trainer.global_step == at:
            os.kill(os.getpid(), signal.SIGKILL)
    callbacks.SampleLogCallback.on_train_batch_end = on_train_batch_end
else:
    strategy.Strategy.remove_checkpoint = lambda self, path: os.kill(os.getpid(), signal.SIGKILL)
sys.exit(main(sys.argv[3:]))
"""


def run_killed(where: str, at: int, args: list[str], cwd: Path) -> None:
    done = subprocess.run([sys.executable, "-c", KILLED_TRAIN, where, str(at), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == -signal.SIGKILL, f"exit {done.returncode}, not killed:\n{done.stderr[-3000:]}"


def assert_same_tensors(a, b, what: str) -> None:
    """Nested dicts/lists of tensors and numbers are equal bit for bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), what
    elif isinstance(a, dict):
        assert sorted(a, key=str) == sorted(b, key=str), what
        for k in a:
            assert_same_tensors(a[k], b[k], f"{what}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), what
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{what}[{i}]")
    else:
        assert a == b, (what, a, b)


def test_kill_9_and_resume_reproduces_the_sample_order_loss_weights_optimizer_and_ema(data, tmp_path):
    root = data[0]
    ref = tmp_path / "uninterrupted"
    run_cli("liveditor-train", _train_args(data, ref, *RESUME), root)
    expected = read_sample_log(ref / "samples.rank0.jsonl")
    assert sorted(expected) == list(range(1, 13))
    # 12 samples, 2 workers, batch 1: 6 batches per worker, 12 steps per epoch: one whole epoch

    run = tmp_path / "killed"
    # killed at step 8, after the step-5 checkpoint: worker 0 had given 3 batches, worker 1 two, so the
    # resumed loader must start at worker 1 (the rotation), mid-epoch
    run_killed("step", 8, _train_args(data, run, *RESUME), root)
    log = run / "samples.rank0.jsonl"
    assert max(read_sample_log(log)) == 8
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 5
    run_cli("liveditor-train", _train_args(data, run, *RESUME), root)
    config = (run / "config.yaml").read_text()
    assert "resumed_from:" in config and "ckpt" in config.split("resumed_from:")[1].split("\n")[0]
    got = read_sample_log(log)
    assert sorted(got) == sorted(expected)
    for step in expected:
        assert got[step]["keys"] == expected[step]["keys"], f"step {step}: {got[step]['keys']} vs {expected[step]['keys']}"
        assert got[step]["position"] == expected[step]["position"]
        assert got[step]["loss"] == expected[step]["loss"], step
    # the final states: weights, optimizer, learning-rate schedule and EMA bit for bit (the EMA of
    # the resumed run saw every update: a checkpoint holds the EMA of its own step)
    a, b = (torch.load(r / "checkpoints" / "last.ckpt", weights_only=False) for r in (ref, run))
    assert a["global_step"] == b["global_step"] == 12
    assert_same_tensors(a["state_dict"], b["state_dict"], "state_dict")
    assert_same_tensors(a["optimizer_states"], b["optimizer_states"], "optimizer_states")
    assert_same_tensors(a["lr_schedulers"], b["lr_schedulers"], "lr_schedulers")
    assert a["ema"]["updates"] == b["ema"]["updates"] == 12
    assert_same_tensors(a["ema"]["shadow"], b["ema"]["shadow"], "ema")


def test_a_finished_run_saves_its_final_state(data, tmp_path):
    """max_steps not a multiple of the checkpoint interval: the last steps are saved all the same."""
    run = tmp_path / "run"
    run_training(train_cfg(data, run, "trainer.max_steps=7", "callbacks.checkpoint.every_n_steps=3", "ema.decay=0.9"))
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 7 and last["ema"]["updates"] == 7
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*.ckpt")) == [
        "step-0000003.ckpt", "step-0000006.ckpt", "step-0000007.ckpt"]


def test_a_checkpoint_written_just_before_a_kill_is_pruned_after_the_resume(data, tmp_path):
    """Killed after step 6's checkpoint was written and before step 2's was deleted (keep_last=2):
    the resumed run still keeps only the newest two."""
    root = data[0]
    run = tmp_path / "run"
    args = _train_args(data, run, "trainer.max_steps=10", "callbacks.checkpoint.every_n_steps=2", "callbacks.checkpoint.keep_last=2")
    run_killed("prune", 0, args, root)
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*.ckpt")) == [
        "step-0000002.ckpt", "step-0000004.ckpt", "step-0000006.ckpt"]
    run_cli("liveditor-train", args, root)
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*.ckpt")) == ["step-0000008.ckpt", "step-0000010.ckpt"]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 10


def test_train_ema_validation_export_then_edit(data, tmp_path):
    """A short run with EMA and validation edits; export (plain and EMA); liveditor-edit loads the file."""
    root, _, wan = data
    run = tmp_path / "full"
    result = run_training(train_cfg(data, run, "trainer.max_steps=4", "ema.decay=0.9", "validation.every_n_steps=2",
                                    "validation.num_samples=2", "validation.steps=2", "data.holdout_shards=1", "logger=wandb"))
    assert result.trainer.global_step == 4
    videos = sorted((run / "validation" / "step-0000002").glob("*.mp4"))
    assert len(videos) == 2 and all(v.stat().st_size > 0 for v in videos)
    held_out = {k for k, _ in iter_tar_samples(Path(result.trainer.datamodule.val_shards[0].path))}
    assert {v.name.split(".")[0] for v in videos} <= held_out
    seen = {k for r in read_sample_log(run / "samples.rank0.jsonl").values() for k in r["keys"]}
    assert not (seen & held_out)  # held-out pairs never train
    assert list((run / "wandb").glob("offline-run-*")) and (run / "wandb_id.txt").exists()
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["ema"]["updates"] == 4

    plain, ema = tmp_path / "plain.safetensors", tmp_path / "ema.safetensors"
    run_cli("liveditor-export", [str(run / "checkpoints" / "last.ckpt"), str(plain), "--dtype", "float32"], root)
    run_cli("liveditor-export", [str(run / "checkpoints" / "last.ckpt"), str(ema), "--ema", "--dtype", "float32"], root)
    from safetensors.torch import load_file

    a, b = load_file(str(plain)), load_file(str(ema))
    assert torch.equal(a["blocks.0.ffn.0.weight"], ckpt["state_dict"]["model.blocks.0.ffn.0.weight"])
    assert not torch.equal(a["blocks.0.ffn.0.weight"], b["blocks.0.ffn.0.weight"])
    assert "blocks.0.self_attn.alpha_1.weight" in a and "source_video_embedding_more_memory.weight" in a
    assert json.loads((tmp_path / "ema.safetensors.json").read_text())["global_step"] == 4
    for weights in (plain, ema):  # the umask's mode, like any file the user writes (not 0600)
        assert stat.S_IMODE(weights.stat().st_mode) == stat.S_IMODE(weights.with_name(weights.name + ".json").stat().st_mode)

    from liveditor.train.shards import LATENTS_MEMBER  # noqa: F401
    from train_helpers import make_pair_frames
    from liveditor.video import read_video, write_video
    import numpy as np

    src, _ = make_pair_frames(np.random.default_rng(3), 9)
    write_video(tmp_path / "in.mp4", src, fps=16)
    run_cli("liveditor-edit", ["--input", str(tmp_path / "in.mp4"), "--prompt", "invert the colours", "--output",
                               str(tmp_path / "out.mp4"), "model=tiny", f"model.weights_path={ema}", f"model.vae_path={wan}",
                               "sampling.steps=2", "video.resolution=[96,64]"], root)
    assert read_video(tmp_path / "out.mp4").frames.shape == (9, 64, 96, 3)


def _copy_latents(latents: Path, to: Path) -> Path:
    to.mkdir()
    for p in latents.iterdir():
        if p.is_file():
            (to / p.name).write_bytes(p.read_bytes())
    return to


def test_bad_samples_are_counted_and_skipped(data, tmp_path, caplog):
    """A shard with a sample without latents and one of the wrong shape (index.json made for it):
    both are logged and skipped, and train/skipped_samples is the running total over the loader's
    workers (never smaller than a previous step's)."""
    root, latents, wan = data
    bad = _copy_latents(latents, tmp_path / "bad")
    index = json.loads((latents / "index.json").read_text())
    samples = list(iter_tar_samples(latents / "edit-000000.tar"))
    key0, m0 = samples[0]
    no_latents = {k: v for k, v in m0.items() if k != "latents.safetensors"}
    from safetensors.torch import load, save

    t = load(m0["latents.safetensors"])
    wrong = dict(m0, **{"latents.safetensors": save({**t, "source_latents": t["source_latents"][:4].contiguous()})})
    write_tar(bad / "edit-000000.tar", [("nolatents", no_latents), ("wrongshape", wrong)] + samples[1:])
    index["shards"][0].update(samples=index["shards"][0]["samples"] + 2, sha256=sha256_file(bad / "edit-000000.tar"),
                              bytes=(bad / "edit-000000.tar").stat().st_size)
    (bad / "index.json").write_text(json.dumps(index))
    import logging

    caplog.set_level(logging.INFO)
    common = TINY + [f"data.shards={bad}", "trainer.max_steps=7", "data.batch_size=1"]
    result = run_training(compose_train_config(common + [f"run_dir={tmp_path / 'run'}"]))  # loading in this process: its log is seen
    assert result.trainer.global_step == 7
    text = caplog.text
    assert "nolatents" in text and "no latents.safetensors" in text
    assert "wrongshape" in text and "channels" in text
    assert "model.vae_path is not set" in text and "not checked" in text  # no encoders to compare the latents' with
    logged = [r for r in read_sample_log(tmp_path / "run" / "samples.rank0.jsonl").values()]
    assert not any(k in ("nolatents", "wrongshape") for r in logged for k in r["keys"])
    import csv

    # two loader workers, one of which reads the bad shard: the metric is their sum, not the last batch's worker's
    run_training(compose_train_config(common + [f"run_dir={tmp_path / 'workers'}", "data.num_workers=2"]))
    rows = list(csv.DictReader(open(tmp_path / "workers" / "metrics" / "metrics.csv")))
    skipped = [float(r["train/skipped_samples"]) for r in rows if r.get("train/skipped_samples")]
    assert len(skipped) == 7 and skipped == sorted(skipped) and skipped[-1] == 2, skipped


@pytest.fixture(scope="module")
def other_latents(data):
    """The same curated pairs encoded by another (random) Wan VAE and text encoder."""
    root = data[0]
    wan = make_wan_dir(root / "wan_other", seed=1)
    run_precompute(compose_config("precompute", precompute_args(root / "curated", root / "latents_other", wan)))
    return root / "latents_other"


def _main_error(capsys, *args) -> str:
    """Run liveditor-train in this process; it must exit 2 with one line on stderr, which is returned."""
    from liveditor.train.cli import main

    code = main(list(args))
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, (code, err)
    return err


def test_latents_of_other_encoders_are_refused(data, other_latents, tmp_path, capsys):
    root, latents, wan = data
    err = _main_error(capsys, *_train_args(data, tmp_path / "r", f"data.shards={other_latents}"))
    assert "model.vae_path" in err and str(wan) in err and str(other_latents) in err and "vae" in err
    index = json.loads((other_latents / "index.json").read_text())
    from liveditor.train.precompute import weights_fingerprint

    assert index["encoders"]["vae"][:12] in err and weights_fingerprint(wan / "vae")[:12] in err  # both encoders named


@pytest.mark.parametrize("workers", [0, 2])
def test_a_shard_that_is_not_the_one_indexed_is_refused(data, other_latents, tmp_path, capsys, workers):
    """One shard swapped for another encoder's shard of the same name, or truncated: its sha256 is not
    the one index.json records, found when the loader opens it (in a worker or not)."""
    root, latents, wan = data
    swapped = _copy_latents(latents, tmp_path / "swapped")
    (swapped / "edit-000001.tar").write_bytes((other_latents / "edit-000001.tar").read_bytes())
    more = [f"data.num_workers={workers}", "data.batch_size=1", "trainer.max_steps=12"]
    err = _main_error(capsys, *_train_args(data, tmp_path / "r", f"data.shards={swapped}", *more))
    recorded = json.loads((latents / "index.json").read_text())["shards"][1]["sha256"]
    assert "edit-000001.tar" in err and recorded[:12] in err and sha256_file(swapped / "edit-000001.tar")[:12] in err
    truncated = _copy_latents(latents, tmp_path / "truncated")
    payload = (latents / "edit-000003.tar").read_bytes()
    (truncated / "edit-000003.tar").write_bytes(payload[: len(payload) // 2])
    err = _main_error(capsys, *_train_args(data, tmp_path / "r2", f"data.shards={truncated}", *more))
    assert "edit-000003.tar" in err and "sha256" in err


def test_config_mistakes_are_one_line_and_exit_2_before_any_model_is_built(data, tmp_path, capsys, monkeypatch):
    ckpts = {}
    for name, more in {"wide": ["model.dit.dim=96", "model.dit.num_heads=6"], "deep_ema": ["model.dit.num_layers=3", "ema.decay=0.9"]}.items():
        run_training(train_cfg(data, tmp_path / name, "trainer.max_steps=1", *more))
        ckpts[name] = tmp_path / name / "checkpoints" / "last.ckpt"
    import liveditor.train.module as module

    def no_model(*_, **__):
        raise AssertionError("a model was built before the config was checked")

    monkeypatch.setattr(module, "build_editor", no_model)
    cases = [
        (["trainer.max_steps=abc"], ["trainer.max_steps must be an integer", "'abc'"]),
        (["+trainer.max_step=5"], ["'trainer.max_step'", "did you mean 'trainer.max_steps'"]),
        (["trainer.max_step=5"], ["'trainer.max_step'", "did you mean 'trainer.max_steps'"]),
        (["+foo=1"], ["unknown config key 'foo'"]),
        ([f"resume={ckpts['wide']}"], [str(ckpts["wide"]), "model.dit.dim=96", "model.dit.dim=64"]),
        ([f"resume={ckpts['deep_ema']}", "ema.decay=0.9"], [str(ckpts["deep_ema"]), "model.dit.num_layers=3", "model.dit.num_layers=2"]),
    ]
    if not torch.cuda.is_available() or importlib.util.find_spec("deepspeed") is None:  # DeepSpeed cannot run here
        cases.append((["strategy=deepspeed_stage_2"], ["strategy=deepspeed_stage_2 needs"]))
    for args, says in cases:
        err = _main_error(capsys, *_train_args(data, tmp_path / "r", *args))
        for text in says:
            assert text in err, (args, err)


def test_bad_paths_are_errors_naming_the_key(data, tmp_path):
    root = data[0]
    done = run_cli("liveditor-train", _train_args(data, tmp_path / "r", "data.shards=/no/such/shards"), root, check=False)
    assert done.returncode == 2 and "data.shards" in done.stderr and "/no/such/shards" in done.stderr
    done = run_cli("liveditor-train", _train_args(data, tmp_path / "r", "model.weights_path=/no/such.safetensors"), root, check=False)
    assert done.returncode == 2 and "init_weights" in done.stderr and "model.weights_path" in done.stderr
    if importlib.util.find_spec("deepspeed") is None:  # the CPU suite's environment: the extra is not installed
        done = run_cli("liveditor-train", _train_args(data, tmp_path / "r", "strategy=deepspeed_stage_3"), root, check=False)
        assert done.returncode == 2 and "needs" in done.stderr and "DeepSpeed (pip install '.[deepspeed]'" in done.stderr
    done = run_cli("liveditor-train", _train_args(data, tmp_path / "r", "data.num_workers=5"), root, check=False)
    assert done.returncode == 2 and "fewer than ranks x workers" in done.stderr


def test_export_refuses_what_it_cannot_export(tmp_path):
    done = run_cli("liveditor-export", [str(tmp_path / "missing.ckpt"), str(tmp_path / "o.safetensors")], tmp_path, check=False)
    assert done.returncode == 2 and "does not exist" in done.stderr


def test_ddp_on_two_cpu_processes_splits_shards_by_rank(tmp_path):
    """DDP (gloo) with two ranks on random latent shards: each rank trains on its own shards, in step."""
    from liveditor.train.bench import write_synthetic_shards

    shards = write_synthetic_shards(tmp_path / "shards", shards=4, per_shard=2)
    run = tmp_path / "ddp"
    run_cli("liveditor-train", TINY + [f"data.shards={shards}", f"run_dir={run}", "strategy=ddp", "trainer.devices=2",
                                       "trainer.max_steps=4", "data.batch_size=1"], tmp_path)
    logs = [read_sample_log(run / f"samples.rank{r}.jsonl") for r in (0, 1)]
    assert sorted(logs[0]) == sorted(logs[1]) == [1, 2, 3, 4]
    keys = [{k for rec in log.values() for k in rec["keys"]} for log in logs]
    shard_of = lambda key: key[len("synthetic"):][:3]  # noqa: E731
    assert not ({shard_of(k) for k in keys[0]} & {shard_of(k) for k in keys[1]})
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 4


def test_mixed_precision_step_runs_with_float32_parameters(data, tmp_path):
    """bf16-mixed (float32 parameters under autocast, as Lightning runs it): attention inputs agree in
    dtype and the loss is finite; ISA and dense both."""
    from liveditor.train.cli import dit_config_of, train_options
    from liveditor.train.data import collate, read_samples
    from liveditor.train.module import EditorTrainingModule

    cfg = train_cfg(data, tmp_path / "amp")
    shards, _ = list_shards(cfg.data.shards)
    batch = collate(list(read_samples(shards[:1], {"skipped": 0}))[:2])
    batch["position"] = {"epoch": 0, "worker": 0, "seq": 0}
    module = EditorTrainingModule(dit_config_of(cfg), train_options(cfg))
    for attention in ("isa", "dense"):
        for block in module.model.blocks:
            block.self_attn.attention = attention
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = module.compute_loss(batch)
        loss.backward()
        assert torch.isfinite(loss) and module.model.blocks[0].self_attn.q.weight.grad is not None


def test_sequence_parallel_training_matches_one_process(tmp_path):
    """Two CPU ranks as one Ulysses group (sequence_parallel=2, so one data-parallel replica) train on
    the same batches with the same draws as a single process, and follow its loss curve."""
    from liveditor.train.bench import write_synthetic_shards

    shards = write_synthetic_shards(tmp_path / "shards", shards=2, per_shard=3)
    common = TINY + [f"data.shards={shards}", "trainer.max_steps=4", "data.batch_size=1", "optim.lr=1e-2"]
    run_cli("liveditor-train", common + [f"run_dir={tmp_path / 'single'}"], tmp_path)
    run_cli("liveditor-train", common + [f"run_dir={tmp_path / 'sp'}", "strategy=ddp", "trainer.devices=2", "sequence_parallel=2"],
            tmp_path)
    single = read_sample_log(tmp_path / "single" / "samples.rank0.jsonl")
    for rank in (0, 1):
        sp = read_sample_log(tmp_path / "sp" / f"samples.rank{rank}.jsonl")
        assert sorted(sp) == sorted(single) == [1, 2, 3, 4]
        for step in single:
            assert sp[step]["keys"] == single[step]["keys"]
            assert math.isclose(sp[step]["loss"], single[step]["loss"], rel_tol=1e-4), (rank, step, sp[step]["loss"], single[step]["loss"])
    done = run_cli("liveditor-train", common + [f"run_dir={tmp_path / 'bad'}", "sequence_parallel=3"], tmp_path, check=False)
    assert done.returncode == 2 and "sequence_parallel=3" in done.stderr


def test_progress_counts_steps_toward_max_steps_by_default(tmp_path):
    """The default bar is optimizer steps toward trainer.max_steps (Lightning's Rich bar counted the
    batches of an epoch and showed `Epoch 0/-2`)."""
    from liveditor.configcheck import ConfigError
    from liveditor.train.callbacks import StepProgressBar
    from liveditor.train.cli import build_callbacks

    bars = [c for c in build_callbacks(compose_train_config([f"run_dir={tmp_path}"]), tmp_path) if hasattr(c, "enable")]
    assert len(bars) == 1 and isinstance(bars[0], StepProgressBar)
    with pytest.raises(ConfigError, match="callbacks.progress must be one of steps, tqdm"):
        compose_train_config(["callbacks.progress=rich"])


def test_adamw_is_not_fused_where_lightning_clips_gradients_under_mixed_precision():
    """bf16-mixed with gradient_clip_val (the GPU defaults) crashed at the first step: Lightning's
    mixed-precision plugin refuses to clip for an optimizer that unscales gradients itself (fused AdamW).
    Where Lightning clips under that plugin the module takes foreach AdamW; elsewhere on CUDA, fused."""
    import torch
    from lightning.pytorch.plugins.precision import MixedPrecision

    from liveditor.train.module import adamw_kernel

    p = torch.nn.Parameter(torch.zeros(4))
    p.grad = torch.ones(4)
    plugin = MixedPrecision("bf16-mixed", "cpu")
    with pytest.raises(RuntimeError, match="gradient clipping"):
        plugin.clip_gradients(torch.optim.AdamW([p], fused=True), 1.0)
    plugin.clip_gradients(torch.optim.AdamW([p], **adamw_kernel(True, clips_under_amp=True)), 1.0)
    assert adamw_kernel(True, clips_under_amp=True) == {"foreach": True}
    assert adamw_kernel(True, clips_under_amp=False) == {"fused": True}
    assert adamw_kernel(False, clips_under_amp=True) == {}
