"""Numbered stages under one output folder, each reused when it finished with the same settings.

The runner behind `liveditor demo` and `liveditor learn`: stage `name` writes into `<out>/<name>/`;
`demo_settings.json` there records the settings it started with and `demo_stage.json` the settings,
outputs (relative to `<out>` where inside it, so a folder can be moved) and seconds once it finished. A rerun skips a finished stage whose record has the same
settings and whose outputs exist; an interrupted stage runs again through its job's own resume; a
folder made with other settings is an error naming it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

STAGE_RECORD = "demo_stage.json"
STAGE_STARTED = "demo_settings.json"


class StageError(ValueError):
    """A stage's option or output folder is wrong; the message names it and the fix."""


def split_overrides(args: Sequence[str], prefixes: Sequence[str], error: type = StageError) -> dict:
    """`["train.trainer.max_steps=5", ...]` -> `{"train": ["trainer.max_steps=5"], ...}` for each of
    `prefixes` (the stages a runner passes overrides to); an argument without one of them raises `error`."""
    out: dict = {p: [] for p in prefixes}
    for arg in args:
        key = arg.split("=", 1)[0].lstrip("+~")
        prefix = key.split(".", 1)[0]
        if "=" not in arg or "." not in key or prefix not in prefixes:
            raise error(f"override '{arg}' must look like <stage>.<key>=<value> with <stage> one of "
                        f"{', '.join(prefixes)} (e.g. train.trainer.max_steps=10)")
        sign = arg[: len(arg) - len(arg.lstrip("+~"))]
        out[prefix].append(sign + arg.lstrip("+~")[len(prefix) + 1:])
    return out


@dataclass
class StageResult:
    name: str
    status: str          # ran | reused | skipped
    seconds: float
    outputs: dict        # label -> path


class StageRunner:
    """Runs named stages in order under `out`; subclasses give `STAGES` and `settings(stage)`."""

    STAGES: tuple[str, ...] = ()
    error = StageError

    def __init__(self, out: Path, echo: Callable[[str], None] = print):
        self.out = Path(out).expanduser().resolve()
        self.echo = echo
        self.results: list[StageResult] = []

    def d(self, stage: str) -> Path:
        return self.out / stage

    def settings(self, stage: str) -> dict:
        """What a stage's outputs depend on: a finished stage with other settings is not reused."""
        raise NotImplementedError

    def _settings(self, stage: str) -> dict:
        return json.loads(json.dumps(self.settings(stage)))  # tuples -> lists, as read back

    def _record(self, stage: str) -> Path:
        return self.d(stage) / STAGE_RECORD

    def _check_folder(self, stage: str) -> Optional[dict]:
        """The finished record when the stage can be reused; None to run it. Raises on a folder of other settings."""
        want = self._settings(stage)
        for path in (self._record(stage), self.d(stage) / STAGE_STARTED):
            if path.exists():
                have = json.loads(path.read_text())
                if have.get("settings") != want:
                    raise self.error(f"'{self.d(stage)}' was made with other settings ({path.name}: {have.get('settings')}, "
                                     f"now {want}): remove that folder to redo the stage, or give another --out")
        rec = self._record(stage)
        return json.loads(rec.read_text()) if rec.exists() else None

    def _relative(self, path: str) -> str:
        """A path inside `out` as relative to it (records stay valid when the folder moves to another machine)."""
        p = Path(path)
        return str(p.relative_to(self.out)) if p.is_absolute() and p.is_relative_to(self.out) else str(p)

    def _path(self, recorded: str) -> Path:
        return self.out / recorded if not Path(recorded).is_absolute() else Path(recorded)

    def _write_json(self, path: Path, obj) -> None:
        from liveditor.files import atomic_write_text

        atomic_write_text(path, json.dumps(obj, indent=2) + "\n")

    def stage(self, name: str, fn: Callable[[], dict], skip_reason: Optional[str] = None) -> StageResult:
        """Run (or reuse, or skip) stage `name`; `fn` returns `{label: path}` of its outputs."""
        title = f"[{self.STAGES.index(name) + 1}/{len(self.STAGES)}] {name}"
        if skip_reason:
            self.echo(f"{title}: skipped ({skip_reason})")
            result = StageResult(name, "skipped", 0.0, {})
        elif (done := self._check_folder(name)) is not None and all(self._path(p).exists() for p in done["outputs"].values()):
            self.echo(f"{title}: reused (finished earlier, {done['seconds']:.0f} s; {self._record(name)})")
            result = StageResult(name, "reused", 0.0, {k: str(self._path(p)) for k, p in done["outputs"].items()})
        else:
            self.echo(f"{title}: running ...")
            self.d(name).mkdir(parents=True, exist_ok=True)
            self._write_json(self.d(name) / STAGE_STARTED, {"settings": self._settings(name)})
            start = time.perf_counter()
            outputs = {k: str(v) for k, v in fn().items()}
            seconds = time.perf_counter() - start
            self._write_json(self._record(name), {"settings": self._settings(name), "seconds": seconds,
                                                  "outputs": {k: self._relative(p) for k, p in outputs.items()}})
            self.echo(f"{title}: done in {seconds:.1f} s")
            result = StageResult(name, "ran", seconds, outputs)
        self.results.append(result)
        return result

    def compose_all(self, makers: dict, overrides: dict) -> dict:
        """`{job: make()}` for every job's config maker, without running anything: a config that does not
        compose with the user's `<job>.key=value` overrides is one error naming them (before any stage runs)."""
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        out = {}
        for job, make in makers.items():
            try:
                out[job] = make()
            except (HydraException, OmegaConfBaseException, ValueError) as exc:
                raise self.error(f"the {job} stage's config does not compose with the {job}.* overrides "
                                 f"{overrides.get(job, [])}: {exc}") from exc
        return out

    def write_summary(self, total: float, **extra) -> None:
        """`<out>/summary.json`: every stage's status, seconds and outputs, plus `extra`."""
        rows = [{"stage": r.name, "status": r.status, "seconds": round(r.seconds, 1), "outputs": r.outputs} for r in self.results]
        self._write_json(self.out / "summary.json", {"out": str(self.out), "total_seconds": round(total, 1), "stages": rows, **extra})

    def print_summary(self, title: str, total: float) -> None:
        """Where every stage's outputs live, one line each."""
        self.echo("")
        self.echo(f"{title}: finished in {total:.0f} s. Where everything is:")
        for r in self.results:
            head = f"  {r.name:<10} {r.status:<7} {r.seconds:7.1f} s"
            if not r.outputs:
                self.echo(head)
            for j, (label, path) in enumerate(r.outputs.items()):
                self.echo(f"{head if j == 0 else ' ' * len(head)}  {label}: {path}")
        self.echo(f"  summary: {self.out / 'summary.json'}")
