"""The learning benchmark: does training make an editor? Scores trained editors on held-out clips.

    summary = evaluate_learning(heldout_dir, train_dir, codec_dir, {"isa": run_a, "dense": run_b}, out_dir)
    failed = check_learning(summary, "isa")         # [] when every claim holds
    python -m liveditor.eval.learning --heldout D --train D --codec D --run isa=RUN --run dense=RUN --out D

Inputs are latent shard folders (train/shards.py; media kept) of synthetic edit pairs whose source
clips are held out of training, the Wan directory whose `vae/` made (and decodes) the latents, and
`liveditor-train` run directories. For every held-out pair (clip A, edit E) and every checkpoint of
every run the editor is sampled under three conditions:

- `edit`: A's source latents and A's instruction (E), scored against the pair's target.
- `source_swap`: the source latents of another held-out clip B of the same latent shape (the next
  clip in sorted order), A's instruction, scored against A's target: an editor that reads its
  source does worse here than under `edit`.
- `instruction_swap`: A's source and the instruction of the pair (A, E2), E2 the next edit of clip
  A in sorted order, scored against the target of (A, E2) (`given_target`) and of (A, E)
  (`original_target`): an editor that follows its instruction is closer to the first.

Baselines without a model, scored like `edit`: `identity` (returns the source: its latents are the
source latents, its frames the stored `src.mp4` frames, no codec round trip), `zeros` (zero
normalised latents, i.e. every channel at the encoder's mean, decoded), `prior` (the per-position
mean of the training target latents, decoded: the best content-free guess), and per run
`untrained`: the run's architecture at its initial weights (`seed_everything(seed)` then the
module's constructor, exactly as `liveditor-train` builds it), sampled like a checkpoint and stored
as the run's step 0.

Metrics of one output (latents `x_hat` `[C, F, h, w]`, normalised; frames uint8 `[T, H, W, 3]`):
- `latent_rel_error = ||x_hat - x_target||_2 / ||x_target||_2` over all elements, float32.
- `psnr = 10 log10(255^2 / MSE)` dB, MSE over every pixel and channel of all T frames of
  `decode(x_hat)` (rounded to uint8) against the pair's `tgt.mp4` frames; MSE is clamped to at
  least `255^2 * 1e-10`, so identical videos score 100 dB instead of infinity.

Noise of a pair is a pure function of (seed, pair key), shared by its three conditions and by every
checkpoint, so differences between checkpoints and conditions are not sampling noise.

Outputs in `out_dir`: `items.parquet`/`.csv` (one row per run or baseline x step x pair x condition
x scored target), `curves.csv`, `summary.json`, `report.md`, `report.csv`, `report.html` (one
self-contained page). Resumable: each (run, step) and each baseline is evaluated into its own part
file, `parts/<run>/step-XXXXXXX.parquet` (with the frames the report shows beside it,
`.frames.npz`, written first) or `parts/baselines/<name>.parquet`, written atomically; a rerun
skips parts that exist and assembles every table from the parts, so a kill at any instant loses
at most the evaluation in flight and repeats nothing finished. `config.json` records the options
and inputs that the parts depend on; a rerun with others is refused.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import logging
import math
import os
import random
import re
import statistics
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pyarrow as pa
import torch

from liveditor.files import atomic_target, atomic_write_json, atomic_write_text

log = logging.getLogger("liveditor.eval.learning")

BASELINES = ("identity", "zeros", "prior")
CONDITIONS = ("edit", "source_swap", "instruction_swap")
UNTRAINED_STEP = 0  # the untrained model is stored as each run's step 0
PSNR_PEAK = 255.0
MSE_FLOOR = PSNR_PEAK ** 2 * 1e-10  # caps PSNR at 100 dB (identical videos would be +inf)
STRIP_MIN_SIDE = 96  # frame strips are upscaled (nearest) until the short side is at least this, in pixels
RUN_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
STEP_FILE = re.compile(r"^step-(\d+)\.ckpt$")
COVERAGE_SIGMAS = (0.9, 0.5, 0.1)  # noise levels of the source-coverage forwards (ISA runs)

PART_SCHEMA = pa.schema([
    ("run", pa.string()), ("step", pa.int64()), ("key", pa.string()), ("clip_id", pa.string()), ("edit", pa.string()),
    ("condition", pa.string()), ("source_key", pa.string()), ("instruction_key", pa.string()),
    ("scored_against", pa.string()), ("latent_rel_error", pa.float64()), ("psnr", pa.float64()),
])
ITEM_COLUMNS = ("run", "step", "wall_s", "key", "clip_id", "edit", "condition", "source_key", "instruction_key",
                "scored_against", "latent_rel_error", "psnr")
ITEM_SCHEMA = pa.schema([PART_SCHEMA.field(c) if c != "wall_s" else pa.field("wall_s", pa.float64()) for c in ITEM_COLUMNS])
CURVE_SCHEMA = pa.schema([("run", pa.string()), ("step", pa.int64()), ("wall_s", pa.float64()), ("edit", pa.string()),
                          ("items", pa.int64()), ("psnr", pa.float64()), ("latent_rel_error", pa.float64())])


class LearnEvalError(ValueError):
    """An input of the learning benchmark is unusable; the message names it and the fix."""


@dataclass
class LearnEvalOptions:
    """How editors are sampled and which checkpoints are scored.

    `steps`, `sampler`, `shift`, `guidance_scale`, `seed` and `use_ema` change the results: a rerun into
    an `out_dir` made with other values is refused. `device` and `batch_size` change only float
    rounding, `checkpoints` only which parts exist."""

    steps: int = 16  # sampling steps per edit
    sampler: str = "euler"  # euler | unipc
    shift: float = 3.0  # sampling shift (the training config's timesteps.shift is the natural choice)
    guidance_scale: float = 1.0  # 1.0: the conditional branch only (no CFG)
    seed: int = 0  # the noise of pair k is a pure function of (seed, k)
    device: str = "cpu"
    batch_size: int = 8  # edits per sampling call
    checkpoints: str = "all"  # all | last
    use_ema: bool = False  # sample the checkpoints' EMA weights

    def identity(self) -> dict:
        """The options the results depend on."""
        return {k: v for k, v in asdict(self).items() if k not in ("device", "batch_size", "checkpoints")}


# ---------------------------------------------------------------------------------------- held-out pairs

@dataclass
class HeldOutPair:
    """One held-out edit pair. Latents `[C, F, h, w]` float32 (normalised), text `[L, text_dim]` float32;
    `frames`: the pixel frames the latents encode (the first `frames` of the media)."""

    key: str
    clip_id: str
    edit: str
    instruction: str
    source_latents: torch.Tensor
    target_latents: torch.Tensor
    text: torch.Tensor
    frames: int
    src_path: Path
    tgt_path: Path

    def read_frames(self, which: str) -> np.ndarray:
        """The pair's `src` or `tgt` video, uint8 `[frames, H, W, 3]`."""
        from liveditor.video import read_video

        frames = read_video(self.src_path if which == "src" else self.tgt_path, max_frames=self.frames).frames
        if frames.shape[0] != self.frames:
            raise LearnEvalError(f"held-out pair '{self.key}': {which}.mp4 has {frames.shape[0]} frames, its latents encode {self.frames}")
        return frames


def _clip_id(key: str, meta: dict) -> str:
    """The source clip of a pair: `clip_id` from its json when present, else the pair key without the
    `-<edit>` suffix that liveditor-curate's synthetic pairs carry (`<clip_id>-<edit without _>`)."""
    if meta.get("clip_id"):
        return str(meta["clip_id"])
    suffix = "-" + str(meta.get("edit") or "").replace("_", "")
    if len(suffix) > 1 and key.endswith(suffix) and len(key) > len(suffix):
        return key[: -len(suffix)]
    raise LearnEvalError(f"held-out pair '{key}': no clip_id in its json and the key does not end in '-<edit>': "
                         "make the held-out set with liveditor-curate's synthetic editor")


def _read_index(folder, name: str) -> dict:
    from liveditor.train.shards import ShardError, read_index

    try:
        return read_index(folder, name)
    except ShardError as exc:
        raise LearnEvalError(str(exc)) from exc


def _samples(folder: Path, index: dict, name: str):
    """Every `(key, members)` of a shard set, in index order."""
    from liveditor.train.shards import ShardError, iter_tar_samples

    for shard in index["shards"]:
        try:
            yield from iter_tar_samples(folder / shard["name"])
        except ShardError as exc:
            raise LearnEvalError(f"{name}: {exc}") from exc


