"""liveditor-eval refuses to give a believable wrong number (issue 27, evaluation): strict model
loading, judge answers cached only when usable, plug-ins checked before scoring and isolated while
scoring, configuration mistakes stopped before any work (exit 2, one line, nothing written), partial
totals kept apart from full ones, and the smaller conventions (the plug-in override, score mode
without sources, per-item applicability, IVE-Bench sources in neither subset, EditVerse's per-item
CSV, chart axes). CPU only, tiny fixtures; the CLI runs in-process."""

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_openai import FakeServer, answer

from liveditor.eval.benchmarks import Item, load_benchmark
from liveditor.eval.judge import JudgeClient, JudgeConfig, JudgeError
from liveditor.eval.leaderboard import build_leaderboard, read_leaderboard_csv, write_leaderboard
from liveditor.eval.metrics import build_metrics
from liveditor.eval.models import EvalModels, ModelLoadError
from liveditor.eval.runner import score, write_item_csv
from liveditor.eval.store import MetricRow, ScoreStore
from liveditor.eval.tiny import make_clip_dir, make_dinov2_dir
from liveditor.video import write_video


def clip_frames(t, seed, h=32, w=32):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return np.stack([np.roll(base, i, axis=1) for i in range(t)])


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("guard_weights")
    return {"clip": make_clip_dir(root / "clip", "tiny"), "dinov2": make_dinov2_dir(root / "dinov2")}


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """EditVerseBench with two items (`root`; `root_partial`: the same with item 1's source video never
    downloaded), and a results folder in EditVerse's layout holding both items' generate.mp4 and video1.mp4."""
    import shutil

    root = tmp_path_factory.mktemp("guard_bench")
    ev = root / "EditVerseBench"
    (ev / "videos").mkdir(parents=True)
    for i in range(2):
        write_video(ev / "videos" / f"v{i}.mp4", clip_frames(6, i), fps=16)
    test = {str(i): {"<text>": f"<video1> make it red {i}", "<video1>": f"videos/v{i}.mp4", "direction": "horizontal",
                     "target_prompt": f"a red car {i}", "type": ["change_color", "add_object"][i], "source_prompt": "a car"}
            for i in range(2)}
    (ev / "test.json").write_text(json.dumps(test))
    partial = root / "EditVerseBench-partial"
    shutil.copytree(ev, partial)
    (partial / "videos" / "v1.mp4").unlink()
    results = root / "Results" / "Method"
    for i in range(2):
        write_video(results / str(i) / "generate.mp4", clip_frames(6, 10 + i), fps=16)
        write_video(results / str(i) / "video1.mp4", clip_frames(6, 20 + i), fps=16)
    return {"root": ev, "root_partial": partial, "results": results}


def run_cli(args):
    """`liveditor-eval` in-process: (exit code, stderr lines)."""
    from liveditor.eval.cli import main

    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code


def cli_args(bench, run_dir, *extra):
    return ["mode=score", f"run_dir={run_dir}", "benchmarks=[editverse]", f"data.editverse.root={bench['root']}",
            f"results_dir={bench['results']}", "progress=false", "metrics.device=cpu", *extra]


