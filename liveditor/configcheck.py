"""One check of every job's Hydra config before any work: unknown keys, value types, ranges.

`liveditor-train`, `-precompute` and `-edit` compose their config with `compose(name, overrides)`
(`compose_edit_config` for the editor's, which `EditPipeline.from_pretrained` also uses);
`liveditor-curate` and `liveditor-eval` (`@hydra.main` apps) call `check_command_line` before Hydra
starts and `check_config` in each job. A mistake raises `ConfigError`, one line naming the key, what
it must be and what it got, which the CLIs print before exiting 2, before any input path is looked at.
Code that composes a job's config itself (`liveditor demo`, `liveditor learn`) calls
`check_config(cfg, name, overrides)`.

- **Keys.** A config's schema is the packaged config composed with the same group choices
  (`model=tiny`, `strategy=ddp`, `experiment=stage1`) and none of the value overrides. A key it lacks
  came in through `+key=value`, which Hydra accepts silently: an error naming the key and the nearest
  known one. Mappings that are empty in the packaged config (`leaderboard.compare`) and the `OPEN`
  sections take any key; the `trainer` section and any node with `_target_` take the parameters of
  the object they build.
- **Types.** A value must be of the kind of its packaged default: a number, true/false, a list (each
  element like the default's first one), a mapping. A string, null or interpolated default takes
  anything, and null passes wherever no rule forbids it.
- **Ranges.** `RULES`: integers, bounds and choices per config. `CHECKS` hands sections to the
  validators that already exist (the DiT config's, `check_edit_values`).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional

from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

CONFIG_NAMES = ("train", "precompute", "curate", "edit", "eval")


class ConfigError(ValidationError):
    """A key or value a job's config must not have. An OmegaConf `ValidationError` (so a `ValueError`
    too): code that reports OmegaConf's errors reports this one as well."""


@dataclass(frozen=True)
class Rule:
    """What a value must be: an integer or a number within bounds, or one of `choices`."""

    kind: str  # int | number | choice
    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple = ()  # the values of a choice; for a number, values allowed besides the range
    null: bool = False  # null is allowed too

    def accepts(self, value) -> bool:
        if value is None:
            return self.null
        if value in self.choices and not isinstance(value, bool):
            return True
        if self.kind == "choice":
            return False
        if isinstance(value, bool) or not isinstance(value, int if self.kind == "int" else (int, float)):
            return False
        return ((self.low is None or value > self.low or (value == self.low and not self.low_open))
                and (self.high is None or value < self.high or (value == self.high and not self.high_open)))

    @property
    def wants(self) -> str:
        if self.kind == "choice":
            text = "one of " + ", ".join(str(c) for c in self.choices)
        else:
            text = "an integer" if self.kind == "int" else "a number"
            if self.high is not None:
                text += f" in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
            elif self.low is not None:
                text += f" {'>' if self.low_open else '>='} {self.low:g}"
            text += "".join(f" or {c}" for c in self.choices)
        return text + (" or null" if self.null else "")


def integer(low=None, high=None, null=False) -> Rule:
    return Rule("int", low, high, null=null)


def number(low=None, high=None, low_open=False, high_open=False, null=False) -> Rule:
    return Rule("number", low, high, low_open, high_open, null=null)


def positive(null=False) -> Rule:
    return number(0, low_open=True, null=null)


def one_of(*choices, null=False) -> Rule:
    return Rule("choice", choices=choices, null=null)


