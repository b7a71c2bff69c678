"""The learning benchmark (liveditor.eval.learning): tables with a row per run, step, pair and
condition; baselines computed from the media; the untrained baseline is a run's step-0 weights; an
oracle editor passes check_learning while a copy-the-source editor fails it; a rerun after an
interruption evaluates only what is missing; the HTML report embeds its images; clear errors."""

from __future__ import annotations

import json
import math
import shutil
import zlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from liveditor.data_pipeline.synthetic_editor import EDITS
from liveditor.eval import learning
from liveditor.eval.learning import LearnEvalError, LearnEvalOptions, check_learning, evaluate_learning, open_run
from liveditor.train.cli import compose_train_config, run_training
from liveditor.train.precompute import compose_config, run_precompute, weights_fingerprint
from liveditor.train.shards import encode_latents, iter_tar_samples, sha256_file, write_tar
from liveditor.video import read_video, write_video
from train_helpers import make_wan_dir, precompute_args

EDIT_NAMES = ("grayscale", "invert")
FAST = LearnEvalOptions(steps=2)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tensors here are tiny: on a shared 2-core machine one thread is several times faster than two."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---- data ---------------------------------------------------------------------------------------

def clip_frames(clip: str, frames: int, height: int, width: int) -> np.ndarray:
    """A moving colour pattern, a function of the clip name: uint8 `[frames, height, width, 3]`."""
    rng = np.random.default_rng(zlib.crc32(clip.encode()))
    y, x = np.mgrid[0:height, 0:width]
    phase, freq = rng.uniform(0, 2 * np.pi, 3), rng.uniform(3, 9, 2)
    return np.stack([np.stack([127 + 100 * np.sin(x / freq[0] + t * 0.5 + phase[c]) * np.cos(y / freq[1] + phase[c]) for c in range(3)], -1)
                     for t in range(frames)]).astype(np.uint8)


def pair_media(folder: Path, clips, frames: int, height: int, width: int):
    """Per synthetic pair `<clip>-<edit>`: (key, src.mp4 bytes, tgt.mp4 bytes, json meta as liveditor-curate writes it)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for clip in clips:
        src = clip_frames(clip, frames, height, width)
        write_video(folder / "src.mp4", src, fps=16)
        for name in EDIT_NAMES:
            write_video(folder / "tgt.mp4", EDITS[name].apply(src, np.random.default_rng(0)), fps=16)
            key = f"{clip}-{name}"
            meta = {"key": key, "instruction": EDITS[name].instructions[0], "category": EDITS[name].category, "edit": name,
                    "fps": 16, "frames": frames, "size": [width, height], "provenance": {"origin": "synthetic"}}
            out.append((key, (folder / "src.mp4").read_bytes(), (folder / "tgt.mp4").read_bytes(), meta))
    return out


def write_index(folder: Path, names: list[str], **extra) -> None:
    entries = [{"name": n, "samples": sum(1 for _ in iter_tar_samples(folder / n)), "sha256": sha256_file(folder / n)} for n in names]
    (folder / "index.json").write_text(json.dumps({"format": "webdataset", "shards": entries, **extra}, indent=2))


def curated_shards(folder: Path, clips) -> Path:
    """Curated shards (src.mp4, tgt.mp4, json) of every clip x edit, 5 frames of 32x64 (Wan VAE latents [16, 2, 4, 8])."""
    samples = [(key, {"src.mp4": s, "tgt.mp4": t, "json": json.dumps(meta, sort_keys=True).encode()})
               for key, s, t, meta in pair_media(folder / ".media", clips, 5, 32, 64)]
    write_tar(folder / "edit-000000.tar", samples)
    write_index(folder, ["edit-000000.tar"])
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A tiny Wan dir; held-out clips a, b and training clips c, d, each with every edit, encoded by the real precompute."""
    root = tmp_path_factory.mktemp("learning")
    wan = make_wan_dir(root / "wan")
    for name, clips in (("heldout", ["clipa", "clipb"]), ("train", ["clipc", "clipd"])):
        run_precompute(compose_config("precompute", precompute_args(curated_shards(root / f"curated-{name}", clips), root / name, wan)))
    return root, root / "heldout", root / "train", wan