def exits_2_with_one_line(capsys, args, run_dir, *needles):
    code = run_cli(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("liveditor-eval: error: "), err
    for n in needles:
        assert str(n) in err[0], err[0]
    assert not Path(run_dir).exists(), sorted(p.name for p in Path(run_dir).rglob("*"))  # nothing left behind
    return err[0]


# ------------------------------------------------------------------ 1. strict model loading


def test_a_clip_folder_given_as_dinov2_stops_before_scoring(capsys, tmp_path, weights, bench):
    run_dir = tmp_path / "run"
    line = exits_2_with_one_line(capsys, cli_args(bench, run_dir, f"models.dinov2={weights['clip']}"), run_dir,
                                 "models.dinov2", weights["clip"])
    assert "'clip' model" in line
    with pytest.raises(ModelLoadError, match="models.dinov2='.*clip' holds a 'clip' model"):
        EvalModels({"dinov2": weights["clip"]}, "cpu").get("dinov2")


def test_a_checkpoint_missing_a_weight_or_with_a_wrong_shape_is_refused(tmp_path, weights):
    from safetensors.torch import load_file, save_file
    import shutil

    for name, change in (("missing", lambda sd: sd.pop("embeddings.cls_token")),
                         ("reshaped", lambda sd: sd.__setitem__("layernorm.weight", torch.ones(7)))):
        folder = tmp_path / name
        shutil.copytree(weights["dinov2"], folder)
        state = load_file(str(folder / "model.safetensors"))
        change(state)
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
        with pytest.raises(ModelLoadError, match=f"models.dinov2='{folder}'"):
            EvalModels({"dinov2": folder}, "cpu").get("dinov2")
    assert EvalModels({"dinov2": weights["dinov2"]}, "cpu").preload(["dino_temporal_consistency"]) == ["dinov2"]


# ------------------------------------------------------------------ 2. judge answers cached only when usable

ITEM = Item("0", "s", "turn the car red", "a red car", "color")


def judge_client(server, cache):
    return JudgeClient(JudgeConfig(base_url=server.url, model="fake-vlm", cache_dir=str(cache), backoff_s=0.01,
                                   max_retries=1, timeout_s=5, api_key_env=None, parallel_requests=1))


def test_malformed_answers_are_not_cached_and_a_rerun_asks_again(tmp_path):
    frames = clip_frames(3, 1)
    with FakeServer() as server:
        server.script = [answer("I cannot tell.")]
        metric = build_metrics("editverse", EvalModels({}, "cpu"), judge_client(server, tmp_path / "c"))["editing_vlm_evaluation"]
        with pytest.raises(JudgeError, match="malformed judge answer"):
            metric(frames, frames, ITEM)
        assert len(server.requests) == 2  # the first frame's question and its extraction, then the metric stops
        assert not list((tmp_path / "c").rglob("*.json"))  # nothing cached
        server.script = [answer("Total Score: 8")]  # the endpoint is fixed
        assert metric(frames, frames, ITEM) == 8.0
        assert len(server.requests) == 5  # asked again (not an answer from the cache), then the other two frames
        assert metric(frames, frames, ITEM) == 8.0 and len(server.requests) == 5  # now cached
    # A cache written before this rule (a malformed answer and a malformed extraction, stored as final) is asked again.
    from liveditor.eval.metrics import EXTRACT_PROMPT, _ask_score

    with FakeServer() as server:
        old = judge_client(server, tmp_path / "old")
        server.script = [answer("no score here")]
        old.ask("Rate it", [frames[0]])  # stored: no `keep` was given
        old.ask(EXTRACT_PROMPT.format(answer="no score here"))
        assert len(list((tmp_path / "old").rglob("*.json"))) == 2
        server.script = [answer("Score: 4")]
        assert _ask_score(old, "Rate it", [frames[0]], 1, 5, "Score") == 4
        assert len(server.requests) == 3  # the extraction was asked again


def test_the_cli_exits_1_on_error_rows_and_a_rerun_against_the_fixed_judge_completes(capsys, tmp_path, bench):
    run_dir = tmp_path / "run"
    with FakeServer() as server:
        server.respond = lambda req: answer("OK") if "single word OK" in json.dumps(req) else answer("no idea")
        args = cli_args(bench, run_dir, f"judge.base_url={server.url}", "judge.backoff_s=0.01", "judge.api_key_env=null",
                        "metrics.select=[editing_vlm_evaluation]")
        assert run_cli(args) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "2 metric row(s) failed" in err[0] and "rerun" in err[0]
        server.respond = None
        server.script = [answer("Total Score: 6")]
        sent = len(server.requests)
        assert run_cli(args) == 0
        assert len(server.requests) > sent + 1  # asked again, not answered from the cache
    rows = {r.item: r for r in ScoreStore(run_dir / "scores" / "editverse").latest()}
    assert {k: (r.status, r.value) for k, r in rows.items()} == {"0": ("ok", 6.0), "1": ("ok", 6.0)}


# ------------------------------------------------------------------ 3. plug-ins


def test_a_plugin_module_that_does_not_import_stops_before_scoring(capsys, tmp_path, bench):
    run_dir = tmp_path / "run"
    exits_2_with_one_line(capsys, cli_args(bench, run_dir, "metrics.plugins.motion_smoothness_score=no_such_pkg.amt:score"),
                          run_dir, "metrics.plugins.motion_smoothness_score", "no_such_pkg.amt")
    (tmp_path / "plugmod_broken.py").write_text("raise RuntimeError('needs a GPU build of amt')\n")
    sys.path.insert(0, str(tmp_path))
    try:
        exits_2_with_one_line(capsys, cli_args(bench, run_dir, "metrics.plugins.vtss_score=plugmod_broken:f"),
                              run_dir, "metrics.plugins.vtss_score", "needs a GPU build")
    finally:
        sys.path.remove(str(tmp_path))


def test_an_exception_of_any_type_inside_a_plugin_is_that_rows_failure(tmp_path, monkeypatch):
    (tmp_path / "plugmod_raises.py").write_text(
        "class AmtFailure(Exception):\n    pass\n\n"
        "def motion(edited, source, item):\n    raise AmtFailure('flow diverged')\n\n"
        "def vtss(edited, source, item):\n    return {'not': 'a number'}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    metrics = build_metrics("ivebench_short", EvalModels({}, "cpu"),
                            plugins={"motion_smoothness_score": "plugmod_raises:motion", "vtss_score": "plugmod_raises:vtss"},
                            select=["temporal_flickering_score", "motion_smoothness_score", "vtss_score"])
    results = tmp_path / "results"
    write_video(results / "a" / "generate.mp4", clip_frames(4, 3), fps=16)
    write_video(results / "a" / "video1.mp4", clip_frames(4, 4), fps=16)
    store = ScoreStore(tmp_path / "scores")
    report = score([Item("a", "", "x", "y", "Style")], "ivebench_short", results, metrics, store, "m", progress=False)
    rows = {r.metric: r for r in store.latest()}
    assert rows["temporal_flickering_score"].status == "ok"  # kept
    assert rows["motion_smoothness_score"].status == "error" and "AmtFailure: flow diverged" in rows["motion_smoothness_score"].detail
    assert rows["vtss_score"].status == "error" and "TypeError" in rows["vtss_score"].detail
    assert report.errors == {"a": ["motion_smoothness_score", "vtss_score"]}


def test_the_documented_plugin_override_needs_no_plus():
    from liveditor.configcheck import compose

    cfg = compose("eval", ["run_dir=/r", "metrics.plugins.motion_smoothness_score=my_pkg.amt:motion_smoothness"])
    assert cfg.metrics.plugins.motion_smoothness_score == "my_pkg.amt:motion_smoothness"
    assert "metrics.plugins.motion_smoothness_score=my_pkg.amt:motion_smoothness" in \
        (Path(__file__).resolve().parents[1] / "docs" / "evaluation.md").read_text()


# ------------------------------------------------------------------ 4. configuration mistakes


def test_configuration_mistakes_exit_2_with_one_line_before_any_work(capsys, tmp_path, bench, weights):
    run_dir = tmp_path / "run"
    typo = tmp_path / "clip-vit-large-patch14-typo"
    exits_2_with_one_line(capsys, cli_args(bench, run_dir, f"models.clip_l14={typo}"), run_dir, "models.clip_l14", typo)
    device = "cuda:99" if torch.cuda.is_available() else "cuda"
    exits_2_with_one_line(capsys, cli_args(bench, run_dir, f"models.clip_l14={weights['clip']}", f"metrics.device={device}"),
                          run_dir, f"metrics.device={device}")
    nowhere = tmp_path / "EditVerse_Comparison_Results" / "TokenFlw"
    args = cli_args(bench, run_dir)
    args[args.index(f"results_dir={bench['results']}")] = f"results_dir={nowhere}"
    exits_2_with_one_line(capsys, args, run_dir, "results_dir", nowhere, "does not exist")
    with FakeServer() as server:
        server.script = [(401, {"error": {"message": "Incorrect API key provided"}})]
        exits_2_with_one_line(capsys, cli_args(bench, run_dir, f"judge.base_url={server.url}", "judge.backoff_s=0.01"),
                              run_dir, "401", "Incorrect API key")
        assert len(server.requests) == 1  # one probe, not a request per item and frame


def test_editor_mistakes_stop_generate_before_any_work(capsys, tmp_path, bench):
    ev = bench["root"]
    run_dir = tmp_path / "run"
    missing = tmp_path / "liveditor.safetensors"
    exits_2_with_one_line(capsys, ["mode=generate", f"run_dir={run_dir}", "benchmarks=[editverse]", f"data.editverse.root={ev}",
                                   "progress=false", f"edit.overrides=['model=tiny','model.weights_path={missing}']"],
                          run_dir, "edit.overrides", "model.weights_path", missing)
    if not torch.cuda.is_available():
        from liveditor.models import DiTConfig
        from liveditor.pipeline.cli import compose_edit_config
        from liveditor.pipeline.tiny import make_tiny_checkpoint, make_tiny_wan_dir
        from omegaconf import OmegaConf

        dit = DiTConfig.from_dict(OmegaConf.to_container(compose_edit_config(["model=tiny"]).model.dit))
        ckpt, wan = make_tiny_checkpoint(tmp_path / "tiny.safetensors", dit), make_tiny_wan_dir(tmp_path / "wan")
        capsys.readouterr()  # the fixtures' progress bars
        exits_2_with_one_line(capsys, ["mode=generate", f"run_dir={run_dir}", "benchmarks=[editverse]", f"data.editverse.root={ev}",
                                       "progress=false", "edit.overrides=[" + ",".join(f"'{o}'" for o in (
                                           "model=tiny", f"model.weights_path={ckpt}", f"model.vae_path={wan}", "runtime.device=cuda")) + "]"],
                              run_dir, "edit.overrides", "runtime.device")


def test_a_refused_judge_mid_run_stops_scoring_instead_of_writing_error_rows(tmp_path):
    from liveditor.eval.judge import JudgeRefused

    results = tmp_path / "results"
    items = [Item(str(i), "", "make it red", "a red car", "color") for i in range(3)]
    for it in items:
        write_video(results / it.id / "generate.mp4", clip_frames(3, 8), fps=16)
        write_video(results / it.id / "video1.mp4", clip_frames(3, 9), fps=16)
    store = ScoreStore(tmp_path / "scores")
    with FakeServer() as server:
        server.script = [(403, {"error": {"message": "key revoked"}})]
        metrics = build_metrics("editverse", EvalModels({}, "cpu"), judge_client(server, tmp_path / "c"),
                                select=["editing_vlm_evaluation"])
        with pytest.raises(JudgeRefused, match="403.*key revoked"):
            score(items, "editverse", results, metrics, store, "m", progress=False)
        assert len(server.requests) == 1  # stopped at the first refusal
    assert store.latest() == []  # no error row written for any item


# ------------------------------------------------------------------ 5. partial totals


def ive_rows(method, metrics_values, items=("a", "b")):
    return [MetricRow(method, "ivebench_short", i, m, "Style", v, "ok") for i in items for m, v in metrics_values.items()]


def captured_figures(monkeypatch):
    from matplotlib.figure import Figure

    figures = {}
    original = Figure.savefig

    def savefig(self, fname, *a, **kw):
        figures[self._suptitle.get_text() if self._suptitle else str(fname)] = self
        return original(self, fname, *a, **kw)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return figures


def bars_of(ax):
    from matplotlib.patches import Rectangle

    return [p for p in ax.patches if isinstance(p, Rectangle) and p.get_width() > 0]


def test_a_partial_total_is_never_on_the_axis_of_full_totals(tmp_path, monkeypatch):
    figures = captured_figures(monkeypatch)
    three = ive_rows("ours", {"subject_consistency_score": 0.99, "background_consistency_score": 0.98, "temporal_flickering_score": 0.97})
    board = build_leaderboard("ivebench_short", {"ours": three}, 2)
    write_leaderboard(board, tmp_path / "lb")
    fig = figures["ivebench_short: Total"]
    for ax in fig.axes:
        labels = [t.get_text() for t in ax.get_xticklabels()]
        assert not ("ours" in labels and "InsV2V" in labels), labels  # the 3-of-12 total stands apart
    ours_ax = next(ax for ax in fig.axes if "ours" in [t.get_text() for t in ax.get_xticklabels()])
    assert "partial" in ours_ax.get_title()
    # Every dimension present, components missing: the note names them, not just "partial".
    five = ive_rows("ours", {"subject_consistency_score": 0.9, "background_consistency_score": 0.9, "temporal_flickering_score": 0.9,
                             "instruction_satisfaction_score": 4.0, "content_fidelity_score": 3.0})
    write_leaderboard(build_leaderboard("ivebench_short", {"ours": five}, 2), tmp_path / "lb2")
    ours = next(r for r in read_leaderboard_csv(tmp_path / "lb2" / "ivebench_short.csv") if r["method"] == "ours")
    assert ours["total_note"] == "partial (7 of 12 metrics missing: MS, VTSS, OSC, PSC, QA, SF, MF)"


def test_chart_axes_start_at_zero_the_legend_covers_no_bar_and_categories_do_not_mix_scales(tmp_path, monkeypatch):
    figures = captured_figures(monkeypatch)
    rows = [MetricRow("ours", "editverse", str(i), m, "change_color", v, "ok") for i in range(200)
            for m, v in (("editing_vlm_evaluation", 7.9), ("clip_temporal_consistency", 99.3), ("frame_text_alignment", 27.0))]
    write_leaderboard(build_leaderboard("editverse", {"ours": rows}, 200), tmp_path / "lb")
    for title, fig in figures.items():
        fig.canvas.draw()
        legends = [lg.get_window_extent() for lg in fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend()]]
        for ax in fig.axes:
            if not ax.get_visible():
                continue
            assert ax.get_ylim()[0] <= 0.0, (title, ax.get_title(), ax.get_ylim())
            for bar in bars_of(ax):
                assert not any(lg.overlaps(bar.get_window_extent()) for lg in legends), (title, ax.get_title())
    cat = figures["editverse / change_color"]
    titles = sorted(ax.get_title() for ax in cat.axes if ax.get_visible())
    assert titles == ["CLIP", "EQ", "Frame"]  # one axis per metric
    assert all(len(bars_of(ax)) == 1 for ax in cat.axes if ax.get_visible())