DTYPE_NAMES = ("float32", "float16", "bfloat16")
RULES = {
    "train": {
        "seed": integer(0), "sequence_parallel": integer(1), "trainable": one_of("all", "editor_only"), "text_dropout": number(0, 1),
        "timesteps.sampler": one_of("shifted_uniform", "logit_normal"), "timesteps.shift": positive(), "timesteps.logit_std": positive(),
        "timesteps.min_timestep": number(0, 1000), "timesteps.max_timestep": number(0, 1000), "timesteps.weighting": one_of("none", "cosmap"),
        "optim.lr": number(0),  # 0 is a dry run of the loop (the learning eval's tests train at lr 0)
        "optim.weight_decay": number(0), "optim.eps": positive(), "optim.warmup_steps": integer(0),
        "optim.schedule": one_of("constant", "cosine"), "optim.decay_steps": integer(1, null=True), "optim.min_lr_ratio": number(0, 1),
        "ema.decay": number(0, 1, low_open=True, high_open=True, null=True), "ema.every_n_steps": integer(1),
        "validation.every_n_steps": integer(0), "validation.num_samples": integer(1), "validation.steps": integer(1),
        "validation.guidance_scale": number(0), "validation.shift": positive(), "validation.sampler": one_of("unipc", "euler"),
        "data.batch_size": integer(1), "data.num_workers": integer(0), "data.shuffle_buffer": integer(0), "data.holdout_shards": integer(0),
        "data.prefetch_factor": integer(1, null=True),
        "trainer.max_steps": integer(1), "trainer.accumulate_grad_batches": integer(1), "trainer.num_nodes": integer(1),
        "trainer.log_every_n_steps": integer(1), "trainer.gradient_clip_val": number(0, null=True),
        "callbacks.checkpoint.every_n_steps": integer(1), "callbacks.checkpoint.keep_last": Rule("int", 1, choices=(-1,)),
        "callbacks.throughput.every_n_steps": integer(1), "callbacks.throughput.peak_tflops": positive(null=True),
        "callbacks.progress": one_of("steps", "tqdm"),
    },
    "precompute": {
        "encoders.text_len": integer(1), "video.frames": one_of("trim", "reject"), "video.min_frames": integer(1),
        "latent_stats.min_std": positive(), "latent_stats.max_std": positive(), "latent_stats.max_abs_mean": positive(),
        "partition.count": integer(1), "partition.index": integer(0), "runtime.dtype": one_of(*DTYPE_NAMES),
        "runtime.vae_dtype": one_of(*DTYPE_NAMES),
    },
    "curate": {
        "partition.count": integer(1), "partition.index": integer(0, null=True),
        "probe.decoder": one_of("auto", "decord", "pyav"), "probe.check_frames": integer(0), "probe.chunk_size": integer(1),
        "shots.min_seconds": number(0), "shots.max_seconds": positive(), "shots.split_seconds": positive(), "shots.trim_frames": integer(0),
        "shots.chunk_size": integer(1),
        "filters.min_seconds": number(0), "filters.max_seconds": positive(), "filters.min_short_side": integer(0),
        "filters.min_fps": number(0), "filters.max_fps": positive(), "filters.sample_frames": integer(2),
        "filters.decoder": one_of("pyav", "decord"), "filters.analysis_short_side": integer(1), "filters.motion_gap_seconds": positive(),
        "filters.min_motion": number(0), "filters.max_motion": number(0), "filters.min_sharpness": number(0), "filters.chunk_size": integer(1),
        "clip_scores.batch_size": integer(1), "clip_scores.frames_per_clip": integer(1), "clip_scores.chunk_size": integer(1),
        "pairs.synthetic.edits_per_clip": integer(0), "pairs.target_fps": positive(), "pairs.max_frames": integer(1),
        "pairs.short_side": integer(16), "pairs.below_short_side": one_of("keep_native", "reject"), "pairs.decode_threads": integer(0),
        "pairs.crf": integer(0, 51), "pairs.score_frames": integer(1), "pairs.chunk_size": integer(1),
        "dedup.max_hamming": integer(0, 64), "dedup.max_colour_difference": number(0, 255),
        "shard.max_shard_bytes": integer(1), "shard.workers": integer(0),
        "report.histogram_bins": integer(1), "report.thumbnails": integer(0), "report.thumbnail_height": integer(1),
        "report.max_sources": integer(0),
    },
    "eval": {
        "mode": one_of("generate", "score", "all", "leaderboard"), "shard.count": integer(1), "shard.index": integer(0, null=True),
        "data.ivebench.frame_folder_fps": positive(), "metrics.batch_frames": integer(1),
        "metrics.grounding_dino.box_threshold": number(0, 1), "metrics.grounding_dino.text_threshold": number(0, 1),
        "judge.max_retries": integer(0), "judge.backoff_s": number(0), "judge.timeout_s": positive(), "judge.max_tokens": integer(1),
        "judge.jpeg_quality": integer(1, 100), "judge.parallel_requests": integer(1),
    },
}
# Sections whose keys are the user's to choose (None), or the parameters of an object's constructor.
OPEN = {
    "train": {"trainer": "lightning.pytorch.Trainer"},
    "curate": {"pairs.generate.instructions.categories": None},
}