def load_heldout(heldout_dir, media_dir: Path, latent_channels: int, text_dim: int) -> list[HeldOutPair]:
    """The held-out pairs of a latent shard folder, sorted by key; their videos are written to `media_dir`."""
    from liveditor.train.shards import ShardError, decode_latent_sample

    folder = Path(heldout_dir)
    pairs = []
    for key, members in _samples(folder, _read_index(folder, "heldout_dir"), "heldout_dir"):
        try:
            sample = decode_latent_sample(key, members, latent_channels, text_dim)
        except ShardError as exc:
            raise LearnEvalError(f"heldout_dir='{folder}': {exc}") from exc
        missing = [m for m in ("src.mp4", "tgt.mp4") if m not in members]
        if missing:
            raise LearnEvalError(f"heldout_dir='{folder}': pair '{key}' has no {', '.join(missing)}: the true targets are its "
                                 "videos; rerun liveditor-precompute with keep_media=true")
        meta = sample.meta
        if not meta.get("edit"):
            raise LearnEvalError(f"heldout_dir='{folder}': pair '{key}' names no edit in its json (not a synthetic pair): "
                                 "the learning benchmark needs pairs of liveditor-curate's synthetic editor")
        paths = []
        for side in ("src", "tgt"):
            path = media_dir / f"{key}.{side}.mp4"
            path.write_bytes(members[f"{side}.mp4"])
            paths.append(path)
        frames = int((meta.get("latents") or {}).get("frames") or meta.get("frames") or 0)
        pairs.append(HeldOutPair(key, _clip_id(key, meta), str(meta["edit"]), str(meta.get("instruction", "")),
                                 sample.source_latents.float(), sample.target_latents.float(), sample.text_embedding.float(),
                                 frames, *paths))
    if not pairs:
        raise LearnEvalError(f"heldout_dir='{folder}' holds no pairs")
    return sorted(pairs, key=lambda p: p.key)


def check_encoders(heldout_index: dict, train_index: dict, heldout_dir, train_dir) -> None:
    """Held-out and training latents must come from the same encoders (`index.json` `encoders`, less
    the input checksum, which differs by design)."""
    a, b = (dict(i.get("encoders") or {}) for i in (heldout_index, train_index))
    for entry in (a, b):
        entry.pop("input_index_sha256", None)
    if not a or not b:
        log.warning("heldout_dir or train_dir has no encoders entry in index.json: cannot check they share encoders")
        return
    changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if changed:
        raise LearnEvalError(f"heldout_dir='{heldout_dir}' and train_dir='{train_dir}' were encoded by different encoders "
                             f"(index.json encoders differ in {changed}): rerun liveditor-precompute on both with the same encoders.path")


def check_codec(codec_dir, heldout_index: dict) -> str:
    """The fingerprint of `codec_dir/vae`; it must be the VAE that made the held-out latents."""
    from liveditor.train.precompute import weights_fingerprint

    vae = Path(codec_dir) / "vae"
    if not vae.is_dir():
        raise LearnEvalError(f"codec_dir='{codec_dir}' has no vae/ folder: point it at the Wan directory given to "
                             "liveditor-precompute (encoders.path)")
    fingerprint = weights_fingerprint(vae)
    made_by = (heldout_index.get("encoders") or {}).get("vae")
    if made_by is not None and made_by != fingerprint:
        raise LearnEvalError(f"codec_dir='{codec_dir}': its vae/ is not the VAE that encoded the held-out latents (fingerprints differ): "
                             "pass the encoders.path that liveditor-precompute used")
    return fingerprint


def load_codec(codec_dir, device: str):
    """The VAE (or codec) of a Wan directory: `.decode([B, C, F, h, w]) -> [B, 3, T, H, W]` in `[-1, 1]`, `.z_dim`."""
    from liveditor.pipeline.components import ComponentError, WanVAE

    try:
        return WanVAE.load(codec_dir, device=device, key="codec_dir")
    except ComponentError as exc:
        raise LearnEvalError(str(exc)) from exc


def train_prior(train_dir, index: dict) -> tuple[torch.Tensor, dict, set]:
    """Per-position mean of the training target latents `[C, F, h, w]`, at the most common latent shape
    (targets of other shapes are first resampled to it, trilinear); also its counts and the training clip ids."""
    from liveditor.train.shards import ShardError, decode_latent_sample

    folder = Path(train_dir)
    shapes: dict[tuple, int] = {}
    sums: dict[tuple, torch.Tensor] = {}
    clips = set()
    for key, members in _samples(folder, index, "train_dir"):
        try:
            sample = decode_latent_sample(key, members)
        except ShardError as exc:
            raise LearnEvalError(f"train_dir='{folder}': {exc}") from exc
        shape = tuple(sample.target_latents.shape)
        shapes[shape] = shapes.get(shape, 0) + 1
        sums[shape] = sums.get(shape, 0) + sample.target_latents.double()
        if sample.meta.get("edit") or sample.meta.get("clip_id"):
            clips.add(_clip_id(key, sample.meta))
    if not shapes:
        raise LearnEvalError(f"train_dir='{folder}' holds no pairs: the prior baseline is the mean of its targets")
    main_shape = max(shapes, key=lambda s: (shapes[s], s))
    total = sum(resample(s.float(), main_shape).double() for s in sums.values())
    info = {"shape": list(main_shape), "pairs": sum(shapes.values()), "clips": len(clips),
            "resampled_pairs": sum(n for s, n in shapes.items() if s != main_shape)}
    return (total / info["pairs"]).float(), info, clips