# ------------------------------------------------------------------ 6. smaller items


def test_score_mode_takes_video1_when_a_source_was_never_downloaded(tmp_path, bench):
    from liveditor.eval.cli import run_eval
    from liveditor.configcheck import compose

    with pytest.raises(Exception, match="source video 'videos/v1.mp4'"):
        load_benchmark("editverse", bench["root_partial"])  # generating needs it
    assert load_benchmark("editverse", bench["root_partial"], require_sources=False)[1].source == ""
    run_dir = tmp_path / "run"
    with FakeServer() as server:
        args = cli_args(bench, run_dir, f"judge.base_url={server.url}", "judge.api_key_env=null", "metrics.select=[editing_vlm_evaluation]")
        args[args.index(f"data.editverse.root={bench['root']}")] = f"data.editverse.root={bench['root_partial']}"
        out = run_eval(compose("eval", args))
    assert not out["editverse"]["score"].errors
    assert [(r.item, r.status) for r in ScoreStore(run_dir / "scores" / "editverse").latest()] == [("0", "ok"), ("1", "ok")]
    with open(out["editverse"]["items_csv"], newline="") as f:
        table = list(csv.reader(f))
    assert table == [["id", "editing_vlm_evaluation", "type"], ["0", "7.0", "change_color"], ["1", "7.0", "add_object"],
                     ["Average", "7.0", ""]]
    assert out["editverse"]["items_csv"] == run_dir / "scores" / "editverse" / "items.csv"