def _edit_values(cfg, node) -> None:
    from liveditor.pipeline.checks import check_edit_values

    check_edit_values(cfg)


def _dit_values(cfg, node) -> None:
    from liveditor.pipeline.checks import check_dit_values

    check_dit_values(node)


def _eval_edit_overrides(cfg, node) -> None:
    """Generating runs the editor with `edit.overrides` on configs/edit: check them now, not at the first item."""
    if cfg.get("mode") in ("generate", "all"):
        try:
            compose("edit", [str(o) for o in cfg.edit.overrides or []], str(cfg.edit.config_name))
        except ConfigError as exc:
            raise ConfigError(f"edit.overrides: {exc}") from None


# Sections handed to an existing validator (`fn(cfg, node)`, raising a ValueError naming the key); "" is the whole config.
CHECKS = {"train": {"model.dit": _dit_values}, "edit": {"": _edit_values}, "eval": {"": _eval_edit_overrides}}


# ---------------------------------------------------------------------------------------------- composing

@contextmanager
def _hydra(name: str, config_name: Optional[str] = None):
    """Hydra initialised on the packaged config folder of job `name`; yields the config's name. A
    Hydra already initialised (inside a `@hydra.main` app) is put back afterwards."""
    from importlib.resources import files

    from hydra import initialize_config_dir, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    if name not in CONFIG_NAMES:
        raise ValueError(f"unknown config {name!r}: one of {', '.join(CONFIG_NAMES)}")
    outer = GlobalHydra.instance()
    saved = outer.hydra if outer.is_initialized() else None
    outer.clear()
    try:
        if name == "edit":  # configs/edit/edit.yaml picks its model from the shared configs/model group
            with initialize_config_module("liveditor.configs", version_base="1.3"):
                yield config_name or "edit/edit"
        else:
            with initialize_config_dir(str(files("liveditor.configs") / name), version_base="1.3"):
                yield config_name or name
    finally:
        if saved is not None:
            GlobalHydra.instance().clear()
            GlobalHydra.instance().initialize(saved)


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split("Config search path")[0].split())


def compose(name: str, overrides=(), config_name: Optional[str] = None):
    """Job `name`'s packaged config with Hydra `overrides`, checked (`check_config`); raises ConfigError."""
    from hydra import compose as hydra_compose
    from hydra.errors import HydraException

    overrides = [str(o) for o in overrides]
    with _hydra(name, config_name) as cname:
        try:
            cfg = hydra_compose(cname, overrides=overrides)
        except HydraException as exc:
            raise ConfigError(_composition_error(exc, name, overrides, config_name)) from None
    check_config(cfg, name, overrides, config_name)
    return cfg


def compose_edit_config(overrides=(), config_name: str = "edit/edit", strict: bool = True):
    """The resolved `edit` config with Hydra `overrides` applied (packaged `liveditor.configs`).

    With `strict`, the config is checked (`check_config`): a key the config does not have,
    also when added with `+key=value` (Hydra would accept that silently), a value of the wrong type or
    out of range raises `ConfigError` naming the key.
    """
    if strict:
        return compose("edit", overrides, config_name)
    from hydra import compose as hydra_compose, initialize_config_module

    with initialize_config_module("liveditor.configs", version_base="1.3"):
        return hydra_compose(config_name, overrides=list(overrides))


