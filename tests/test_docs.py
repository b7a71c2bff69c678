"""The docs cannot rot: every shell command in a ```bash block of docs/*.md and README.md is checked
against the real CLIs; the README's quickstart is exactly `make demo` and `make test`, and `.ci/run`
calls the README's test command; docs/configs.md's generated reference matches the config folders.

How each command is checked (docs/quickstart.md, "How the docs are checked", says the same):
- `liveditor-curate|precompute|train|eval` and the overrides given to `sbatch slurm/*.sbatch` and
  `slurm/curate_submit.sh`: the Hydra overrides compose against the packaged configs (an unknown
  key, group option or bad value fails); eval's `edit.overrides` compose against configs/edit too.
- `liveditor-edit`: its argument parser, then the strict edit-config composition.
- `liveditor-export`: its argument parser (a parse error prints `usage:`).
- `liveditor demo|learn|isa-report`: the `liveditor` parser; for `demo` and `learn`, every stage's config
  composes with the command's overrides (`Demo.configs()`, `LearnBench.configs()`, no stage runs).
- `python -m liveditor.X ...`: the module's `--help` exits 0 and lists every `--flag` the command uses;
  `python <script>.py`: the script exists and compiles.
- `slurm/curate_submit.sh ...`: run for real with a stand-in `sbatch` on PATH that records its
  arguments (two submissions, the merge `--dependency=afterok:<array id>`).
- `sbatch [flags] slurm/<script>`: the script exists, the flags are `--name[=value]`, the overrides compose.
- `bash scripts/<x>.sh ...` (any other shell script): it exists and `bash -n` parses it.
- `make <target>`: the Makefile has the target. `git show REV:PATH`: the object exists.
  `pip install|wheel`: every requirement parses (PEP 508). (A shallow clone or an sdist: the form only.)
A command of any other form fails this test until a check for it is added here.
`...` stands for "the rest as above" and is dropped; `<placeholder>` and `$VAR` become a dummy value.
"""

from __future__ import annotations

import io
import os
import re
import shlex
import stat
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DOCS = sorted((REPO / "docs").glob("*.md")) + [REPO / "README.md"]
CONFIGS = REPO / "configs"


# ------------------------------------------------------------------------------ extraction

def bash_blocks(path: Path) -> list[str]:
    return re.findall(r"^```(?:bash|sh|shell)\n(.*?)^```", path.read_text(), re.S | re.M)


