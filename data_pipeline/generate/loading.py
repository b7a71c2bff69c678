"""The one place the generation models are loaded: config nodes, local model folders, weight fingerprints.

Every model comes from a local folder named in config (`pairs.generate.<node>.path`); nothing is
downloaded (`local_files_only=True`). A folder that is missing, or that is not a diffusers pipeline
(no `model_index.json`), or whose pipeline class is not one the wrapper knows how to call, is an error
that names the config key and what the folder should hold.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch

# Weight files are fingerprinted by size and their first and last MiB instead of a full SHA-256:
# hashing a 14B pipeline's ~60 GB would add minutes to every array task's start, while random or
# fine-tuned weights differ in their leading bytes and a truncated copy differs in size and tail.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".msgpack", ".onnx")
_EDGE_BYTES = 1 << 20


class ModelConfigError(ValueError):
    """A generation model's config node or folder is wrong; the message names the key and the fix."""


def config_from(cls, cfg, key: str):
    """Build dataclass `cls` from a dataclass, a mapping or an OmegaConf node at config key `key`;
    an unknown field is an error naming `key.<field>` and the known fields."""
    if isinstance(cfg, cls):
        return cfg
    if dataclasses.is_dataclass(cfg):
        cfg = dataclasses.asdict(cfg)
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            cfg = OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # omegaconf comes with hydra; plain mappings work without it
        pass
    if not isinstance(cfg, Mapping):
        raise ModelConfigError(f"{key} must be a mapping of settings, got {type(cfg).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(cfg) - set(names))
    if unknown:
        raise ModelConfigError(f"{key} has unknown setting(s) {', '.join(f'{key}.{u}' for u in unknown)}: "
                               f"known settings are {', '.join(names)}")
    return cls(**dict(cfg))


def check_model_dir(path, key: str, what: str, marker: str = "model_index.json") -> Path:
    """The folder `path` from config key `key`, checked to exist and hold `marker`; `what` says what
    the folder should be (used in the error)."""
    if path is None or str(path).strip() == "":
        raise ModelConfigError(f"{key} is not set: point it at a local {what}")
    folder = Path(os.path.expanduser(str(path)))
    if not folder.is_dir():
        raise ModelConfigError(f"{key}={str(path)!r} does not exist or is not a folder: point it at a local {what}")
    if not (folder / marker).is_file():
        raise ModelConfigError(f"{key}={str(path)!r} has no {marker}, so it is not a {what} "
                               f"(save one with save_pretrained, or download the model's diffusers-format repository)")
    return folder


def resolve_pipeline_class(folder: Path, requested: str, supported, key: str) -> str:
    """The diffusers pipeline class to load: `requested`, or with `auto` the `_class_name` of
    `folder/model_index.json`; either must be one of `supported`."""
    names = ", ".join(sorted(supported))
    if requested == "auto":
        try:
            found = json.loads((folder / "model_index.json").read_text()).get("_class_name")
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelConfigError(f"{key}: could not read {folder / 'model_index.json'} ({exc})") from exc
        if found not in supported:
            raise ModelConfigError(f"{key}=auto: {folder / 'model_index.json'} names pipeline class {found!r}, which this "
                                   f"stage cannot call; supported classes are {names}")
        return found
    if requested not in supported:
        raise ModelConfigError(f"{key}={requested!r} is not a supported pipeline class: choose auto or one of {names}")
    return requested


def cast_keeping_fp32(model, dtype: torch.dtype):
    """Cast `model`'s floating parameters and buffers to `dtype`, but those inside the modules its
    class keeps in float32 (`_keep_in_fp32_modules`, matched by name part as diffusers does) to float32."""
    keep = getattr(type(model), "_keep_in_fp32_modules", None) or []
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point():
            tensor.data = tensor.data.to(torch.float32 if any(k in name.split(".") for k in keep) else dtype)
    return model


def load_pipeline(pipeline_cls, folder: Path, key: str, device: str, dtype: torch.dtype, cpu_offload: bool = False):
    """`pipeline_cls.from_pretrained(folder)` offline in `dtype`, on `device` (or with diffusers' model
    CPU offload onto it); a folder that does not load is an error naming `key`."""
    try:
        pipe = pipeline_cls.from_pretrained(str(folder), dtype=dtype, local_files_only=True)
    except Exception as exc:  # diffusers raises several types for missing or mismatched components
        raise ModelConfigError(f"{key}={str(folder)!r} did not load as {pipeline_cls.__name__}: {exc}") from exc
    if cpu_offload:  # accelerate's hooks (a dependency)
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)  # the stage shows one bar over its rows
    return pipe


def weights_fingerprint(folder) -> str:
    """SHA-256 over every file under `folder` (sorted by relative path): its path and size, the whole
    content of small files (configs, tokenizers, schedulers) and the first and last MiB of weight
    files (`WEIGHT_SUFFIXES`); see the note on `WEIGHT_SUFFIXES`."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = file.relative_to(folder).as_posix()
        size = file.stat().st_size
        digest.update(f"{rel}\0{size}\0".encode())
        with open(file, "rb") as fh:
            if file.name.endswith(WEIGHT_SUFFIXES) and size > 2 * _EDGE_BYTES:
                digest.update(fh.read(_EDGE_BYTES))
                fh.seek(size - _EDGE_BYTES)
                digest.update(fh.read(_EDGE_BYTES))
            else:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def generators(seeds) -> list[torch.Generator]:
    """One CPU generator per sample, seeded from `seeds`: a sample's noise is drawn from its own
    generator, so it does not depend on its batch neighbours or on the device."""
    return [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]


def check_batch(key: str, **lists: Any) -> int:
    """The common length of the per-sample lists in `lists`; an empty batch or unequal lengths are errors."""
    lengths = {name: len(v) for name, v in lists.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"{key}: per-sample lists differ in length: {lengths}")
    n = next(iter(lengths.values()))
    if n == 0:
        raise ValueError(f"{key}: empty batch")
    return n