@pytest.fixture(scope="module")
def runs(data):
    """Two tiny runs of 4 steps with checkpoints at 2 and 4: `isa` learns (lr 1e-3); `dense` has lr 0, so
    its checkpoints hold its initial weights."""
    root, _, train, wan = data
    out = {}
    for label, more in (("isa", []), ("dense", ["isa=dense", "optim.lr=0.0"])):
        run_training(compose_train_config(["experiment=tiny", f"data.shards={train}", f"run_dir={root / label}", f"model.vae_path={wan}",
                                           "trainer.max_steps=4", "callbacks.checkpoint.every_n_steps=2", *more]))
        out[label] = root / label
    return out


@pytest.fixture(scope="module")
def evaluated(data, runs):
    root, heldout, train, wan = data
    out = root / "eval"
    return out, evaluate_learning(heldout, train, wan, runs, out, FAST, progress=False)


def items_of(out: Path) -> list[dict]:
    return pq.read_table(out / "items.parquet").to_pylist()


def media_of(heldout: Path, tmp: Path) -> dict:
    """`{key: (src frames, tgt frames)}` read straight from the held-out shards' videos."""
    out = {}
    for key, members in iter_tar_samples(heldout / "edit-000000.tar"):
        for side in ("src", "tgt"):
            (tmp / f"{side}.mp4").write_bytes(members[f"{side}.mp4"])
        out[key] = (read_video(tmp / "src.mp4").frames, read_video(tmp / "tgt.mp4").frames)
    return out


# ---- tables -------------------------------------------------------------------------------------

def test_tables_have_a_row_per_run_step_pair_condition_and_scored_target(evaluated, runs):
    out, summary = evaluated
    rows = items_of(out)
    keys = ["clipa-grayscale", "clipa-invert", "clipb-grayscale", "clipb-invert"]
    for b in ("identity", "zeros", "prior"):
        mine = [r for r in rows if r["run"] == b]
        assert sorted(r["key"] for r in mine) == keys and {(r["step"], r["condition"]) for r in mine} == {(None, "edit")}
    for label in ("isa", "dense"):
        for step in (0, 2, 4):  # step 0: the untrained model
            mine = [r for r in rows if r["run"] == label and r["step"] == step]
            got = sorted((r["key"], r["condition"], r["scored_against"]) for r in mine)
            assert got == sorted([(k, "edit", "target") for k in keys] + [(k, "source_swap", "target") for k in keys]
                                 + [(k, "instruction_swap", s) for k in keys for s in ("given_target", "original_target")])
            for r in mine:  # the swaps take the next clip's source / the clip's other edit's instruction
                if r["condition"] == "source_swap":
                    assert r["source_key"] == r["key"].replace("clipa", "X").replace("clipb", "clipa").replace("X", "clipb")
                if r["condition"] == "instruction_swap":
                    assert r["instruction_key"] != r["key"] and r["instruction_key"].split("-")[0] == r["clip_id"]
    assert len(rows) == 3 * 4 + 2 * 3 * 16
    assert all(math.isfinite(r["psnr"]) and r["latent_rel_error"] >= 0 for r in rows)
    assert [r for r in rows if r["run"] == "zeros"][0]["latent_rel_error"] == pytest.approx(1.0)  # ||0 - x|| / ||x||
    csv_lines = (out / "items.csv").read_text().splitlines()
    assert len(csv_lines) == len(rows) + 1 and "latent_rel_error" in csv_lines[0]

    # wall-clock: the sum of the sample log's step_seconds up to the step (null when the field is missing)
    from liveditor.train.callbacks import read_sample_log

    log = read_sample_log(runs["isa"] / "samples.rank0.jsonl")
    seconds = [log[s].get("step_seconds") for s in (1, 2)]
    expected = None if None in seconds else sum(seconds)
    walls = {r["wall_s"] for r in rows if r["run"] == "isa" and r["step"] == 2}
    assert len(walls) == 1 and (walls.pop() == pytest.approx(expected) if expected is not None else walls == {None})

    import pyarrow.csv as pacsv

    curves = pacsv.read_csv(out / "curves.csv").to_pylist()
    assert {(c["run"], c["step"]) for c in curves} == {(label, s) for label in ("isa", "dense") for s in (0, 2, 4)}
    for c in curves:
        sel = [r for r in rows if r["run"] == c["run"] and r["step"] == c["step"] and r["condition"] == "edit"
               and (c["edit"] == "all" or r["edit"] == c["edit"])]
        assert c["items"] == len(sel) and c["psnr"] == pytest.approx(np.mean([r["psnr"] for r in sel]))

    assert summary == json.loads((out / "summary.json").read_text())
    assert summary["runs"]["isa"]["final_step"] == 4 and summary["runs"]["isa"]["steps"] == [0, 2, 4]
    versus = summary["isa_vs_dense"]
    assert [p["step"] for p in versus["psnr_ratio_by_step"]] == [2, 4]
    final = versus["final"]
    assert final["psnr_ratio"] == pytest.approx(final["isa_psnr"] / final["dense_psnr"])
    median = lambda run: float(np.median([r["step_seconds"] for r in read_sample_log(runs[run] / "samples.rank0.jsonl").values()]))
    if expected is not None:
        assert versus["step_time_ratio_dense_over_isa"] == pytest.approx(median("dense") / median("isa"))