def resample(latents: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """`[C, F, h, w]` -> `shape` (`[C, F', h', w']`), trilinear over (F, h, w); unchanged when equal."""
    if tuple(latents.shape) == tuple(shape):
        return latents
    return torch.nn.functional.interpolate(latents[None], size=tuple(shape[1:]), mode="trilinear", align_corners=False)[0]


# ---------------------------------------------------------------------------------------- runs

@dataclass
class Run:
    """A `liveditor-train` run directory: its checkpoints `[(step, path)]`, architecture and wall-clock."""

    label: str
    run_dir: Path
    config: object  # the resolved train config (OmegaConf)
    dit: object  # DiTConfig
    checkpoints: list[tuple[int, Path]] = field(default_factory=list)
    wall_s: dict[int, Optional[float]] = field(default_factory=dict)
    step_seconds: list[float] = field(default_factory=list)

    def wall_at(self, step: int) -> Optional[float]:
        """Training wall-clock seconds at `step` (sum of the sample log's `step_seconds` of steps <= step);
        None when a step's record or field is missing."""
        return 0.0 if step == UNTRAINED_STEP else self.wall_s.get(step)


def _checkpoint_step(path: Path) -> int:
    """The global step of a checkpoint: from a `step-N.ckpt` name, else read from the file."""
    match = STEP_FILE.match(path.name)
    if match:
        return int(match.group(1))
    if path.is_file():  # memory-mapped: only the pickled header is read
        return int(torch.load(path, map_location="cpu", mmap=True, weights_only=False)["global_step"])
    from liveditor.train.export import load_training_checkpoint

    return int(load_training_checkpoint(path)["global_step"])


def open_run(label: str, run_dir, which: str = "all") -> Run:
    """Read a run directory: `config.yaml` (architecture, seed), `checkpoints/*.ckpt` (`which`: all or the
    newest), `samples.rank0.jsonl` (`step_seconds`)."""
    from omegaconf import OmegaConf

    from liveditor.train.callbacks import read_sample_log
    from liveditor.train.cli import dit_config_of

    if not RUN_LABEL.match(label) or label in BASELINES or label == "all":
        raise LearnEvalError(f"run label {label!r}: use letters, digits, '_', '.', '-', and none of {BASELINES + ('all',)}")
    root = Path(run_dir).expanduser().resolve()
    config_path = root / "config.yaml"
    if not config_path.exists():
        raise LearnEvalError(f"run '{label}': '{run_dir}' has no config.yaml: point it at a liveditor-train run_dir")
    config = OmegaConf.load(config_path)
    found: dict[int, Path] = {}
    for path in sorted((root / "checkpoints").glob("*.ckpt")):
        if path.name.startswith("."):
            continue  # a checkpoint being written
        step = _checkpoint_step(path)
        if step not in found or STEP_FILE.match(path.name):  # prefer step-N.ckpt over the same step's last.ckpt
            found[step] = path
    found.pop(UNTRAINED_STEP, None)  # step 0 is built, not loaded: it is the untrained model
    if not found:
        raise LearnEvalError(f"run '{label}': '{root / 'checkpoints'}' has no checkpoints (*.ckpt) after step 0: "
                             f"train it first (liveditor-train run_dir={root}) or give another run directory")
    steps = sorted(found) if which == "all" else [max(found)]
    run = Run(label, root, config, dit_config_of(config), [(s, found[s]) for s in steps])
    log_path = root / "samples.rank0.jsonl"
    if log_path.exists():
        records = read_sample_log(log_path)
        total, known = 0.0, True
        for step in range(1, max(records, default=0) + 1):
            seconds = (records.get(step) or {}).get("step_seconds")
            known = known and seconds is not None
            total += seconds if seconds is not None else 0.0
            run.wall_s[step] = total if known else None
        run.step_seconds = [float(r["step_seconds"]) for r in records.values() if r.get("step_seconds") is not None]
    return run


@contextmanager
def _global_rng_kept():
    """Run a block that reseeds the global generators (as `seed_everything` does), then restore Python's,
    NumPy's and torch's CPU generator (and Lightning's seed variables) as they were."""
    state = random.getstate(), np.random.get_state(), os.environ.get("PL_GLOBAL_SEED"), os.environ.get("PL_SEED_WORKERS")
    with torch.random.fork_rng(devices=[]):
        yield
    random.setstate(state[0])
    np.random.set_state(state[1])
    for name, value in zip(("PL_GLOBAL_SEED", "PL_SEED_WORKERS"), state[2:]):
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def untrained_model(run: Run, device: str) -> torch.nn.Module:
    """The run's model at its initial weights: `seed_everything(seed)` then `EditorTrainingModule(dit, options)`,
    the calls `liveditor-train` makes, so it equals the run's step-0 weights (random init, or `init_weights`)."""
    import lightning.pytorch as pl

    from liveditor.train.module import EditorTrainingModule, TrainOptions

    seed, init = int(run.config.seed), run.config.get("init_weights")
    if init and not Path(str(init)).expanduser().exists():
        raise LearnEvalError(f"run '{run.label}': init_weights='{init}' (its config.yaml) does not exist: the untrained "
                             "baseline starts from those weights; restore the file")
    with _global_rng_kept():
        pl.seed_everything(seed, workers=True, verbose=False)
        module = EditorTrainingModule(run.dit, TrainOptions(seed=seed, init_weights=str(init) if init else None))
    return module.model.to(device).eval()


def load_checkpoint_model(path: Path, use_ema: bool, device: str) -> torch.nn.Module:
    """The editor DiT of a training checkpoint (its EMA weights with `use_ema`), in eval mode on `device`."""
    from liveditor.models import DiTConfig, EditorDiT
    from liveditor.train.export import ExportError, load_training_checkpoint

    try:
        ckpt = load_training_checkpoint(Path(path))
    except ExportError as exc:
        raise LearnEvalError(str(exc)) from exc
    dit = (ckpt.get("hyper_parameters") or {}).get("dit")
    if dit is None:
        raise LearnEvalError(f"checkpoint '{path}' has no DiT architecture in its hyper-parameters: not written by liveditor-train")
    state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    if use_ema:
        if "ema" not in ckpt:
            raise LearnEvalError(f"checkpoint '{path}' holds no EMA weights: evaluate without use_ema (--ema), or train with ema.decay set")
        state.update(ckpt["ema"]["shadow"])
    with torch.random.fork_rng(devices=[]):  # the constructor's random init draws from the global generator
        model = EditorDiT(DiTConfig.from_dict(dit))
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()


# ---------------------------------------------------------------------------------------- conditions

@dataclass(frozen=True)
class Task:
    """One sampled edit: the pair it belongs to (`key`, whose noise it uses), whose source latents and
    whose instruction it is given, and the pairs whose targets it is scored against `[(label, key)]`."""

    key: str
    condition: str
    source_key: str
    instruction_key: str
    scored: tuple[tuple[str, str], ...]


def plan_tasks(pairs: Sequence[HeldOutPair]) -> tuple[list[Task], list[dict]]:
    """The three conditions of every pair, and the skipped ones `[{key, condition, reason}]`."""
    by_key = {p.key: p for p in pairs}
    clip_pairs: dict[str, list[HeldOutPair]] = {}
    for p in pairs:
        clip_pairs.setdefault(p.clip_id, []).append(p)
    tasks, skipped = [], []
    for p in pairs:
        tasks.append(Task(p.key, "edit", p.key, p.key, (("target", p.key),)))
    for p in pairs:
        shape = tuple(p.source_latents.shape)
        clips = sorted(c for c, ps in clip_pairs.items() if c == p.clip_id or tuple(ps[0].source_latents.shape) == shape)
        if len(clips) < 2:
            reason = ("the held-out set has one clip" if len(clip_pairs) == 1
                      else f"no other held-out clip has source latents of shape {list(shape)}")
            skipped.append({"key": p.key, "condition": "source_swap", "reason": reason})
            continue
        other = clips[(clips.index(p.clip_id) + 1) % len(clips)]
        donor = next((q for q in clip_pairs[other] if q.edit == p.edit), clip_pairs[other][0])
        tasks.append(Task(p.key, "source_swap", donor.key, p.key, (("target", p.key),)))
    for p in pairs:
        edits = sorted({q.edit: q.key for q in clip_pairs[p.clip_id]}.items())
        if len(edits) < 2:
            reason = f"clip '{p.clip_id}' has one edit in the held-out set"
            skipped.append({"key": p.key, "condition": "instruction_swap", "reason": reason})
            continue
        names = [e for e, _ in edits]
        swapped = by_key[edits[(names.index(p.edit) + 1) % len(edits)][1]]
        tasks.append(Task(p.key, "instruction_swap", p.key, swapped.key, (("given_target", swapped.key), ("original_target", p.key))))
    return tasks, skipped


# ---------------------------------------------------------------------------------------- metrics

def latent_rel_error(x_hat: torch.Tensor, x_target: torch.Tensor) -> float:
    """`||x_hat - x_target|| / ||x_target||` over all elements of `[C, F, h, w]` latents, float32."""
    x_hat, x_target = x_hat.float().cpu(), x_target.float().cpu()
    return float(torch.linalg.vector_norm(x_hat - x_target) / torch.linalg.vector_norm(x_target).clamp_min(1e-12))


def psnr(frames: np.ndarray, target: np.ndarray) -> float:
    """PSNR in dB (peak 255) of uint8 `[T, H, W, 3]` frames against the target's: one MSE over all
    pixels of all frames, clamped to at least `MSE_FLOOR` (100 dB at most)."""
    if frames.shape != target.shape:
        raise LearnEvalError(f"decoded frames {list(frames.shape)} and target frames {list(target.shape)} differ in shape: "
                             "the codec is not the one that made the latents")
    mse = float(np.mean((frames.astype(np.float64) - target.astype(np.float64)) ** 2))
    return 10.0 * math.log10(PSNR_PEAK ** 2 / max(mse, MSE_FLOOR))


def to_frames(video: torch.Tensor) -> np.ndarray:
    """Decoded video `[B, 3, T, H, W]` in `[-1, 1]` -> uint8 `[B, T, H, W, 3]` (the inverse of `frames / 127.5 - 1`)."""
    return ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1).cpu().numpy()


