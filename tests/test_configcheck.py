"""One config check for every CLI (liveditor.configcheck): an unknown key (also added with `+`), a
value of the wrong type and one out of range are each one line on stderr and exit 2, before any work
and before any input path is looked at (every path given here does not exist)."""

from __future__ import annotations

import pytest

MISSING = "/no/such/folder"


def _train(args):
    from liveditor.train.cli import main

    return main(["experiment=tiny", f"data.shards={MISSING}", *args])


def _precompute(args):
    from liveditor.train.precompute import main

    return main([f"input_dir={MISSING}", f"encoders.path={MISSING}", *args])


def _curate(args):
    from liveditor.data_pipeline.cli import main

    return main([f"input.paths=[{MISSING}]", f"out_dir={MISSING}/out", *args])


def _edit(args):
    from liveditor.pipeline.cli import main

    return main(["--input", f"{MISSING}/in.mp4", "--prompt", "x", "--output", f"{MISSING}/out.mp4", "model=tiny",
                 f"model.weights_path={MISSING}", *args])


def _eval(args):
    from liveditor.eval.cli import main

    return main([f"run_dir={MISSING}/run", "mode=score", *args])


CLIS = {"train": _train, "precompute": _precompute, "curate": _curate, "edit": _edit, "eval": _eval}
CASES = [  # (cli, override, what the one line must say)
    ("train", "+trainer.max_step=5", ["'trainer.max_step'", "trainer.max_steps"]),
    ("train", "trainer.max_steps=abc", ["trainer.max_steps must be an integer", "'abc'"]),
    ("train", "optim.lr=-1", ["optim.lr must be a number >= 0", "-1"]),
    ("precompute", "+encoders.pth=/w", ["'encoders.pth'", "encoders.path"]),
    ("precompute", "encoders.text_len=long", ["encoders.text_len must be an integer", "'long'"]),
    ("precompute", "partition.count=0", ["partition.count must be an integer >= 1", "0"]),
    ("curate", "+filters.min_motoin=5", ["'filters.min_motoin'", "filters.min_motion"]),
    ("curate", "filters.min_motion=abc", ["filters.min_motion must be a number", "'abc'"]),
    ("curate", "pairs.target_fps=-1", ["pairs.target_fps must be a number > 0", "-1"]),
    ("edit", "+sampling.stepz=3", ["'sampling.stepz'", "sampling.steps"]),
    ("edit", "runtime.progress=sometimes", ["runtime.progress must be true or false", "'sometimes'"]),
    ("edit", "sampling.steps=0", ["sampling.steps must be an integer >= 1", "0"]),
    ("eval", "+judge.modle=gpt", ["'judge.modle'", "judge.model"]),
    ("eval", "judge.max_retries=many", ["judge.max_retries must be an integer", "'many'"]),
    ("eval", "shard.count=0", ["shard.count must be an integer >= 1", "0"]),
]


def _exit_code(call) -> int:
    try:
        return call()
    except SystemExit as exc:  # the @hydra.main CLIs (curate, eval) exit
        return exc.code


@pytest.mark.parametrize("cli,override,says", CASES, ids=[f"{c}:{o}" for c, o, _ in CASES])
def test_every_cli_refuses_a_bad_key_type_or_range_in_one_line(cli, override, says, capsys):
    code = _exit_code(lambda: CLIS[cli]([override]))
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for text in says:
        assert text in lines[0], lines[0]
    assert MISSING not in lines[0]  # the config is checked before any input path


def test_a_key_without_plus_is_named_the_same_way(capsys):
    assert _train(["trainer.max_step=5"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'trainer.max_step'" in err and "trainer.max_steps" in err, err


def test_sections_of_object_arguments_and_user_mappings_take_their_own_keys():
    from liveditor.configcheck import ConfigError, compose

    # a Lightning Trainer argument the packaged config does not set, and a method of the user's own
    cfg = compose("train", ["experiment=tiny", "+trainer.limit_train_batches=3"])
    assert cfg.trainer.limit_train_batches == 3
    compose("eval", ["run_dir=/r", "+leaderboard.compare.other=/runs/other"])
    with pytest.raises(ConfigError, match="'strategy.stage'"):  # single has no ZeRO stage
        compose("train", ["+strategy.stage=2"])


def test_demo_style_callers_check_a_composed_config():
    from hydra import compose as hydra_compose, initialize_config_module

    from liveditor.configcheck import ConfigError, check_config

    overrides = ["+filters.min_motoin=5"]
    with initialize_config_module("liveditor.configs.curate", version_base="1.3"):
        cfg = hydra_compose("curate", overrides=overrides)
    with pytest.raises(ConfigError, match="did you mean 'filters.min_motion'"):
        check_config(cfg, "curate", overrides)