def test_isa_runs_record_how_much_of_their_source_any_head_keeps(evaluated, data, runs):
    """Each ISA (run, step) part has its source coverage beside it: forwards at COVERAGE_SIGMAS on the held-out
    pairs, the union over blocks and heads of the kept source blocks (liveditor.isa.context_coverage); dense
    runs have none. The summary's final and untrained values are those files, the curve carries each step's."""
    out, summary = evaluated
    _, heldout, _, _ = data
    for step in (0, 2, 4):
        assert not learning.coverage_path(learning.part_path(out, "dense", step)).exists()
    assert summary["runs"]["dense"]["source_coverage"] is None
    isa = summary["runs"]["isa"]
    final = isa["source_coverage"]
    assert final == learning.read_coverage(learning.part_path(out, "isa", 4))
    assert isa["untrained_source_coverage"] == learning.read_coverage(learning.part_path(out, "isa", 0))
    assert [c["source_coverage"] for c in isa["curve"]] == [
        learning.read_coverage(learning.part_path(out, "isa", s))["mean"] for s in (0, 2, 4)]
    dit = open_run("isa", runs["isa"]).dit
    nbs = final["source_blocks"]
    assert final["selections"] == dit.num_layers * dit.num_heads and final["pairs"] == 4
    assert final["upper_bound"] == pytest.approx(min(1.0, final["selections"] * final["kept_per_selection"] / nbs))
    assert 1 / nbs <= final["min"] <= final["mean"] <= final["upper_bound"]
    assert set(final["by_sigma"]) == {f"{s:g}" for s in learning.COVERAGE_SIGMAS}

    # the same numbers from the checkpoint, recomputed
    import tempfile

    with tempfile.TemporaryDirectory() as media:
        pairs = learning.load_heldout(heldout, Path(media), dit.in_dim, dit.text_dim)
        model = learning.load_checkpoint_model(dict(open_run("isa", runs["isa"]).checkpoints)[4], False, "cpu")
        again = learning.source_coverage(model, pairs, FAST)
        assert again["by_sigma"] == pytest.approx(final["by_sigma"])
        assert {k: v for k, v in again.items() if k != "by_sigma"} == pytest.approx({k: v for k, v in final.items() if k != "by_sigma"})
        dense = learning.load_checkpoint_model(dict(open_run("dense", runs["dense"]).checkpoints)[4], False, "cpu")
        assert learning.source_coverage(dense, pairs, FAST) is None