def _composition_error(exc: Exception, name: str, overrides: list, config_name) -> str:
    """One line for a failed composition; an override of a key the config lacks is named like `+key`."""
    import re

    from hydra import compose as hydra_compose

    text = str(exc.__cause__ or "") + " " + str(exc)
    missing = re.search(r"Could not override '([^']+)'", str(exc))
    if not (missing and "not in struct" in text):
        return _one_line(exc)
    key = missing.group(1)
    top_level = [o for o in overrides if not o.startswith(("+", "~")) and "." not in o.split("=", 1)[0]]  # group choices among them
    try:
        with _hydra(name, config_name) as cname:
            schema = hydra_compose(cname, overrides=top_level)
    except Exception:
        return _one_line(exc)
    section, _, leaf = key.rpartition(".")
    node = OmegaConf.select(schema, section) if section else schema
    if OmegaConf.is_dict(node) and _takes(node, section, leaf, name):
        value = next((o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] == key), "...")
        return f"'{key}' is not in the {name} config: add it with +{key}={value}"
    return _unknown_message(key, schema, name)


def _schema(name: str, overrides, config_name: Optional[str]):
    """The packaged config with the group choices of `overrides` and none of their values."""
    from hydra import compose as hydra_compose
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = [str(o) for o in overrides]
    with _hydra(name, config_name) as cname:
        groups = set(hydra_compose(cname, overrides=overrides, return_hydra_config=True).hydra.runtime.choices)
        parsed = OverridesParser.create().parse_overrides(overrides)
        return hydra_compose(cname, overrides=[o.input_line for o in parsed if o.key_or_group in groups])