def strip_indices(num_frames: int) -> list[int]:
    """First, middle and last frame."""
    return [0, num_frames // 2, num_frames - 1]


# ---------------------------------------------------------------------------------------- evaluation

def _noise(seed: int, key: str, shape: Sequence[int]) -> torch.Tensor:
    """Standard normal `shape`, a pure function of (seed, pair key)."""
    from liveditor.train.module import _seed_of

    return torch.randn(tuple(shape), generator=torch.Generator().manual_seed(_seed_of("learning-eval", seed, key)))


def _padded_texts(texts: Sequence[torch.Tensor]) -> torch.Tensor:
    """`[L_i, D]` -> `[B, max L, D]`, zero-padded (the DiT pads text with zeros to text_len anyway)."""
    length = max(t.shape[0] for t in texts)
    return torch.stack([torch.nn.functional.pad(t, (0, 0, 0, length - t.shape[0])) for t in texts])


def _rows(run: str, step: Optional[int], task: Task, pairs: dict, x_hat: torch.Tensor, frames: np.ndarray, targets: dict) -> list[dict]:
    """Item rows of one output (latents `[C, F, h, w]`, uint8 frames `[T, H, W, 3]`), one per target it is
    scored against; `targets` caches target frames by pair key."""
    p = pairs[task.key]
    out = []
    for label, target_key in task.scored:
        if target_key not in targets:
            targets[target_key] = pairs[target_key].read_frames("tgt")
        out.append({"run": run, "step": step, "key": p.key, "clip_id": p.clip_id, "edit": p.edit, "condition": task.condition,
                    "source_key": task.source_key, "instruction_key": task.instruction_key, "scored_against": label,
                    "latent_rel_error": latent_rel_error(x_hat, pairs[target_key].target_latents),
                    "psnr": psnr(frames, targets[target_key])})
    return out


@torch.no_grad()
def evaluate_model(model: torch.nn.Module, run: str, step: int, pairs: Sequence[HeldOutPair], tasks: Sequence[Task], vae,
                   options: LearnEvalOptions, negative_text: Optional[torch.Tensor] = None) -> tuple[list[dict], dict]:
    """Sample every task with `model` and score it. Returns the rows and, per edit type, the `edit`
    output of its first pair at `strip_indices` (uint8 `[3, H, W, 3]`) for the report's strips."""
    from liveditor.pipeline.sampling import Expert, sample_edit

    by_key = {p.key: p for p in pairs}
    strip_keys = {}
    for p in pairs:
        strip_keys.setdefault(p.edit, p.key)
    rows, strips, targets = [], {}, {}
    negative = None if negative_text is None else negative_text[None].to(options.device)
    for batch, noise, source, text in _task_batches(tasks, by_key, options):
        x_hat = sample_edit([Expert(model)], noise, source, text, negative, steps=options.steps, sampler=options.sampler,
                            shift=options.shift, guidance_scale=options.guidance_scale, progress=False)
        frames = to_frames(vae.decode(x_hat))
        for t, x, f in zip(batch, x_hat.float().cpu(), frames):
            rows.extend(_rows(run, step, t, by_key, x, f, targets))
            p = by_key[t.key]
            if t.condition == "edit" and strip_keys[p.edit] == p.key:
                strips[p.edit] = f[strip_indices(f.shape[0])]
    return rows, strips


def _task_batches(tasks: Sequence[Task], by_key: dict, options: LearnEvalOptions):
    """`(tasks, noise, source latents, text)` on `options.device`, for batches of at most `options.batch_size`
    tasks whose latents share one shape (one model call takes one shape), in the tasks' order within a shape."""
    groups: dict[tuple, list[Task]] = {}
    for t in tasks:
        shape = (tuple(by_key[t.key].target_latents.shape), tuple(by_key[t.source_key].source_latents.shape))
        groups.setdefault(shape, []).append(t)
    device = options.device
    for group in groups.values():
        for start in range(0, len(group), options.batch_size):
            batch = group[start: start + options.batch_size]
            noise = torch.stack([_noise(options.seed, t.key, by_key[t.key].target_latents.shape) for t in batch]).to(device)
            source = torch.stack([by_key[t.source_key].source_latents for t in batch]).to(device)
            text = _padded_texts([by_key[t.instruction_key].text for t in batch]).to(device)
            yield batch, noise, source, text


@torch.no_grad()
def source_coverage(model: torch.nn.Module, pairs: Sequence[HeldOutPair], options: LearnEvalOptions) -> Optional[dict]:
    """How much of its source an ISA editor can attend exactly, on the held-out pairs; None for dense models.

    One forward per pair and noise level `s` in `COVERAGE_SIGMAS` on its own source and instruction, the target
    noised as in training (`(1 - s) x_0 + s e`, `e` the pair's evaluation noise, timestep `1000 s`); coverage
    is the fraction of source blocks that some (block, head) of that forward keeps
    (`liveditor.isa.context_coverage`). The rest reach the target only through their block means. None
    also when no block of the model returns a plan.
    """
    from liveditor.isa import context_coverage

    if getattr(model.config, "attention", None) != "isa":
        return None
    values: dict[float, list[float]] = {s: [] for s in COVERAGE_SIGMAS}
    by_key = {p.key: p for p in pairs}
    edits = [t for t in plan_tasks(pairs)[0] if t.condition == "edit"]  # each pair's own source and instruction
    counts = None
    for batch, noise, source, text in _task_batches(edits, by_key, options):
        x0 = torch.stack([by_key[t.key].target_latents for t in batch]).to(options.device)
        for sigma in COVERAGE_SIGMAS:
            timestep = torch.full((len(batch),), 1000.0 * sigma, device=options.device)
            _, plans = model((1 - sigma) * x0 + sigma * noise, timestep, text, source, return_plans=True)
            plans = [q for q in plans if q is not None]
            if not plans:  # no block planned (a stand-in model, or every block dense)
                return None
            values[sigma].extend(context_coverage(plans).tolist())
            if counts is None:
                counts = {"selections": sum(int(q.kept_context_blocks.shape[1]) for q in plans),
                          "kept_per_selection": int(plans[0].kept_context_blocks.shape[-1]),
                          "source_blocks": int(plans[0].context_saliency.shape[-1])}
    flat = [v for vs in values.values() for v in vs]
    bound = min(1.0, counts["selections"] * counts["kept_per_selection"] / max(counts["source_blocks"], 1))
    return {"mean": float(np.mean(flat)), "min": float(np.min(flat)), "pairs": len(pairs),
            "by_sigma": {f"{s:g}": float(np.mean(v)) for s, v in values.items()}, **counts, "upper_bound": bound}


@torch.no_grad()
def evaluate_baseline(name: str, pairs: Sequence[HeldOutPair], vae, prior: Optional[torch.Tensor]) -> list[dict]:
    """Rows of a model-free baseline (condition `edit`): identity, zeros or prior (`prior` `[C, F, h, w]`)."""
    by_key = {p.key: p for p in pairs}
    rows, targets, decoded = [], {}, {}
    for p in pairs:
        shape = tuple(p.target_latents.shape)
        if name == "identity":
            x_hat, frames = p.source_latents, p.read_frames("src")
        else:
            if name == "zeros":
                x_hat = torch.zeros(shape)
            else:
                x_hat = resample(prior, shape)
            if shape not in decoded:  # the same output for every pair of a shape
                decoded[shape] = to_frames(vae.decode(x_hat[None].to(vae.device)))[0]
            frames = decoded[shape]
        task = Task(p.key, "edit", p.key if name == "identity" else None, None, (("target", p.key),))
        rows.extend(_rows(name, None, task, by_key, x_hat, frames, targets))
    return rows


# ---------------------------------------------------------------------------------------- parts

def part_path(out_dir: Path, run: str, step: Optional[int]) -> Path:
    """`parts/<run>/step-XXXXXXX.parquet`, or `parts/baselines/<name>.parquet` (step None)."""
    return out_dir / "parts" / "baselines" / f"{run}.parquet" if step is None else out_dir / "parts" / run / f"step-{step:07d}.parquet"


def strips_path(part: Path) -> Path:
    return part.with_name(part.stem + ".frames.npz")


def coverage_path(part: Path) -> Path:
    return part.with_name(part.stem + ".coverage.json")


def read_coverage(part: Path) -> Optional[dict]:
    path = coverage_path(part)
    return json.loads(path.read_text()) if path.exists() else None


def write_part(path: Path, rows: list[dict], strips: Optional[dict] = None, coverage: Optional[dict] = None) -> None:
    """The frames and the source coverage first, then the rows: a part counts as done when its parquet exists."""
    import pyarrow.parquet as pq

    if coverage is not None:
        atomic_write_json(coverage_path(path), coverage)
    if strips is not None:
        with atomic_target(strips_path(path), suffix=".partial.npz") as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, **strips)
    table = pa.Table.from_pylist(rows, schema=PART_SCHEMA)
    with atomic_target(path) as tmp:
        pq.write_table(table, tmp)


