"""The install: the committed lock agrees with pyproject.toml, this environment was installed from it,
and the repo's top-level code folders shadow no installed distribution.

Refresh the lock with `make lock` after changing pyproject.toml or requirements-pins.in.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
LOCK = REPO / "requirements.lock"
REFRESH = "the lock is stale: run `make lock` and commit requirements.lock"


def read_lock() -> dict[str, str]:
    """`{canonical name: version}` of every `name==version` line of requirements.lock."""
    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9._-]+)==([^\s;]+)(\s*;.*)?", line)
        assert m, f"requirements.lock line {line!r} is not `name==version`: {REFRESH}"
        pins[canonicalize_name(m.group(1))] = m.group(2)
    return pins


def declared_requirements() -> list[Requirement]:
    """pyproject's dependencies plus the `dev` extra and requirements-pins.in, for this platform."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"]) + list(project["optional-dependencies"]["dev"])
    for line in (REPO / "requirements-pins.in").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            lines.append(line)
    env = default_environment()
    reqs = [Requirement(line) for line in lines]
    return [r for r in reqs if r.marker is None or r.marker.evaluate(env)]


def test_lock_pins_every_declared_requirement_within_its_range():
    pins = read_lock()
    problems = []
    for req in declared_requirements():
        name = canonicalize_name(req.name)
        if name not in pins:
            problems.append(f"{req} is declared but not pinned")
        elif req.specifier and not req.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{req} is declared but the lock pins {name}=={pins[name]}")
    assert not problems, f"requirements.lock disagrees with pyproject.toml: {'; '.join(problems)}: {REFRESH}"


def test_lock_is_for_this_interpreter():
    header = LOCK.read_text().splitlines()[:3]
    assert any(f"Python {sys.version_info.major}.{sys.version_info.minor}" in h for h in header), (
        f"requirements.lock was not compiled for Python {sys.version_info.major}.{sys.version_info.minor}: {REFRESH}"
    )


@pytest.mark.lock_installed
def test_environment_matches_the_lock():
    """What `make test` installed is what the lock says (pip resolved nothing on its own)."""
    wrong = []
    for name, version in read_lock().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            wrong.append(f"{name}=={version} is not installed")
            continue
        if installed != version:
            wrong.append(f"{name} is {installed}, the lock pins {version}")
    assert not wrong, "this environment was not installed from requirements.lock: " + "; ".join(wrong[:10]) + (
        " (delete .venv and rerun `make test`)"
    )


SHADOW_PROBE = r"""
import importlib, json, sys
out = {}
for name in ("kernels", "train", "eval", "data_pipeline", "configs"):
    try:
        module = importlib.import_module(name)
        out[name] = getattr(module, "__file__", None) or str(list(getattr(module, "__path__", [])))
    except ModuleNotFoundError as exc:
        out[name] = "missing: " + str(exc)
import liveditor.kernels, liveditor.train, liveditor.eval, liveditor.data_pipeline, liveditor.configs
out["liveditor.kernels"] = liveditor.kernels.__file__
out["liveditor.eval"] = liveditor.eval.__file__
print(json.dumps(out))
"""


def _probe(args: list[str], cwd: Path, pythonpath: str | None = None) -> dict:
    import json

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _check_no_shadowing(found: dict) -> None:
    for name in ("kernels", "train", "eval", "data_pipeline", "configs"):
        assert str(REPO / name) not in found[name], f"`import {name}` resolved to the repo folder: {found[name]}"
    assert found["liveditor.kernels"] == str(REPO / "kernels" / "__init__.py")
    assert found["liveditor.eval"] == str(REPO / "eval" / "__init__.py")


@pytest.mark.parametrize("how", ["python -c", "python -m", "notebook"])
def test_top_level_folders_shadow_nothing_from_the_repo_root(how, tmp_path):
    """From the repo root, with the root first on sys.path as `python -m`, `python -c` and a notebook
    started there put it, `import kernels` is Hugging Face's distribution and `import train` fails,
    while `liveditor.kernels` is still this repo's folder."""
    try:
        metadata.version("kernels")
    except metadata.PackageNotFoundError:
        pytest.fail("Hugging Face's `kernels` distribution is not installed (it comes with the lock via transformers)")
    pythonpath = None
    if how == "python -c":
        args = [sys.executable, "-c", SHADOW_PROBE]
    elif how == "python -m":  # `python -m` puts the working directory (the root) first, before PYTHONPATH
        (tmp_path / "shadow_probe.py").write_text(SHADOW_PROBE)
        args, pythonpath = [sys.executable, "-m", "shadow_probe"], str(tmp_path)
    else:  # a kernel started in the root has '' and the root on sys.path, as IPython does
        args = [sys.executable, "-c", f"import sys; sys.path[:0] = ['', {str(REPO)!r}]\n" + SHADOW_PROBE]
    found = _probe(args, REPO, pythonpath)
    _check_no_shadowing(found)
    assert "site-packages" in found["kernels"], found["kernels"]
    for name in ("train", "eval", "data_pipeline", "configs"):
        assert found[name].startswith("missing:"), f"`import {name}` found {found[name]}"


def test_transformers_and_diffusers_import_from_the_repo_root():
    """The failure that started this: transformers probes `from kernels import ...` and diffusers'
    Wan VAE imports transformers; with the repo root first on sys.path both must still import."""
    code = ("import diffusers.models.autoencoders.autoencoder_kl_wan as m, transformers, kernels; "
            "print(kernels.__file__)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() != str(REPO / "kernels" / "__init__.py")
    assert "site-packages" in done.stdout


def test_console_script_runs_from_the_repo_root():
    script = Path(sys.executable).parent / "liveditor"
    if not script.exists():
        pytest.fail(f"console script {script} is missing: the package is not installed into this environment")
    done = subprocess.run([str(script), "--help"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