def check_command_line(name: str, argv) -> None:
    """For a `@hydra.main` CLI: compose and check the overrides of `argv` (a sweep's first values)
    before Hydra starts, so a bad key is one line and exit 2, not Hydra's report. Arguments other than
    `-m`/`--multirun` that are flags (`--help`, `--cfg job`, ...) are left to Hydra."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    args = [a for a in argv if a not in ("-m", "--multirun")]
    if any(a.startswith("-") for a in args):
        return
    try:
        parsed = OverridesParser.create().parse_overrides(args)
    except HydraException as exc:
        raise ConfigError(_one_line(exc)) from None
    first = [f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}" if o.is_sweep_override() else o.input_line for o in parsed]
    compose(name, first)


# ---------------------------------------------------------------------------------------------- checking

def check_config(cfg, name: str, overrides=(), config_name: Optional[str] = None) -> None:
    """Check composed config `cfg` of job `name` (one of `CONFIG_NAMES`), composed with `overrides`:
    keys against the schema, then the sections' own validators, then `RULES`, then value types.
    Raises ConfigError (one line, naming the key)."""
    schema = _schema(name, overrides, config_name)
    _check_keys(cfg, schema, name)
    for section, check in CHECKS.get(name, {}).items():
        node = OmegaConf.select(cfg, section) if section else cfg
        if node is not None:
            try:
                check(cfg, node)
            except ConfigError:
                raise
            except ValueError as exc:
                raise ConfigError(_one_line(exc)) from None
    rules = RULES.get(name, {})
    for key, rule in rules.items():
        try:
            value = OmegaConf.select(cfg, key, default=KeyError, throw_on_missing=True)
        except Exception:  # an unset mandatory value (`???`) or what it interpolates: the job names it
            continue
        if value is not KeyError:
            value = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
            if not rule.accepts(value):
                raise ConfigError(f"{key} must be {rule.wants}, got {value!r}")
    _check_types(cfg, schema, set(rules))


def _takes(schema_node, section: str, key: str, name: str) -> bool:
    """Whether section `section` (its node in the schema) accepts a key it does not list."""
    if section in OPEN.get(name, {}):
        target = OPEN[name][section]
        return target is None or key in _parameters(target)
    if len(schema_node) == 0:
        return True
    target = schema_node.get("_target_") if "_target_" in schema_node else None
    return target is not None and key in _parameters(str(target))


def _parameters(target: str):
    """Keyword parameters of callable `target` ("package.module.Name"); everything when it takes **kwargs."""
    module, _, attr = target.rpartition(".")
    try:
        params = inspect.signature(getattr(importlib.import_module(module), attr)).parameters.values()
    except (ImportError, AttributeError, ValueError, TypeError):
        return set()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return _Everything()
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


class _Everything:
    def __contains__(self, _) -> bool:
        return True


def _check_keys(cfg, schema, name: str, root=None, path: str = "") -> None:
    root = schema if root is None else root
    for key in cfg.keys():
        key = str(key)
        if not path and key == "hydra":
            continue
        if key not in schema.keys():  # (`in schema` is False for a mandatory `???` value)
            if not _takes(schema, path.rstrip("."), key, name):
                raise ConfigError(_unknown_message(path + key, root, name))
            continue
        child, known = cfg._get_node(key), schema._get_node(key)
        if OmegaConf.is_dict(child) and OmegaConf.is_dict(known):
            _check_keys(child, known, name, root, f"{path}{key}.")


def _dotted(node, path: str = "") -> list[str]:
    out = []
    for key in node.keys():
        child = node._get_node(key)
        out += _dotted(child, f"{path}{key}.") if OmegaConf.is_dict(child) and len(child) else [f"{path}{key}"]
    return out


def _unknown_message(key: str, root, name: str) -> str:
    """`unknown config key 'a.b': a has x, y; did you mean 'a.y'?` (`root`: the schema)."""
    section, _, leaf = key.rpartition(".")
    node = OmegaConf.select(root, section) if section else root
    known = [str(k) for k in node.keys()] if OmegaConf.is_dict(node) else []
    target = OPEN.get(name, {}).get(section) or (str(node["_target_"]) if "_target_" in known else None)
    if target:
        parameters = _parameters(target)
        known += sorted(parameters) if isinstance(parameters, set) else []
        message = f"unknown config key '{key}': not a parameter of {target}"
    else:
        message = f"unknown config key '{key}': {section or f'the {name} config'} has {', '.join(known)}"
    everywhere = _dotted(root)
    near = ([k for k in everywhere if k.rpartition(".")[2] == leaf]  # the right key in another section
            or [f"{section}.{k}" if section else k for k in difflib.get_close_matches(leaf, known, n=1)]
            or difflib.get_close_matches(key, everywhere, n=1))
    return message + (f"; did you mean '{near[0]}'?" if near else "")


def _check_types(cfg, schema, ruled: set, path: str = "") -> None:
    for key in cfg.keys():
        key, full = str(key), f"{path}{key}"
        if (not path and key == "hydra") or key not in schema.keys() or full in ruled:
            continue
        child, default = cfg._get_node(key), schema._get_node(key)
        if OmegaConf.is_dict(child) and OmegaConf.is_dict(default):
            _check_types(child, default, ruled, full + ".")
            continue
        if any(OmegaConf.is_missing(n, key) or OmegaConf.is_interpolation(n, key) for n in (cfg, schema)):
            continue  # an interpolation's target is checked on its own
        try:
            value, default = (OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v for v in (cfg[key], schema[key]))
        except Exception:  # an interpolation inside a list: the job resolves it
            continue
        _check_kind(full, value, default)


def _check_kind(key: str, value, default) -> None:
    """`value` is of the kind of `default` (a string or null default takes anything)."""
    if value is None or default is None or isinstance(default, str):
        return
    if isinstance(default, list):
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        for i, item in enumerate(value if default else []):
            _check_kind(f"{key}[{i}]", item, default[0])
        return
    if isinstance(default, bool):
        ok, wants = isinstance(value, bool), "true or false"
    elif isinstance(default, (int, float)):  # an integer default takes a number: RULES say where it must be whole
        ok, wants = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    elif isinstance(default, dict):
        ok, wants = isinstance(value, dict), "a mapping"
    else:
        return
    if not ok:
        raise ConfigError(f"{key} must be {wants}, got {value!r}")


def run_hydra_main(name: str, prog: str, argv, app) -> None:
    """Run the `@hydra.main` app `app()` of job `name` on `argv` (default: the command line) after
    `check_command_line`: a bad key, type or range is one line on stderr as `prog` and exit 2."""
    import sys

    args = sys.argv[1:] if argv is None else [str(a) for a in argv]
    try:
        check_command_line(name, args)
    except ConfigError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        sys.exit(2)
    command_line, sys.argv = sys.argv, [sys.argv[0], *args]  # @hydra.main reads sys.argv
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        sys.argv = command_line