def read_strips(part: Path) -> dict:
    path = strips_path(part)
    if not path.exists():
        return {}
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def check_out_dir(out_dir: Path, record: dict) -> None:
    """Refuse to add to an `out_dir` whose parts were made with other options, inputs or run directories."""
    path = out_dir / "config.json"
    if path.exists():
        old = json.loads(path.read_text())
        changed = [k for k in ("options", "inputs") if old.get(k) != record[k]]
        changed += [f"runs.{k}" for k in sorted(set(old.get("runs", {})) & set(record["runs"])) if old["runs"][k] != record["runs"][k]]
        if changed:
            raise LearnEvalError(f"out_dir='{out_dir}' holds results made with other {', '.join(changed)}: "
                                 "choose another out_dir, or delete it to start afresh")
        record = dict(record, runs={**old.get("runs", {}), **record["runs"]})
    atomic_write_json(path, record)


# ---------------------------------------------------------------------------------------- summary

def _mean(rows: Sequence[dict], column: str) -> Optional[float]:
    values = [r[column] for r in rows if r[column] is not None]
    return float(np.mean(values)) if values else None


def _metrics(rows: Sequence[dict]) -> dict:
    return {"psnr": _mean(rows, "psnr"), "latent_rel_error": _mean(rows, "latent_rel_error"), "items": len(rows)}


def _per_edit(rows: Sequence[dict]) -> dict:
    """`{"per_edit": {edit: metrics}, "mean": metrics over all rows}` (means over items)."""
    edits = sorted({r["edit"] for r in rows})
    return {"per_edit": {e: _metrics([r for r in rows if r["edit"] == e]) for e in edits}, "mean": _metrics(rows)}


def _select(rows, **match) -> list[dict]:
    return [r for r in rows if all(r[k] == v for k, v in match.items())]


def _swaps(rows: Sequence[dict], skipped: Sequence[dict]) -> tuple[dict, dict]:
    """Source-swap and instruction-swap results of one (run, step)'s rows."""
    edit, swap = _select(rows, condition="edit"), _select(rows, condition="source_swap")
    if swap:
        keys = {r["key"] for r in swap}
        base = [r for r in edit if r["key"] in keys]
        source = {"items": len(swap), "edit": _metrics(base), "source_swap": _metrics(swap),
                  "per_edit": {e: {"edit": _metrics(_select(base, edit=e)), "source_swap": _metrics(_select(swap, edit=e))}
                               for e in sorted({r["edit"] for r in swap})}}
    else:
        source = {"items": 0, "skipped": sorted({s["reason"] for s in skipped if s["condition"] == "source_swap"}) or ["no rows"]}
    given = {r["key"]: r for r in _select(rows, condition="instruction_swap", scored_against="given_target")}
    original = {r["key"]: r for r in _select(rows, condition="instruction_swap", scored_against="original_target")}
    keys = sorted(set(given) & set(original))
    if keys:
        follows = sum(given[k]["latent_rel_error"] < original[k]["latent_rel_error"] for k in keys)
        psnr_follows = sum(given[k]["psnr"] > original[k]["psnr"] for k in keys)
        instruction = {"items": len(keys), "follows": int(follows), "follow_rate": follows / len(keys),
                       "psnr_follow_rate": psnr_follows / len(keys),
                       "given_target": _metrics([given[k] for k in keys]), "original_target": _metrics([original[k] for k in keys])}
    else:
        instruction = {"items": 0, "skipped": sorted({s["reason"] for s in skipped if s["condition"] == "instruction_swap"}) or ["no rows"]}
    return source, instruction


def _first_reaching(curve: Sequence[dict], level: Optional[float]) -> tuple[Optional[int], Optional[float]]:
    """(step, wall_s) of the first checkpoint whose mean PSNR is at least `level`."""
    for point in curve:
        if level is not None and point["step"] > UNTRAINED_STEP and point["psnr"] is not None and point["psnr"] >= level:
            return point["step"], point["wall_s"]
    return None, None


def summarise(rows: Sequence[dict], runs: Sequence[Run], pairs: Sequence[HeldOutPair], skipped: Sequence[dict],
              notes: Sequence[str], prior_info: dict, options: LearnEvalOptions, coverage: Optional[dict] = None) -> dict:
    """The summary.json dict (see the module docstring and docs/evaluation.md). `coverage`: `source_coverage`
    per `(run, step)`, None for dense runs and for parts evaluated before it was recorded."""
    coverage = coverage or {}
    summary = {
        "options": asdict(options),
        "heldout": {"pairs": len(pairs), "clips": sorted({p.clip_id for p in pairs}), "edits": sorted({p.edit for p in pairs})},
        "prior": prior_info, "notes": list(notes), "skipped": list(skipped),
        "metrics": {"psnr": f"dB, peak 255, MSE clamped to >= {MSE_FLOOR:.3g} (100 dB at most)",
                    "latent_rel_error": "||x_hat - x_target|| / ||x_target|| on normalised latents"},
        "baselines": {b: _per_edit(_select(rows, run=b)) for b in BASELINES},
        "runs": {},
    }
    for run in runs:
        mine = _select(rows, run=run.label)
        steps = sorted({r["step"] for r in mine})
        final = max(steps)
        at_final = _select(mine, step=final)
        source, instruction = _swaps(at_final, skipped)
        curve = []
        for s in steps:
            edit_rows = _select(mine, step=s, condition="edit")
            cov = coverage.get((run.label, s))
            curve.append({"step": s, "wall_s": run.wall_at(s), **{k: v for k, v in _metrics(edit_rows).items() if k != "items"},
                          "source_coverage": cov["mean"] if cov else None})
        summary["runs"][run.label] = {
            "run_dir": str(run.run_dir), "attention": run.dit.attention, "steps": steps, "final_step": final,
            "final_wall_s": run.wall_at(final), "final": _per_edit(_select(at_final, condition="edit")),
            "untrained": _per_edit(_select(mine, step=UNTRAINED_STEP, condition="edit")),
            "source_swap": source, "instruction_swap": instruction, "curve": curve,
            "step_seconds_median": statistics.median(run.step_seconds) if run.step_seconds else None,
            "source_coverage": coverage.get((run.label, final)),
            "untrained_source_coverage": coverage.get((run.label, UNTRAINED_STEP)),
        }
    if "isa" in summary["runs"] and "dense" in summary["runs"]:
        summary["isa_vs_dense"] = isa_vs_dense(summary["runs"]["isa"], summary["runs"]["dense"])
    return summary


def isa_vs_dense(isa: dict, dense: dict) -> dict:
    """The claim under test: ISA matches dense at equal steps and gets there sooner in wall-clock.
    PSNR ratios are isa/dense of mean PSNR (dB); the step-time ratio is dense/isa of median `step_seconds`."""
    def ratio(a, b):
        return None if a is None or b is None or b == 0 else a / b

    dense_curve, isa_curve = {p["step"]: p for p in dense["curve"]}, {p["step"]: p for p in isa["curve"]}
    common = sorted(s for s in set(dense_curve) & set(isa_curve) if s > UNTRAINED_STEP)
    target = dense["final"]["mean"]["psnr"]
    reach = {name: dict(zip(("step", "wall_s"), _first_reaching(r["curve"], target))) for name, r in (("isa", isa), ("dense", dense))}
    return {
        "psnr_ratio_by_step": [{"step": s, "isa_psnr": isa_curve[s]["psnr"], "dense_psnr": dense_curve[s]["psnr"],
                                "ratio": ratio(isa_curve[s]["psnr"], dense_curve[s]["psnr"])} for s in common],
        "final": {"isa_step": isa["final_step"], "dense_step": dense["final_step"], "isa_psnr": isa["final"]["mean"]["psnr"],
                  "dense_psnr": target, "psnr_ratio": ratio(isa["final"]["mean"]["psnr"], target)},
        "dense_final_psnr": target, "reaches_dense_final_psnr": reach,
        "step_seconds_median": {"isa": isa["step_seconds_median"], "dense": dense["step_seconds_median"]},
        "step_time_ratio_dense_over_isa": ratio(dense["step_seconds_median"], isa["step_seconds_median"]),
    }


# How much larger the mean latent error must be with another clip's source for "the editor reads its source"
# (docs/benchmarks.md, learning benchmark): editors that read it measured +12% (ISA keeping half the source
# blocks) to +99% (dense, 3,000 steps); ISA at keep 1/8, which stays at the prior, -0.3% to +3.8%.
MIN_SOURCE_SWAP_RATIO = 1.10