def test_identity_baseline_psnr_is_the_psnr_of_the_source_against_the_target_video(evaluated, data, tmp_path):
    out, summary = evaluated
    media = media_of(data[1], tmp_path)
    identity = {r["key"]: r for r in items_of(out) if r["run"] == "identity"}
    assert sorted(identity) == sorted(media)
    for key, (src, tgt) in media.items():
        mse = np.mean((src.astype(np.float64) - tgt.astype(np.float64)) ** 2)
        assert identity[key]["psnr"] == pytest.approx(10 * np.log10(255.0 ** 2 / mse), abs=1e-9)
    grayscale = [identity[k]["psnr"] for k in identity if k.endswith("grayscale")]
    assert summary["baselines"]["identity"]["per_edit"]["grayscale"]["psnr"] == pytest.approx(np.mean(grayscale))


def test_untrained_baseline_is_the_runs_initial_weights(runs):
    """The dense run trained at lr 0, so its checkpoints hold exactly its step-0 weights."""
    run = open_run("dense", runs["dense"])
    before = torch.get_rng_state()
    model = learning.untrained_model(run, "cpu")
    assert torch.equal(torch.get_rng_state(), before)  # the global generator is left as it was
    ckpt = torch.load(runs["dense"] / "checkpoints" / "step-0000002.ckpt", map_location="cpu", weights_only=False)
    saved = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    state = model.state_dict()
    assert sorted(saved) == sorted(state)
    assert all(torch.equal(saved[k], state[k]) for k in state)
    assert [s for s, _ in run.checkpoints] == [2, 4]


# ---- the claims: an oracle passes, a copy of the source fails ----------------------------------

