"""The type and range checks of an `edit` config's settings and of `model.dit`, with no file read
and nothing composed: `liveditor.configcheck` runs them on every config that has an `edit` or a
`model.dit` section, before any work starts, and `EditPipeline` on what its callers pass in."""

from __future__ import annotations

import torch

from liveditor.dtypes import DTYPES
from liveditor.models import DiTConfig
from liveditor.pipeline.sampling import SAMPLERS


class EditError(ValueError):
    """Bad edit input or configuration; the message names the input or config key and the fix."""


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _require(ok: bool, key: str, want: str, value) -> None:
    if not ok:
        raise EditError(f"{key} must be {want}, got {value!r}")


def check_edit_values(cfg) -> None:
    """Check the type and range of every setting of an `edit` config (no file is touched); raises
    `EditError` naming the key, what it must be and what it got."""
    from omegaconf import OmegaConf

    def get(key):
        return OmegaConf.select(cfg, key, default=None)

    seed = get("seed")
    _require(seed is None or _is_int(seed), "seed", "an integer", seed)
    for key in ("prompt", "negative_prompt"):
        _require(get(key) is None or isinstance(get(key), str), key, "a string (quote it: key='...')", get(key))
    s = "sampling."
    _require(get(s + "sampler") in SAMPLERS, s + "sampler", f"one of {SAMPLERS}", get(s + "sampler"))
    for key in ("steps", "isa_plan_reuse_steps"):
        value = get(s + key)
        _require(_is_int(value) and value >= 1, s + key, "an integer >= 1", value)
    _require(_is_number(get(s + "shift")) and get(s + "shift") > 0, s + "shift", "a number > 0", get(s + "shift"))
    g = get(s + "guidance_scale")
    _require(_is_number(g) and g >= 0, s + "guidance_scale", "a number >= 0 (1.0: no guidance)", g)
    if get(s + "batch_cfg") is not None:
        _require(isinstance(get(s + "batch_cfg"), bool), s + "batch_cfg", "true or false", get(s + "batch_cfg"))
    v = "video."
    n = get(v + "num_frames")
    _require(_is_int(n) and n >= 1, v + "num_frames", "an integer >= 1 (4k+1: 81, 49, 17, ...)", n)
    _require(_is_number(get(v + "fps")) and get(v + "fps") > 0, v + "fps", "a number > 0", get(v + "fps"))
    start = get(v + "start_s")
    _require(start is None or (_is_number(start) and start >= 0), v + "start_s", "a number of seconds >= 0", start)
    resolution, buckets = get(v + "resolution"), get(v + "buckets")
    sizes = [("video.resolution", resolution)] if resolution is not None else [("video.buckets", b) for b in (buckets or [])]
    if resolution is None and not buckets:
        raise EditError("video.buckets is empty and video.resolution is not set: give [[width, height], ...] or video.resolution=[w,h]")
    for key, size in sizes:
        size = list(size) if OmegaConf.is_list(size) or isinstance(size, (list, tuple)) else size
        _require(isinstance(size, list) and len(size) == 2 and all(_is_int(x) and x > 0 and x % 16 == 0 for x in size),
                 key, "[width, height] with both positive multiples of 16 (VAE stride 8 x patch 2)", size)
    r = "runtime."
    device = get(r + "device")
    try:
        ok = isinstance(device, str) and (device == "auto" or torch.device(device).type in ("cpu", "cuda"))
    except RuntimeError:
        ok = False
    _require(ok, r + "device", "auto, cpu, cuda or cuda:N", device)
    for key in ("dtype", "vae_dtype"):
        _require(get(r + key) in DTYPES, r + key, f"one of {tuple(DTYPES)}", get(r + key))
    _require(isinstance(get(r + "progress"), bool), r + "progress", "true or false", get(r + "progress"))
    sp = get(r + "sequence_parallel")
    _require(sp is None or (_is_int(sp) and sp >= 1), r + "sequence_parallel", "an integer >= 1 (processes sharing each edit)", sp)
    b = get("model.boundary")
    _require(_is_number(b) and 0 <= b <= 1, "model.boundary", "a number in [0, 1] (fraction of the 1000 timesteps)", b)
    check_dit_values(cfg.model.dit)