def check_learning(summary: dict, run: str, min_gain_db: float = 3.0, per_edit: bool = True, min_follow_rate: float = 0.8,
                   min_margin_db: float = 0.0, min_source_swap_ratio: float = MIN_SOURCE_SWAP_RATIO) -> list[str]:
    """The claims a trained editor must meet, on its final checkpoint; returns the failed ones, one line each.

    - its PSNR beats the identity baseline's by at least `min_gain_db` on every edit type (`per_edit`),
      or on the mean over all pairs;
    - its mean PSNR beats the untrained model's and the prior's by more than `min_margin_db`;
    - swapping in another clip's source raises the mean latent error to at least `min_source_swap_ratio`
      times its own (the editor reads its source; a rise within noise is not reading it);
    - under an instruction swap, the output is closer (latent error) to the target of the instruction
      it was given than to the original target on at least `min_follow_rate` of the pairs.
    A claim that could not be measured (a skipped condition, a missing baseline) is a failure too.
    """
    if run not in summary.get("runs", {}):
        raise LearnEvalError(f"run {run!r} is not in the summary (runs: {sorted(summary.get('runs', {}))})")
    r, base = summary["runs"][run], summary["baselines"]
    at = f"'{run}' at step {r['final_step']}"
    failed = []

    def gain(name: str, mine: Optional[float], theirs: Optional[float], needed: float, strict: bool) -> None:
        if mine is None or theirs is None:
            failed.append(f"{name}: not measured ({at}: {mine}, baseline: {theirs})")
            return
        margin = mine - theirs
        ok = margin > needed if strict else margin >= needed
        if not ok:
            failed.append(f"{name}: {at} {mine:.2f} dB vs {theirs:.2f} dB, gain {margin:+.2f} dB, needs "
                          f"{'>' if strict else '>='} {needed:.2f} dB (short by {needed - margin:.2f} dB)")

    identity = base.get("identity", {})
    if per_edit:
        for edit in sorted(set(r["final"]["per_edit"]) | set(identity.get("per_edit", {}))):
            mine = r["final"]["per_edit"].get(edit, {}).get("psnr")
            gain(f"psnr over identity on edit '{edit}'", mine, identity.get("per_edit", {}).get(edit, {}).get("psnr"), min_gain_db, False)
    else:
        gain("mean psnr over identity", r["final"]["mean"]["psnr"], identity.get("mean", {}).get("psnr"), min_gain_db, False)
    gain("mean psnr over the untrained model", r["final"]["mean"]["psnr"], r["untrained"]["mean"]["psnr"], min_margin_db, True)
    gain("mean psnr over the prior", r["final"]["mean"]["psnr"], base.get("prior", {}).get("mean", {}).get("psnr"), min_margin_db, True)

    swap = r["source_swap"]
    if not swap.get("items"):
        failed.append(f"source swap: not measured ({'; '.join(swap.get('skipped', []))})")
    else:
        a, b = swap["edit"]["latent_rel_error"], swap["source_swap"]["latent_rel_error"]
        if not (b > a and b >= min_source_swap_ratio * a):
            failed.append(f"source swap latent_rel_error: {at} {b:.4f} with another clip's source vs {a:.4f} with its own "
                          f"(x{b / a if a > 0 else float('inf'):.3f}), needs >= x{min_source_swap_ratio:.2f} over {swap['items']} pairs")
    follow = r["instruction_swap"]
    if not follow.get("items"):
        failed.append(f"instruction swap: not measured ({'; '.join(follow.get('skipped', []))})")
    elif follow["follow_rate"] < min_follow_rate:
        failed.append(f"instruction swap follow rate: {at} {follow['follow_rate']:.2f} ({follow['follows']}/{follow['items']} pairs "
                      f"closer to the given instruction's target), needs >= {min_follow_rate:.2f} "
                      f"(short by {min_follow_rate - follow['follow_rate']:.2f})")
    return failed


# ---------------------------------------------------------------------------------------- tables and report