def commands_of(block: str) -> list[str]:
    """Shell commands of a block: continuation lines joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n", " ", block)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


def all_commands() -> list[tuple[str, str]]:
    return [(p.name, c) for p in DOCS for b in bash_blocks(p) for c in commands_of(b)]


def tokens_of(command: str) -> list[str]:
    """shlex tokens with comments dropped, `<placeholders>` and `$VARS` as dummy values, `...` dropped."""
    command = re.sub(r"<[a-z][a-z _-]*>", "1", command)  # e.g. afterok:<array job>
    toks = shlex.split(command, comments=True)
    toks = [re.sub(r"\$\{?[A-Z_][A-Z0-9_]*\}?", "0", t) for t in toks]
    return [t for t in toks if t != "..."]


# ------------------------------------------------------------------------------ checkers

def compose(app: str, overrides: list[str]):
    from hydra import compose as hydra_compose, initialize_config_module

    if app == "train":
        from liveditor.train.cli import compose_train_config

        return compose_train_config(overrides)
    if app == "precompute":
        from liveditor.train.precompute import compose_config

        return compose_config("precompute", overrides)
    if app == "edit":
        from liveditor.pipeline.cli import compose_edit_config

        return compose_edit_config(overrides)
    module = {"curate": "liveditor.configs.curate", "eval": "liveditor.configs.eval"}[app]
    with initialize_config_module(module, version_base="1.3"):
        cfg = hydra_compose(app, overrides=overrides, return_hydra_config=True)  # hydra/launcher=... too
    if app == "eval":
        from omegaconf import OmegaConf

        compose("edit", [str(o) for o in OmegaConf.to_container(cfg.edit.overrides)])
    return cfg


def check_overrides(app: str, args: list[str]) -> None:
    args = [a for a in args if a not in ("-m", "--multirun")]  # a Hydra sweep: the overrides still compose
    bad = [a for a in args if "=" not in a]
    assert not bad, f"{app}: arguments {bad} are not key=value overrides"
    compose(app, args)


SBATCH_APPS = {"train.sbatch": "train", "precompute.sbatch": "precompute", "eval.sbatch": "eval", "curate.sbatch": "curate"}


def check_sbatch(args: list[str]) -> None:
    i = 0
    while i < len(args) and args[i].startswith("-"):
        assert re.fullmatch(r"--[a-z][a-z-]*(=\S+)?", args[i]), f"sbatch flag {args[i]!r} is not --name[=value]"
        i += 1
    assert i < len(args), "sbatch: no script"
    script = REPO / args[i]
    assert script.is_file(), f"sbatch script {args[i]} does not exist"
    check_overrides(SBATCH_APPS[script.name], args[i + 1:])


def check_curate_submit(args: list[str], tmp_path: Path) -> None:
    """Run slurm/curate_submit.sh with a stand-in sbatch; then compose its curate overrides."""
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    log = tmp_path / "sbatch.log"
    (fake / "sbatch").write_text(f'#!/usr/bin/env bash\necho "$*" >> {log}\necho $((1000 + $(wc -l < {log})))\n')
    (fake / "sbatch").chmod(stat.S_IRWXU)
    if log.exists():
        log.unlink()
    env = dict(os.environ, PATH=f"{fake}:{os.environ['PATH']}")
    done = subprocess.run(["bash", str(REPO / "slurm" / "curate_submit.sh"), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    calls = log.read_text().splitlines()
    assert len(calls) == 2 and "--array=0-" in calls[0] and "--dependency=afterok:1001" in calls[1], calls
    i = 0
    while args[i].startswith("--"):
        i += 2
    overrides = args[i + 1:]
    assert all(o in calls[0] and o in calls[1] for o in overrides)
    check_overrides("curate", overrides)


def check_liveditor(args: list[str]) -> None:
    from liveditor.cli import build_parser
    from liveditor.demo import Demo, DemoOptions, split_overrides

    parsed = build_parser().parse_args(args)
    if parsed.command == "demo":
        options = DemoOptions(out=Path(parsed.out), smallest=parsed.smallest, wan_dir=parsed.wan_dir, weights=parsed.weights,
                              model=parsed.model, overrides=split_overrides(parsed.overrides))
        Demo(options).configs()
    if parsed.command == "learn":
        from liveditor.learn import LearnBench, LearnOptions
        from liveditor.learn import split_overrides as learn_overrides

        LearnBench(LearnOptions(out=Path(parsed.out or "outputs/learn"), scale=parsed.scale,
                                attentions=tuple(parsed.attention.split(",")), overrides=learn_overrides(parsed.overrides),
                                until=parsed.until)).configs()


def check_edit(args: list[str]) -> None:
    from liveditor.pipeline.cli import _quote, build_parser, compose_edit_config

    parsed = build_parser().parse_args(args)
    assert all("=" in o for o in parsed.overrides), parsed.overrides
    # as liveditor-edit's main() composes it (input, output and prompt become config values)
    compose_edit_config(list(parsed.overrides) + [f"input={_quote(parsed.input)}", f"output={_quote(parsed.output)}",
                                                  f"prompt={_quote(parsed.prompt)}"], parsed.config_name)


def check_export(args: list[str]) -> None:
    from liveditor.train.export import main

    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        try:
            main(args)
        except SystemExit as exc:
            assert exc.code == 0, err.getvalue()
    assert "usage:" not in err.getvalue(), err.getvalue()


def module_help(modules: set[str]) -> dict[str, str]:
    """`--help` text of each `python -m` module, from one subprocess."""
    script = (
        "import io, runpy, sys, json\nfrom contextlib import redirect_stdout\nout = {}\n"
        "for m in sys.argv[1:]:\n"
        "    sys.argv = [m, '--help']; buf = io.StringIO()\n"
        "    try:\n"
        "        with redirect_stdout(buf): runpy.run_module(m, run_name='__main__')\n"
        "        code = 0\n"
        "    except SystemExit as e: code = e.code or 0\n"
        "    out[m] = buf.getvalue() if code == 0 else f'EXIT {code}'\n"
        "print(json.dumps(out))\n")
    done = subprocess.run([sys.executable, "-c", script, *sorted(modules)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    import json

    return json.loads(done.stdout.strip().splitlines()[-1])


PY_MODULE_OVERRIDES = {"liveditor.data_pipeline.bench_pairs": "curate"}  # modules whose positionals are Hydra overrides


def check_python_module(args: list[str], helps: dict[str, str]) -> None:
    if args[0].endswith(".py"):  # a script of the repository: it exists and compiles (it is not run)
        script = REPO / args[0]
        assert script.is_file(), f"python script {args[0]} does not exist"
        compile(script.read_text(), str(script), "exec")
        return
    assert args[0] == "-m", f"python {args}: only `python -m <module>` and `python <script>.py` commands are checked"
    module, rest = args[1], args[2:]
    text = helps[module]
    assert not text.startswith("EXIT"), f"python -m {module} --help failed: {text}"
    for a in rest:
        if a.startswith("--"):
            flag = a.split("=", 1)[0]
            assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text), f"python -m {module}: {flag} is not in its --help"
    overrides = [a for a in rest if "=" in a and not a.startswith("-")]
    if overrides:
        check_overrides(PY_MODULE_OVERRIDES[module], overrides)


def check_make(args: list[str]) -> None:
    targets = set(re.findall(r"^([a-z][\w-]*):", (REPO / "Makefile").read_text(), re.M))
    assert len(args) == 1 and args[0] in targets, f"make {args}: Makefile targets are {sorted(targets)}"


def check_git(args: list[str]) -> None:
    assert args[0] == "show" and ":" in args[1], f"git {args}: only `git show REV:PATH` is documented"
    if not (REPO / ".git").exists():
        return  # an sdist without history: the form above is all that can be checked
    shallow = subprocess.run(["git", "rev-parse", "--is-shallow-repository"], cwd=REPO, capture_output=True, text=True)
    if shallow.stdout.strip() == "true":
        return  # a shallow clone may lack old commits: the form above is all that can be checked
    done = subprocess.run(["git", "cat-file", "-e", args[1]], cwd=REPO, capture_output=True, timeout=30)
    assert done.returncode == 0, f"git show {args[1]}: no such object in this repository"


def check_pip(args: list[str]) -> None:
    from packaging.requirements import Requirement

    assert args[0] in ("install", "wheel"), args
    for a in args[1:]:
        if a.startswith("-"):
            continue
        if a == "wheels":  # the -w folder
            continue
        Requirement(a)


def strip_redirect(toks: list[str]) -> list[str]:
    return toks[: toks.index(">")] if ">" in toks else toks


def check_command(command: str, tmp_path: Path, helps: dict[str, str]) -> None:
    toks = tokens_of(command)
    while toks and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", toks[0]):
        toks = toks[1:]  # VAR=value before the program
    toks = strip_redirect(toks)
    prog, args = toks[0], toks[1:]
    if prog.startswith((".venv/bin/", "$VENV/bin/")):
        prog = prog.rsplit("/", 1)[1]
    apps = {"liveditor-curate": "curate", "liveditor-precompute": "precompute", "liveditor-train": "train", "liveditor-eval": "eval"}
    if prog in apps:
        assert (BIN / prog).exists(), f"console script {prog} is not installed"
        check_overrides(apps[prog], args)
    elif prog == "liveditor":
        check_liveditor(args)
    elif prog == "liveditor-edit":
        check_edit(args)
    elif prog == "liveditor-export":
        check_export(args)
    elif prog == "python":
        check_python_module(args, helps)
    elif prog == "sbatch":
        check_sbatch(args)
    elif prog == "torchrun":  # several processes on one edit: the launcher's options, then liveditor-edit's arguments
        assert (BIN / "torchrun").exists(), "torchrun is not installed"
        assert "-m" in args and args[args.index("-m") + 1] == "liveditor.pipeline.cli", f"torchrun {args}: only liveditor-edit is launched so"
        check_edit(args[args.index("-m") + 2 :])
    elif prog in ("slurm/curate_submit.sh", "bash") and "curate_submit.sh" in " ".join(toks[:2]):
        check_curate_submit(args if prog.endswith(".sh") else args[1:], tmp_path)
    elif prog == "bash" or prog.endswith(".sh"):
        script = REPO / (args[0] if prog == "bash" else prog)
        assert script.is_file(), f"script {script} does not exist"
        done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, f"{script}: bash -n: {done.stderr}"
    elif prog == "make":
        check_make(args)
    elif prog == "git":
        check_git(args)
    elif prog == "pip":
        check_pip(args)
    else:
        raise AssertionError(f"no check for the command {command!r}: add one to tests/test_docs.py")


def test_every_documented_command_is_checked(tmp_path):
    commands = all_commands()
    assert len(commands) >= 30  # the docs hold commands; a broken extractor would find none
    modules = set()
    for _, c in commands:
        toks = tokens_of(c)
        if "python" in toks and "-m" in toks:
            modules.add(toks[toks.index("-m") + 1])
    helps = module_help(modules)
    failures = []
    for name, command in commands:
        try:
            check_command(command, tmp_path, helps)
        except Exception as exc:  # collect every failing command, then report them all
            failures.append(f"{name}: {command}\n    {type(exc).__name__}: {str(exc)[:500]}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("bad", [
    "liveditor-train experiment=stage3 data.shards=/d", "liveditor-curate shots.min_secs=1",
    "liveditor-edit --input a.mp4 --prompt p --output b.mp4 sampling.stepz=3",
    "liveditor demo --smallest train.trainer.max_stepz=3", "liveditor-export only_one_arg",
    "sbatch --array=0-3 slurm/nope.sbatch x=1", "make deploy", "python -m liveditor.kernels.bench --no-such-flag",
    "curl http://localhost/", "bash scripts/no_such_script.sh"])
def test_a_bad_documented_command_is_caught(bad, tmp_path):
    """The checks can fail: a misspelt key, group option, flag or script is reported."""
    helps = {"liveditor.kernels.bench": "usage: bench [--shapes SHAPES]"}
    with pytest.raises(Exception):
        check_command(bad, tmp_path, helps)


def test_relative_links_in_the_docs_resolve():
    """Every `[text](path)` / `![alt](path)` that is not a URL or an anchor points at a file of the repo."""
    broken = []
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            if not (doc.parent / target.split("#")[0]).exists():
                broken.append(f"{doc.name}: {target}")
    assert not broken, broken


# ------------------------------------------------------------------------------ README and CI

def quickstart_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = re.search(r"^## Quickstart\n(.*?)(?=^## )", text, re.S | re.M)
    assert section, "README.md has no '## Quickstart' section"
    return [c for b in re.findall(r"^```(?:bash|sh)\n(.*?)^```", section.group(1), re.S | re.M) for c in commands_of(b)]


def test_readme_quickstart_is_exactly_make_demo_and_make_test():
    commands = [shlex.split(c, comments=True) for c in quickstart_commands()]
    assert commands == [["make", "demo"], ["make", "test"]]
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^demo:.*\n\t\$\(VENV\)/bin/liveditor demo$", makefile, re.M)  # make demo runs the demo


def test_ci_runs_the_readme_test_command():
    test_command = quickstart_commands()[1].split("#")[0].strip()
    ci = [l.strip() for l in (REPO / ".ci" / "run").read_text().splitlines() if l.strip() and not l.strip().startswith("#")]
    assert test_command in ci, f".ci/run does not run the README's test command {test_command!r}: {ci}"


# ------------------------------------------------------------------------------ configs reference

BEGIN, END = "<!-- BEGIN GENERATED: config groups (tests/test_docs.py) -->", "<!-- END GENERATED -->"
APPS = [("curate", "liveditor-curate"), ("precompute", "liveditor-precompute"), ("train", "liveditor-train"),
        ("edit", "liveditor-edit"), ("eval", "liveditor-eval"), ("model", "liveditor-train, liveditor-edit, liveditor demo"),
        ("hydra/launcher", "liveditor-curate -m")]


def describe(path: Path) -> str:
    """The first comment line of a config file that is not a `@package` line; else its top-level keys."""
    lines = path.read_text().splitlines()
    comment = []
    for line in lines:
        if line.startswith("#") and "@package" not in line:
            comment.append(line.lstrip("#").strip())
        elif comment or not line.startswith("#"):
            break
    text = " ".join(comment).strip()
    if text:
        end = re.search(r"(?<=\.)\s", text + " ")  # the first sentence
        return text[: end.start()].replace("|", "\\|")
    keys = [l.split(":")[0] for l in lines if re.match(r"^[a-z_]+:", l)]
    return "keys: " + ", ".join(f"`{k}`" for k in keys)


def render_config_reference() -> str:
    out = [BEGIN, ""]
    for folder, used_by in APPS:
        base = CONFIGS / folder
        out.append(f"### `configs/{folder}/` ({used_by})")
        out.append("")
        out.append("| group | option | what it is |")
        out.append("|---|---|---|")
        primary = sorted(base.glob("*.yaml"))
        groups = sorted(p for p in base.iterdir() if p.is_dir() and p.name != "__pycache__")
        for p in primary:
            if folder in ("model", "hydra/launcher"):
                out.append(f"| `{folder.split('/')[-1]}` | `{p.stem}` | {describe(p)} |")
            else:
                keys = [l.split(":")[0] for l in p.read_text().splitlines()
                        if re.match(r"^[a-z_]+:", l) and not l.startswith(("defaults:", "hydra:"))]
                out.append(f"| (primary config) | `{p.stem}` | {describe(p)} Top-level keys: {', '.join(f'`{k}`' for k in keys)} |")
        for g in groups:
            for p in sorted(g.glob("*.yaml")):
                out.append(f"| `{g.name}` | `{p.stem}` | {describe(p)} |")
        out.append("")
    out.append(END)
    return "\n".join(out)


def test_configs_reference_matches_the_config_folders():
    text = (REPO / "docs" / "configs.md").read_text()
    assert BEGIN in text and END in text
    current = text[text.index(BEGIN): text.index(END) + len(END)]
    assert current == render_config_reference(), (
        "docs/configs.md's generated section is out of date: run `.venv/bin/python tests/test_docs.py` to rewrite it")
    folders = {str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*.yaml")}
    mentioned = set(re.findall(r"### `configs/([^`]+)/`", current))
    assert {f.split("/")[0] if not f.startswith("hydra") else "hydra/launcher" for f in folders} <= mentioned


if __name__ == "__main__":
    path = REPO / "docs" / "configs.md"
    text = path.read_text()
    path.write_text(text[: text.index(BEGIN)] + render_config_reference() + text[text.index(END) + len(END):])
    print(f"rewrote the generated section of {path}")