class ExactCodec:
    """An exactly invertible stand-in for the codec: 2x2 space-to-depth (12 channels) plus 4 zero
    channels, so the tiny DiT's 16 input channels fit and decoded latents are the frames themselves."""

    z_dim, device = 16, torch.device("cpu")

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        B, _, T, H, W = video.shape
        x = video.reshape(B, 3, T, H // 2, 2, W // 2, 2).permute(0, 1, 4, 6, 2, 3, 5).reshape(B, 12, T, H // 2, W // 2)
        return torch.cat([x, torch.zeros(B, 4, T, H // 2, W // 2)], 1)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        B, _, T, h, w = latents.shape
        x = latents[:, :12].float().reshape(B, 3, 2, 2, T, h, w).permute(0, 1, 4, 5, 2, 6, 3)
        return x.reshape(B, 3, T, 2 * h, 2 * w).clamp(-1, 1)


def text_embedding(instruction: str) -> torch.Tensor:
    return torch.randn(4, 32, generator=torch.Generator().manual_seed(zlib.crc32(instruction.encode())))


def exact_latent_shards(folder: Path, clips, encoders: dict) -> Path:
    """Latent shards encoded by `ExactCodec` from the videos as stored (5 frames of 32x32)."""
    codec, samples = ExactCodec(), []
    for key, src, tgt, meta in pair_media(folder / ".media", clips, 5, 32, 32):
        latents = []
        for data in (src, tgt):
            (folder / ".media" / "v.mp4").write_bytes(data)
            frames = torch.from_numpy(read_video(folder / ".media" / "v.mp4").frames)
            latents.append(codec.encode(frames.permute(3, 0, 1, 2)[None].float().div(127.5).sub(1))[0])
        meta = dict(meta, latents={"frames": 5, "source": list(latents[0].shape), "target": list(latents[1].shape)})
        samples.append((key, {"src.mp4": src, "tgt.mp4": tgt, "json": json.dumps(meta, sort_keys=True).encode(),
                              "latents.safetensors": encode_latents(*latents, text_embedding(meta["instruction"]))}))
    write_tar(folder / "edit-000000.tar", samples)
    write_index(folder, ["edit-000000.tar"], encoders=encoders)
    return folder


class ScriptedEditor(torch.nn.Module):
    """A stand-in checkpoint that predicts the flow velocity `(x_t - x0) / s` carrying any `x_t` to the
    `x0` that `answer(source, text)` picks, so the sampler ends exactly there."""

    def __init__(self, config, answer):
        super().__init__()
        self.config, self.answer = config, answer

    def forward(self, x, timestep, text, source, plans=None, return_plans=False):
        x0 = torch.stack([self.answer(s, t) for s, t in zip(source, text)])
        v = (x - x0) / (timestep / 1000.0).view(-1, 1, 1, 1, 1)
        return (v, [None]) if return_plans else v


@pytest.fixture(scope="module")
def exact_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("exact")
    codec = root / "codec"
    (codec / "vae").mkdir(parents=True)
    (codec / "vae" / "config.json").write_text('{"_class_name": "ExactCodec (tests)"}')
    encoders = {"vae": weights_fingerprint(codec / "vae"), "text_encoder": "crc32-seeded random embeddings"}
    return (exact_latent_shards(root / "heldout", ["clipa", "clipb"], encoders),
            exact_latent_shards(root / "train", ["clipc", "clipd"], encoders), codec)


def test_an_oracle_passes_check_learning_and_a_copy_of_the_source_fails(exact_data, runs, monkeypatch, tmp_path):
    heldout, train, codec = exact_data
    from liveditor.train.shards import decode_latent_sample

    samples = [decode_latent_sample(k, m) for k, m in iter_tar_samples(heldout / "edit-000000.tar")]

    def oracle(source, text):
        """The target of (the clip whose source this is, the edit the text names)."""
        clip = next(s.key.split("-")[0] for s in samples if torch.equal(s.source_latents.float(), source))
        edit = next(s.meta["edit"] for s in samples if torch.equal(s.text_embedding.float(), text[: s.text_embedding.shape[0]]))
        return next(s.target_latents.float() for s in samples if s.key == f"{clip}-{edit}")

    monkeypatch.setattr(learning, "load_codec", lambda codec_dir, device: ExactCodec())
    summaries = {}
    for name, answer in (("oracle", oracle), ("copycat", lambda source, text: source)):
        monkeypatch.setattr(learning, "load_checkpoint_model", lambda path, use_ema, device, answer=answer:
                            ScriptedEditor(open_run("x", runs["isa"]).dit, answer))
        summaries[name] = evaluate_learning(heldout, train, codec, {name: runs["isa"]}, tmp_path / name,
                                            LearnEvalOptions(steps=3, checkpoints="last"), progress=False)
    oracle_run = summaries["oracle"]["runs"]["oracle"]
    assert oracle_run["steps"] == [0, 4]
    assert oracle_run["final"]["mean"]["latent_rel_error"] < 1e-2 and oracle_run["final"]["mean"]["psnr"] > 40
    assert oracle_run["instruction_swap"]["follow_rate"] == 1.0
    assert oracle_run["source_swap"]["source_swap"]["latent_rel_error"] > oracle_run["source_swap"]["edit"]["latent_rel_error"]
    assert check_learning(summaries["oracle"], "oracle") == []
    assert check_learning(summaries["oracle"], "oracle", per_edit=False) == []

    failed = check_learning(summaries["copycat"], "copycat")
    assert [f for f in failed if f.startswith("psnr over identity on edit")] and len(failed) >= 2
    assert all("dB" in f for f in failed if f.startswith("psnr over identity"))
    assert any(f.startswith("psnr over identity on edit 'invert'") for f in failed)
    # the untrained model (its own initial weights, not the stand-in) stays below the oracle
    assert oracle_run["untrained"]["mean"]["psnr"] < oracle_run["final"]["mean"]["psnr"] - 10
    with pytest.raises(LearnEvalError, match="not in the summary"):
        check_learning(summaries["copycat"], "oracle")


def _claims_summary(own_error: float, other_error: float) -> dict:
    """A summary of one run that passes every claim but the source swap's, whose errors are given."""
    scores = {"psnr": 30.0, "latent_rel_error": own_error, "items": 4}
    return {"baselines": {"identity": {"mean": {"psnr": 20.0}, "per_edit": {"blur": {"psnr": 20.0}}}, "prior": {"mean": {"psnr": 12.0}}},
            "runs": {"isa": {"final_step": 3000, "final": {"mean": scores, "per_edit": {"blur": scores}},
                             "untrained": {"mean": {"psnr": 9.0}},
                             "source_swap": {"items": 4, "edit": {"latent_rel_error": own_error},
                                             "source_swap": {"latent_rel_error": other_error}},
                             "instruction_swap": {"items": 4, "follows": 4, "follow_rate": 1.0}}}}


def test_reading_the_source_needs_more_than_a_rise_within_noise():
    # The ISA run of the CPU scale at keep 1/8 (docs/benchmarks.md): 1.051 with its own source, 1.057 with another
    # clip's; it stays at the prior and its output ignores the source. A rise of 0.6% is not reading it.
    failed = check_learning(_claims_summary(1.051, 1.057), "isa")
    assert len(failed) == 1 and failed[0].startswith("source swap latent_rel_error") and "x1.006" in failed[0], failed
    assert "needs >= x1.10" in failed[0]
    assert check_learning(_claims_summary(0.249, 0.496), "isa") == []           # the dense run: x1.99
    assert check_learning(_claims_summary(1.0, 1.2), "isa", min_source_swap_ratio=1.25)  # the margin is a parameter
    assert check_learning(_claims_summary(0.8, 0.7), "isa")                     # lower with another source: fails


# ---- resume, report -----------------------------------------------------------------------------

def test_rerun_after_an_interruption_evaluates_only_what_is_missing(evaluated, data, runs, monkeypatch, tmp_path):
    out, summary = evaluated
    _, heldout, train, wan = data
    rerun = tmp_path / "eval"
    shutil.copytree(out, rerun)
    finals = ["items.parquet", "items.csv", "curves.csv", "summary.json", "report.md", "report.csv", "report.html"]
    for name in finals:
        (rerun / name).unlink()
    (rerun / "parts" / "isa" / "step-0000002.parquet").unlink()
    (rerun / "parts" / "isa" / ".step-0000004.parquet.dead.partial").write_bytes(b"left by a kill -9")
    kept = {p: p.stat().st_mtime_ns for p in (rerun / "parts").rglob("*.parquet")}

    evaluated_now = []
    real_model, real_baseline = learning.evaluate_model, learning.evaluate_baseline

    def counted_model(model, run, step, *args):
        evaluated_now.append((run, step))
        return real_model(model, run, step, *args)

    def counted_baseline(name, *args):
        evaluated_now.append((name, None))
        return real_baseline(name, *args)

    monkeypatch.setattr(learning, "evaluate_model", counted_model)
    monkeypatch.setattr(learning, "evaluate_baseline", counted_baseline)
    again = evaluate_learning(heldout, train, wan, runs, rerun, FAST, progress=False)

    assert evaluated_now == [("isa", 2)]
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())
    assert again == summary
    for name in ("items.csv", "curves.csv", "report.csv", "report.md"):
        assert (rerun / name).read_bytes() == (out / name).read_bytes(), name
    assert pq.read_table(rerun / "items.parquet").equals(pq.read_table(out / "items.parquet"))

    with pytest.raises(LearnEvalError, match="other options"):  # parts made with 2 steps are not mixed with 3-step ones
        evaluate_learning(heldout, train, wan, runs, rerun, LearnEvalOptions(steps=3), progress=False)


def test_report_html_is_one_page_with_curves_strips_table_and_checks(evaluated):
    import base64
    import io
    import re

    from PIL import Image

    out, summary = evaluated
    page = (out / "report.html").read_text()
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(images) == 1 + len(EDIT_NAMES)  # the curves, one strip per edit type
    assert not re.search(r"src='(?!data:)", page)  # nothing outside the page
    strip = Image.open(io.BytesIO(base64.b64decode(images[1])))
    rows = 2 + 2 * len(summary["runs"])  # source, target, each run's final edit and untrained model
    assert strip.height >= rows * 96 and strip.width >= 3 * 96  # 32x64 frames upscaled to a short side >= 96 px
    for text in ("untrained:isa", "instruction_swap_follow_rate", "isa: FAIL", "ISA against dense"):
        assert text in page
    header = (out / "report.csv").read_text().splitlines()[0]
    assert header.replace('"', "").split(",") == ["metric", "edit", "identity", "zeros", "prior", "untrained:isa", "isa",
                                                  "untrained:dense", "dense"]
    assert "| psnr | invert |" in (out / "report.md").read_text()


# ---- errors -------------------------------------------------------------------------------------

def test_clear_errors_and_a_one_clip_heldout_set(data, runs, tmp_path, capsys):
    root, heldout, train, wan = data
    empty = tmp_path / "untrained_run"
    (empty / "checkpoints").mkdir(parents=True)
    shutil.copy(runs["isa"] / "config.yaml", empty / "config.yaml")
    with pytest.raises(LearnEvalError, match="has no checkpoints"):
        evaluate_learning(heldout, train, wan, {"isa": empty}, tmp_path / "a", FAST, progress=False)

    other = tmp_path / "train_other_vae"
    shutil.copytree(train, other)
    index = json.loads((other / "index.json").read_text())
    index["encoders"]["vae"] = "0" * 64
    (other / "index.json").write_text(json.dumps(index))
    with pytest.raises(LearnEvalError, match=r"different encoders \(index.json encoders differ in \['vae'\]\)"):
        evaluate_learning(heldout, other, wan, runs, tmp_path / "b", FAST, progress=False)

    narrow = tmp_path / "narrow_run"
    narrow.mkdir()
    (narrow / "checkpoints").symlink_to(runs["isa"] / "checkpoints")
    (narrow / "config.yaml").write_text((runs["isa"] / "config.yaml").read_text().replace("in_dim: 16", "in_dim: 12"))
    with pytest.raises(LearnEvalError, match="makes latents of 16 channels, run 'narrow' takes in_dim=12"):
        evaluate_learning(heldout, train, wan, {"narrow": narrow}, tmp_path / "c", FAST, progress=False)

    code = learning.main(["--heldout", str(heldout), "--train", str(train), "--codec", str(wan), "--run", f"isa={empty}",
                          "--out", str(tmp_path / "d"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("liveditor.eval.learning: error:") and "no checkpoints" in err[0]

    one = tmp_path / "heldout_one_clip"
    one.mkdir()
    shutil.copy(heldout / "text_defaults.safetensors", one)
    write_tar(one / "edit-000000.tar", [(k, m) for k, m in iter_tar_samples(heldout / "edit-000000.tar") if k.startswith("clipa")])
    write_index(one, ["edit-000000.tar"], encoders=json.loads((heldout / "index.json").read_text())["encoders"])
    code = learning.main(["--heldout", str(one), "--train", str(train), "--codec", str(wan), f"--run=isa={runs['isa']}",
                          "--out", str(tmp_path / "e"), "--steps", "1", "--checkpoints", "last", "--check", "isa", "--no-progress"])
    printed = capsys.readouterr().out
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert {s["condition"] for s in summary["skipped"]} == {"source_swap"}
    assert all(s["reason"] == "the held-out set has one clip" for s in summary["skipped"])
    assert not [r for r in items_of(tmp_path / "e") if r["condition"] == "source_swap"]
    assert "source swap: not measured (the held-out set has one clip)" in check_learning(summary, "isa")
    assert code == 1 and "isa: FAIL" in printed and "source swap: not measured" in printed  # --check: a claim failed