def test_per_item_csv_follows_editversess_column_order():
    import tempfile

    metrics = ["editing_vlm_evaluation", "pick_score_video_quality", "frame_text_alignment", "video_text_alignment",
               "clip_temporal_consistency", "dino_temporal_consistency"]
    rows = [MetricRow("m", "editverse", i, m, "cat", float(k + n), "ok") for n, i in enumerate(("0", "1")) for k, m in enumerate(metrics)]
    rows[0] = MetricRow("m", "editverse", "0", metrics[0], "cat", None, "error", "boom")
    items = [Item("0", "", "", "", "cat"), Item("1", "", "", "", "cat"), Item("2", "", "", "", "cat")]
    with tempfile.TemporaryDirectory() as d:
        with open(write_item_csv(Path(d) / "items.csv", "editverse", items, rows), newline="") as f:
            table = list(csv.reader(f))
    assert table[0] == ["id", "clip_temporal_consistency", "dino_temporal_consistency", "frame_text_alignment",
                        "video_text_alignment", "pick_score_video_quality", "editing_vlm_evaluation", "type"]
    assert table[1] == ["0", "4.0", "5.0", "2.0", "3.0", "1.0", "", "cat"]  # the error row: empty
    assert table[2][6] == "1.0" and [r[0] for r in table] == ["id", "0", "1", "Average"]  # item 2 has no rows
    assert table[3][1:3] == ["4.5", "5.5"] and table[3][6] == "1.0"