def _write_table(table: pa.Table, path: Path) -> None:
    """A table as CSV or Parquet (by suffix), atomically."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    with atomic_target(path, suffix=".partial" + path.suffix) as tmp:
        if path.suffix == ".csv":
            pacsv.write_csv(table, tmp)
        else:
            pq.write_table(table, tmp)


def curve_rows(rows: Sequence[dict], runs: Sequence[Run]) -> list[dict]:
    """Mean metrics of the `edit` condition per (run, step, edit type), plus an `all` row per step."""
    out = []
    for run in runs:
        mine = _select(rows, run=run.label, condition="edit")
        for step in sorted({r["step"] for r in mine}):
            at = _select(mine, step=step)
            for edit in sorted({r["edit"] for r in at}) + ["all"]:
                sel = at if edit == "all" else _select(at, edit=edit)
                out.append({"run": run.label, "step": step, "wall_s": run.wall_at(step), "edit": edit, **_metrics(sel)})
    return out


def report_table(summary: dict) -> tuple[list[str], list[list]]:
    """The metrics table: one row per (metric, edit type or `all`); columns the baselines, then per run
    its untrained model and its final checkpoint."""
    runs = list(summary["runs"])
    header = ["metric", "edit", *BASELINES] + [c for r in runs for c in (f"untrained:{r}", r)]
    edits = summary["heldout"]["edits"] + ["all"]

    def cell(block: dict, edit: str, metric: str):
        entry = block["mean"] if edit == "all" else block["per_edit"].get(edit, {})
        return entry.get(metric)

    body = []
    for metric in ("psnr", "latent_rel_error"):
        for edit in edits:
            row = [metric, edit] + [cell(summary["baselines"][b], edit, metric) for b in BASELINES]
            for r in runs:
                row += [cell(summary["runs"][r]["untrained"], edit, metric), cell(summary["runs"][r]["final"], edit, metric)]
            body.append(row)
    for metric, side in (("source_swap_latent_rel_error", "source_swap"), ("own_source_latent_rel_error", "edit")):
        row = [metric, "all"] + [None] * len(BASELINES)
        for r in runs:
            swap = summary["runs"][r]["source_swap"]
            row += [None, swap[side]["latent_rel_error"] if swap.get("items") else None]
        body.append(row)
    row = ["instruction_swap_follow_rate", "all"] + [None] * len(BASELINES)
    for r in runs:
        follow = summary["runs"][r]["instruction_swap"]
        row += [None, follow["follow_rate"] if follow.get("items") else None]
    body.append(row)
    if any(summary["runs"][r].get("source_coverage") for r in runs):  # ISA runs: the share of source blocks any head keeps
        row = ["isa_source_coverage", "all"] + [None] * len(BASELINES)
        for r in runs:
            row += [(summary["runs"][r].get(k) or {}).get("mean") for k in ("untrained_source_coverage", "source_coverage")]
        body.append(row)
    return header, body


def _fmt(value) -> str:
    return "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def _png(fig) -> str:
    """A matplotlib figure as a base64 PNG (and closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(summary: dict) -> str:
    """Mean PSNR against step and against training wall-clock for every run, with the identity, prior
    and untrained levels as horizontal lines; base64 PNG."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    levels = [(b, summary["baselines"][b]["mean"]["psnr"], "k", ls) for b, ls in (("identity", ":"), ("prior", "-."))]
    for i, (name, r) in enumerate(summary["runs"].items()):
        c = colours[i % len(colours)]
        levels.append((f"untrained ({name})", r["untrained"]["mean"]["psnr"], c, "--"))
        points = [p for p in r["curve"] if p["psnr"] is not None]
        axes[0].plot([p["step"] for p in points], [p["psnr"] for p in points], "o-", color=c, label=name)
        timed = [p for p in points if p["wall_s"] is not None]
        if timed:
            axes[1].plot([p["wall_s"] for p in timed], [p["psnr"] for p in timed], "o-", color=c, label=name)
    for ax, xlabel in zip(axes, ("checkpoint step", "training wall-clock (s, sum of step_seconds)")):
        for label, level, c, ls in levels:
            if level is not None:
                ax.axhline(level, color=c, linestyle=ls, linewidth=1, label=label)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("mean PSNR (dB), held-out edits")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if not any(p["wall_s"] is not None and p["step"] > 0 for r in summary["runs"].values() for p in r["curve"]):
        axes[1].text(0.5, 0.5, "no step_seconds in the runs' sample logs", transform=axes[1].transAxes, ha="center")
    fig.tight_layout()
    return _png(fig)


def plot_strip(rows: Sequence[tuple[str, np.ndarray]]) -> str:
    """Labelled rows of 3 frames (uint8 `[3, H, W, 3]` each), upscaled by nearest neighbour to a short
    side of at least `STRIP_MIN_SIDE` px; base64 PNG."""
    plt = _pyplot()
    h, w = rows[0][1].shape[1:3]
    scale = max(1, math.ceil(STRIP_MIN_SIDE / min(h, w)))
    dpi = 100
    fig, axes = plt.subplots(len(rows), 3, figsize=(3 * (w * scale + 20) / dpi + 1.6, len(rows) * (h * scale + 24) / dpi + 0.3),
                             dpi=dpi, squeeze=False)
    for i, (label, frames) in enumerate(rows):
        for j, (frame, name) in enumerate(zip(frames, ("first", "middle", "last"))):
            ax = axes[i][j]
            ax.imshow(frame.repeat(scale, 0).repeat(scale, 1), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"{name} frame", fontsize=8)
            if j == 0:
                ax.set_ylabel(label, fontsize=8, rotation=0, ha="right", va="center")
    fig.tight_layout()
    return _png(fig)


def strip_rows(edit: str, pair: HeldOutPair, summary: dict, strips: dict) -> list[tuple[str, np.ndarray]]:
    """Rows of one edit type's strip: source, target, each run's final edit, each run's untrained edit."""
    idx = strip_indices(pair.frames)
    rows = [("source", pair.read_frames("src")[idx]), ("target", pair.read_frames("tgt")[idx])]
    for name, r in summary["runs"].items():
        for step, label in ((r["final_step"], f"{name} @ {r['final_step']}"), (UNTRAINED_STEP, f"untrained ({name})")):
            frames = strips.get((name, step), {}).get(edit)
            if frames is not None:
                rows.append((label, frames))
    return rows


def _bullets(summary: dict) -> dict[str, list[tuple[str, list[str]]]]:
    """The report's lists, `{section: [(line, sub-lines)]}`: checks per run, ISA against dense, notes."""
    out = {"Checks (check_learning with its defaults)": []}
    for run in summary["runs"]:
        failed = check_learning(summary, run)
        out["Checks (check_learning with its defaults)"].append((f"{run}: " + ("FAIL" if failed else "pass"), failed))
    if "isa_vs_dense" in summary:
        c = summary["isa_vs_dense"]
        reach, final = c["reaches_dense_final_psnr"], c["final"]
        by_step = ", ".join(f"{p['step']}: {_fmt(p['ratio'])}" for p in c["psnr_ratio_by_step"])
        out["ISA against dense"] = [(line, []) for line in (
            f"PSNR ratio isa/dense by step: {by_step or 'no common step'}",
            f"final PSNR ratio isa/dense: {_fmt(final['psnr_ratio'])} (isa step {final['isa_step']}, dense step {final['dense_step']})",
            f"wall-clock (s) to reach the dense run's final PSNR {_fmt(c['dense_final_psnr'])} dB: "
            f"isa {_fmt(reach['isa']['wall_s']) or 'never'}, dense {_fmt(reach['dense']['wall_s']) or 'never'}",
            f"step-time ratio dense/isa (median step_seconds): {_fmt(c['step_time_ratio_dense_over_isa']) or 'unknown'}")]
    notes = list(summary["notes"]) + [f"{s['condition']} skipped for {s['key']}: {s['reason']}" for s in summary["skipped"]]
    if notes:
        out["Notes"] = [(n, []) for n in notes]
    return out


def write_report(out_dir: Path, summary: dict, pairs: Sequence[HeldOutPair], strips: dict) -> None:
    """`report.csv` (the metrics table), `report.md` and the self-contained `report.html`."""
    header, body = report_table(summary)
    schema = pa.schema([(h, pa.string() if h in ("metric", "edit") else pa.float64()) for h in header])
    _write_table(pa.Table.from_pylist([dict(zip(header, row)) for row in body], schema=schema), out_dir / "report.csv")
    intro = (f"{summary['heldout']['pairs']} held-out pairs, clips {', '.join(summary['heldout']['clips'])}, edits "
             f"{', '.join(summary['heldout']['edits'])}. Columns: the baselines, then per run its untrained model and its final "
             "checkpoint. PSNR in dB against the pairs' tgt.mp4 (100 dB at most); latent error relative, on normalised latents.")
    bullets = _bullets(summary)
    lines = ["# Learning benchmark", "", intro, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in body]
    for title, items in bullets.items():
        lines += ["", f"## {title}", ""]
        for line, sub in items:
            lines += [f"- {line}"] + [f"  - {x}" for x in sub]
    lines += ["", "Curves and frames: report.html."]
    atomic_write_text(out_dir / "report.md", "\n".join(lines) + "\n")

    esc = html.escape
    table = "<table><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr></thead><tbody>"
    table += "".join("<tr>" + "".join(f"<td>{esc(_fmt(v))}</td>" for v in row) + "</tr>" for row in body) + "</tbody></table>"
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>Learning benchmark</title><style>"
             "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;"
             "font-size:13px}</style></head><body><h1>Learning benchmark</h1>", f"<p>{esc(intro)}</p>",
             "<h2>Curves</h2>", f"<img alt='mean PSNR against step and wall-clock' src='data:image/png;base64,{plot_curves(summary)}'>",
             "<h2>Frames (the first pair of each edit type)</h2>"]
    first = {}
    for p in pairs:
        first.setdefault(p.edit, p)
    for edit, pair in sorted(first.items()):
        png = plot_strip(strip_rows(edit, pair, summary, strips))
        parts += [f"<h3>{esc(edit)}: {esc(pair.key)}</h3>", f"<img alt='frames of {esc(edit)}' src='data:image/png;base64,{png}'>"]
    parts += ["<h2>Metrics</h2>", table]
    for title, items in bullets.items():
        parts.append(f"<h2>{esc(title)}</h2><ul>" + "".join(
            f"<li>{esc(line)}" + ("<ul>" + "".join(f"<li>{esc(x)}</li>" for x in sub) + "</ul>" if sub else "") + "</li>"
            for line, sub in items) + "</ul>")
    parts.append("</body></html>")
    atomic_write_text(out_dir / "report.html", "\n".join(parts) + "\n")


# ---------------------------------------------------------------------------------------- the job

def _negative_text(heldout_dir: Path, options: LearnEvalOptions) -> Optional[torch.Tensor]:
    """The negative prompt's embedding `[L, D]` when guidance is on (precompute's text_defaults)."""
    if options.guidance_scale == 1.0:
        return None
    from safetensors.torch import load_file

    from liveditor.train.precompute import TEXT_DEFAULTS_NAME

    path = heldout_dir / TEXT_DEFAULTS_NAME
    if not path.exists():
        raise LearnEvalError(f"guidance_scale={options.guidance_scale} needs the negative prompt's embedding, '{path}' is missing: "
                             "rerun liveditor-precompute, or use guidance_scale=1.0")
    return load_file(str(path))["negative"].float()


def _check_options(options: LearnEvalOptions) -> None:
    from liveditor.pipeline.sampling import SAMPLERS

    if options.sampler not in SAMPLERS:
        raise LearnEvalError(f"sampler={options.sampler!r}: choose one of {SAMPLERS}")
    if options.checkpoints not in ("all", "last"):
        raise LearnEvalError(f"checkpoints={options.checkpoints!r}: choose all or last")
    if options.steps < 1 or options.batch_size < 1:
        raise LearnEvalError(f"steps={options.steps} and batch_size={options.batch_size} must be >= 1")