def check_dit_values(dit) -> DiTConfig:
    """`model.dit` as a `DiTConfig`, or an `EditError` naming the bad key."""
    import dataclasses

    from omegaconf import OmegaConf

    from liveditor.isa import COMPAT_RULES, ISAConfig, ISAKernelOptions
    from liveditor.models import ATTENTION_BACKENDS

    if OmegaConf.is_dict(dit):
        values = OmegaConf.to_container(dit, resolve=True)
    elif isinstance(dit, dict):
        values = dict(dit)
    else:
        raise EditError(f"model.dit must be a mapping of DiT settings, got {dit!r}")
    fields = {f.name: f for f in dataclasses.fields(DiTConfig)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise EditError(f"unknown config key(s) {['model.dit.' + k for k in unknown]}; model.dit has: {', '.join(fields)}")
    defaults = DiTConfig()
    for name, value in values.items():
        key, default = f"model.dit.{name}", getattr(defaults, name)
        if name == "attention":
            _require(value in ATTENTION_BACKENDS, key, f"one of {ATTENTION_BACKENDS}", value)
        elif name == "isa_backend":
            _require(value in ("auto", "torch", "triton"), key, "one of ('auto', 'torch', 'triton')", value)
        elif name == "patch_size":
            _require(isinstance(value, (list, tuple)) and len(value) == 3 and all(_is_int(p) and p > 0 for p in value), key, "[t, h, w] positive integers", value)
        elif name == "isa":
            _require(isinstance(value, dict), key, "a mapping of ISA settings", value)
            isa_fields = {f.name for f in dataclasses.fields(ISAConfig)}
            extra = sorted(set(value) - isa_fields)
            if extra:
                raise EditError(f"unknown config key(s) {['model.dit.isa.' + k for k in extra]}; model.dit.isa has: {', '.join(sorted(isa_fields))}")
            if "compat" in value:
                _require(value["compat"] in COMPAT_RULES, key + ".compat", f"one of {COMPAT_RULES}", value["compat"])
            if "block_size" in value:
                _require(_is_int(value["block_size"]) and value["block_size"] > 0, key + ".block_size", "a positive integer", value["block_size"])
            for ratio in ("context_keep_ratio", "full_query_ratio", "exact_kv_ratio"):
                if ratio in value:
                    _require(_is_number(value[ratio]) and 0 <= value[ratio] <= 1, f"{key}.{ratio}", "a number in [0, 1]", value[ratio])
        elif name == "isa_kernels":
            _require(isinstance(value, dict), key, "a mapping of ISA kernel options", value)
            option_fields = {f.name for f in dataclasses.fields(ISAKernelOptions)}
            extra = sorted(set(value) - option_fields)
            if extra:
                raise EditError(f"unknown config key(s) {['model.dit.isa_kernels.' + k for k in extra]}; "
                                f"model.dit.isa_kernels has: {', '.join(sorted(option_fields))}")
            if "dense_backward_heads" in value:
                _require(_is_int(value["dense_backward_heads"]) and value["dense_backward_heads"] > 0,
                         key + ".dense_backward_heads", "a positive integer", value["dense_backward_heads"])
        elif isinstance(default, bool):
            _require(isinstance(value, bool), key, "true or false", value)
        elif isinstance(default, int):
            _require(_is_int(value) and value > 0, key, "a positive integer", value)
        elif isinstance(default, float):
            _require(_is_number(value) and value > 0, key, "a positive number", value)
    try:
        config = DiTConfig.from_dict(values)
    except (ValueError, TypeError) as exc:
        raise EditError(f"model.dit: {exc}") from exc
    return config