def test_not_computed_on_one_item_does_not_hide_not_applicable_on_the_next(tmp_path):
    results = tmp_path / "results"
    items = [Item("q", "", "make three cars", "three cars", "Quantity", subcategory="quantity editing",
                  fields={"target_phrase": "three cars"}),
             Item("s", "", "make it snowy", "a snowy street", "Style", subcategory="winter", fields={"target_phrase": "snow"})]
    for it in items:
        write_video(results / it.id / "generate.mp4", clip_frames(4, 5), fps=16)
        write_video(results / it.id / "video1.mp4", clip_frames(4, 6), fps=16)
    metrics = build_metrics("ivebench_short", EvalModels({}, "cpu"), select=["quantity_accuracy_score"])
    store = ScoreStore(tmp_path / "scores")
    score(items, "ivebench_short", results, metrics, store, "m", progress=False)
    rows = {r.item: r for r in store.latest()}
    assert rows["q"].status == "not_computed" and "models.grounding_dino" in rows["q"].detail
    assert rows["s"].status == "not_applicable", rows["s"].detail


def test_ivebench_sources_in_neither_subset_are_reported(tmp_path, caplog):
    root = tmp_path / "IVEBench"
    (root / "videos").mkdir(parents=True)
    for name, t in (("short.mp4", 40), ("tiny.mp4", 20)):
        write_video(root / "videos" / name, clip_frames(t, 7, 16, 16), fps=24)
    (root / "ivebench.json").write_text(json.dumps([
        {"id": n, "src_video_name": n + ".mp4", "category": "Style", "subcategory": "winter", "source_prompt": "a",
         "edit_prompt": "b", "target_prompt": "c"} for n in ("short", "tiny")]))
    outside = []
    items = load_benchmark("ivebench_short", root, outside=outside)
    assert [i.id for i in items] == ["short"]
    assert outside == [{"id": "tiny", "source": str(root / "videos" / "tiny.mp4"), "frames": 20}]
    assert "tiny (20 frames)" in caplog.text and "neither" in caplog.text
    from liveditor.eval.cli import run_eval
    from liveditor.configcheck import compose

    run_dir = tmp_path / "run"
    out = run_eval(compose("eval", ["mode=leaderboard", f"run_dir={run_dir}", "benchmarks=[ivebench_short]",
                                    f"data.ivebench.root={root}", "progress=false"]))
    assert json.loads((run_dir / "ivebench_short" / "outside_subsets.json").read_text())[0]["id"] == "tiny"
    assert "tiny (20 frames)" in out["ivebench_short"]["leaderboard"]["md"].read_text()