def evaluate_learning(heldout_dir, train_dir, codec_dir, runs: dict, out_dir, options: LearnEvalOptions = LearnEvalOptions(),
                      progress: bool = True) -> dict:
    """Score every checkpoint of every run (and the baselines) on the held-out pairs; write the tables,
    `summary.json` and the report into `out_dir`; returns the summary (see the module docstring)."""
    from tqdm.auto import tqdm

    _check_options(options)
    if not runs:
        raise LearnEvalError("no runs given: pass at least one label -> liveditor-train run_dir")
    heldout_dir, train_dir, out_dir = Path(heldout_dir), Path(train_dir), Path(out_dir)
    heldout_index, train_index = _read_index(heldout_dir, "heldout_dir"), _read_index(train_dir, "train_dir")
    check_encoders(heldout_index, train_index, heldout_dir, train_dir)
    opened = [open_run(label, run_dir, options.checkpoints) for label, run_dir in runs.items()]
    vae = load_codec(codec_dir, options.device)
    for run in opened:
        if run.dit.in_dim != vae.z_dim or run.dit.out_dim != vae.z_dim:
            raise LearnEvalError(f"codec_dir='{codec_dir}' makes latents of {vae.z_dim} channels, run '{run.label}' takes "
                                 f"in_dim={run.dit.in_dim} / out_dim={run.dit.out_dim}: pass the codec the run was trained on")
    codec_fingerprint = check_codec(codec_dir, heldout_index)
    text_dims = {run.dit.text_dim for run in opened}
    if len(text_dims) > 1:
        raise LearnEvalError(f"the runs take text embeddings of different widths {sorted(text_dims)}: evaluate them separately")
    from liveditor.train.shards import sha256_file

    check_out_dir(out_dir, {"options": options.identity(),
                            "inputs": {"heldout_index_sha256": sha256_file(heldout_dir / "index.json"),
                                       "train_index_sha256": sha256_file(train_dir / "index.json"), "codec_vae": codec_fingerprint},
                            "runs": {r.label: str(r.run_dir) for r in opened}})
    prior, prior_info, train_clips = train_prior(train_dir, train_index)
    notes = []
    with tempfile.TemporaryDirectory(prefix="liveditor-learning-") as media:
        pairs = load_heldout(heldout_dir, Path(media), vae.z_dim, text_dims.pop())
        overlap = sorted({p.clip_id for p in pairs} & train_clips)
        if overlap:
            notes.append(f"held-out clips also in the training set: {overlap} (the benchmark needs whole clips held out)")
            log.warning(notes[-1])
        if prior_info["resampled_pairs"]:
            notes.append(f"prior: {prior_info['resampled_pairs']} training targets of other shapes were resampled (trilinear) "
                         f"to the most common shape {prior_info['shape']}")
        for shape in sorted({tuple(p.target_latents.shape) for p in pairs} - {tuple(prior.shape)}):
            notes.append(f"prior: the training targets' mean {list(prior.shape)} is resampled (trilinear) to the held-out "
                         f"shape {list(shape)}")
        tasks, skipped = plan_tasks(pairs)
        negative = _negative_text(heldout_dir, options)

        jobs = [(b, None) for b in BASELINES] + [(r.label, s) for r in opened for s in [UNTRAINED_STEP] + [c for c, _ in r.checkpoints]]
        todo = [j for j in jobs if not part_path(out_dir, *j).exists()]
        log.info("learning eval: %d evaluations, %d done before, %d to run", len(jobs), len(jobs) - len(todo), len(todo))
        bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc="learning eval", unit="eval", disable=not progress)
        by_label = {r.label: r for r in opened}
        for name, step in todo:
            bar.set_postfix_str(name if step is None else f"{name}@{step}")
            if step is None:
                write_part(part_path(out_dir, name, None), evaluate_baseline(name, pairs, vae, prior))
            else:
                run = by_label[name]
                model = (untrained_model(run, options.device) if step == UNTRAINED_STEP
                         else load_checkpoint_model(dict(run.checkpoints)[step], options.use_ema, options.device))
                rows, strips = evaluate_model(model, name, step, pairs, tasks, vae, options, negative)
                write_part(part_path(out_dir, name, step), rows, strips, source_coverage(model, pairs, options))
                del model
            bar.update(1)
        bar.close()

        import pyarrow.parquet as pq

        rows = [r for j in jobs for r in pq.read_table(part_path(out_dir, *j)).to_pylist()]
        strips = {j: read_strips(part_path(out_dir, *j)) for j in jobs if j[1] is not None}
        order = {name: i for i, name in enumerate(dict.fromkeys(name for name, _ in jobs))}
        rows.sort(key=lambda r: (order[r["run"]], -1 if r["step"] is None else r["step"], r["key"],
                                 CONDITIONS.index(r["condition"]), r["scored_against"]))
        for r in rows:
            r["wall_s"] = None if r["step"] is None else by_label[r["run"]].wall_at(r["step"])
        if any(r.wall_at(step) is None for r in opened for step, _ in r.checkpoints):
            notes.append("some checkpoints have no training wall-clock: their runs' samples.rank0.jsonl lacks step_seconds")
        items = pa.Table.from_pylist([{c: r[c] for c in ITEM_COLUMNS} for r in rows], schema=ITEM_SCHEMA)
        _write_table(items, out_dir / "items.parquet")
        _write_table(items, out_dir / "items.csv")
        _write_table(pa.Table.from_pylist(curve_rows(rows, opened), schema=CURVE_SCHEMA), out_dir / "curves.csv")
        coverage = {j: read_coverage(part_path(out_dir, *j)) for j in jobs if j[1] is not None}
        summary = summarise(rows, opened, pairs, skipped, notes, prior_info, options, coverage)
        atomic_write_json(out_dir / "summary.json", summary)
        write_report(out_dir, summary, pairs, strips)
    return summary


# ---------------------------------------------------------------------------------------- CLI

def main(argv=None) -> int:
    """`python -m liveditor.eval.learning ...`: exit 0, 1 when a `--check` run fails a claim, 2 on bad input."""
    p = argparse.ArgumentParser(prog="python -m liveditor.eval.learning", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--heldout", required=True, help="latent shard folder of the held-out pairs (media kept)")
    p.add_argument("--train", required=True, help="latent shard folder the runs were trained on (for the prior baseline)")
    p.add_argument("--codec", required=True, help="the Wan directory whose vae/ made the latents (encoders.path of liveditor-precompute)")
    p.add_argument("--run", action="append", default=[], metavar="LABEL=RUN_DIR", help="a liveditor-train run directory (repeat)")
    p.add_argument("--out", required=True, help="output folder (rerun the same command to resume)")
    d = LearnEvalOptions()
    p.add_argument("--steps", type=int, default=d.steps, help=f"sampling steps per edit (default {d.steps})")
    p.add_argument("--sampler", default=d.sampler, choices=("euler", "unipc"), help=f"default {d.sampler}")
    p.add_argument("--shift", type=float, default=d.shift, help=f"sampling shift; the runs' timesteps.shift is natural (default {d.shift})")
    p.add_argument("--guidance-scale", type=float, default=d.guidance_scale, help="1.0: no classifier-free guidance (default)")
    p.add_argument("--seed", type=int, default=d.seed, help="noise seed (default 0)")
    p.add_argument("--device", default=d.device, help="cpu or cuda (default cpu)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"edits per sampling call (default {d.batch_size})")
    p.add_argument("--checkpoints", default=d.checkpoints, choices=("all", "last"), help="score every checkpoint or the newest")
    p.add_argument("--ema", action="store_true", help="sample the checkpoints' EMA weights")
    p.add_argument("--check", action="append", default=[], metavar="LABEL", help="exit 1 unless this run passes check_learning (repeat)")
    p.add_argument("--min-gain-db", type=float, default=3.0, help="--check: PSNR gain over identity needed per edit type (default 3)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    from liveditor.models import CheckpointError
    from liveditor.pipeline.components import ComponentError
    from liveditor.train.shards import ShardError
    from liveditor.video import VideoError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        runs = {}
        for spec in args.run:
            label, sep, path = spec.partition("=")
            if not sep or not label or not path:
                raise LearnEvalError(f"--run {spec!r}: give LABEL=RUN_DIR, e.g. --run isa=outputs/train/isa")
            runs[label] = Path(path)
        unknown = [c for c in args.check if c not in runs]
        if unknown:
            raise LearnEvalError(f"--check {unknown[0]}: not a --run label ({sorted(runs)})")
        options = LearnEvalOptions(steps=args.steps, sampler=args.sampler, shift=args.shift, guidance_scale=args.guidance_scale,
                                   seed=args.seed, device=args.device, batch_size=args.batch_size, checkpoints=args.checkpoints,
                                   use_ema=args.ema)
        summary = evaluate_learning(args.heldout, args.train, args.codec, runs, args.out, options, progress=not args.no_progress)
    except (LearnEvalError, ShardError, ComponentError, CheckpointError, VideoError) as exc:  # bad inputs, named in the message
        print(f"liveditor.eval.learning: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}/report.html, summary.json, items.parquet, curves.csv")
    status = 0
    for label in args.check:
        failed = check_learning(summary, label, min_gain_db=args.min_gain_db)
        print(f"{label}: " + ("pass" if not failed else "FAIL"))
        for line in failed:
            print(f"  {line}")
        status = status or (1 if failed else 0)
    return status


if __name__ == "__main__":
    sys.exit(main())
