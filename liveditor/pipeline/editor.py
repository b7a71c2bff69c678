"""Edit inference: source video + instruction -> edited video.

As diffusers users expect (docs/editing.md):

    pipe = EditPipeline.from_pretrained("/ckpt/liveditor-1.3b").to("cuda", torch.bfloat16)
    out = pipe(video, "make it snowy", num_inference_steps=32, guidance_scale=2.5)   # EditOutput

From a resolved `edit` config (what `liveditor-edit` does):

    cfg = compose("edit/edit", overrides=[...])          # configs/edit/edit.yaml
    check_edit_config(cfg)                               # fails fast, naming the key or the file
    pipe = EditPipeline.from_config(cfg)                 # DiT(s), VAE and umT5 from the configured paths
    result = pipe.edit_file(cfg.input, cfg.prompt)       # EditResult(frames [T, H, W, 3] uint8, fps, ...)
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from omegaconf import open_dict
from tqdm.auto import tqdm

from liveditor.dtypes import DTYPES, dtype_name
from liveditor.models import build_editor
from liveditor.models.loading import CheckpointError, resolve_checkpoint_files
from liveditor.pipeline.components import ComponentError, TextEncoder, WanVAE, check_wan_dir, library_progress_bars
from liveditor.pipeline.preprocess import (
    DEFAULT_BUCKETS,
    choose_bucket,
    fit_video,
    quiet_decoder_output,
    resample_indices,
    to_uint8_frames,
    warn_4k1,
)
from liveditor.pipeline.checks import EditError, _is_int, _is_number, _require, check_dit_values, check_edit_values  # noqa: F401 (re-exported)
from liveditor.pipeline.sampling import Expert, sample_edit
from liveditor.video import VideoError, probe_video, read_video

log = logging.getLogger(__name__)


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EditError(f"runtime.device={name!r} but no CUDA device is available: use runtime.device=cpu")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name not in DTYPES:
        raise EditError(f"dtype {name!r} is not one of {sorted(DTYPES)}")
    # Half-precision matmuls on CPU are slow and not what anyone checks against: CPU runs float32.
    return DTYPES[name] if device.type == "cuda" else torch.float32


def _check_weights(path, key: str) -> None:
    if path is None or str(path).strip() == "":
        raise EditError(f"{key} is not set: point it at a LIVEditor checkpoint (or an original / diffusers Wan transformer checkpoint)")
    if not Path(str(path)).expanduser().exists():
        raise EditError(f"{key}='{path}' does not exist: point it at a LIVEditor checkpoint file, index .json or folder")
    try:
        resolve_checkpoint_files(Path(str(path)).expanduser())
    except CheckpointError as exc:
        raise EditError(f"{key}: {exc}") from exc


def check_output_path(output, input_path=None) -> Path:
    """Check before any work that `output` (.mp4) and its `.config.yaml` can be written; returns it."""
    if not output:
        raise EditError("no output path: pass --output out.mp4")
    out = Path(str(output)).expanduser()
    if out.is_dir():
        raise EditError(f"output '{output}' is a folder: give a file path ending in .mp4 (e.g. '{out / 'edit.mp4'}')")
    if not out.name.lower().endswith(".mp4"):
        raise EditError(f"output '{output}' must end in .mp4")
    if input_path is not None and out.resolve() == Path(str(input_path)).expanduser().resolve():
        raise EditError(f"output '{output}' is the input video: choose another path")
    config_path = out.with_name(out.stem + ".config.yaml")
    if config_path.is_dir():
        raise EditError(f"output '{output}': its config would go to '{config_path}', which is a folder: move it or choose another output name")
    existing = out.resolve().parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise EditError(f"output '{output}' cannot be written: '{existing}' is a file, not a folder")
    if not os.access(existing, os.W_OK):
        raise EditError(f"output '{output}' cannot be written: '{existing}' is not a writable folder")
    return out


def check_edit_config(cfg, need_io: bool = True) -> None:
    """Validate everything that can be checked before loading a model: every setting's type and
    range, the input video decodes and has frames, the output can be written, the prompt is not
    empty, and every configured path holds what it should."""
    check_edit_values(cfg)
    if need_io:
        if not cfg.get("input"):
            raise EditError("no input video: pass --input in.mp4")
        with quiet_decoder_output():
            info = probe_video(cfg.input)  # VideoError names the file: missing, undecodable, 0 frames
        start_s = float(cfg.video.get("start_s") or 0.0)
        if not resample_indices(info.num_frames, info.fps, float(cfg.video.fps), 1, start_s):
            raise VideoError(f"video '{cfg.input}' has no frames after video.start_s={start_s} s ({info.num_frames} frames, {info.duration_s:.2f} s)")
        check_output_path(cfg.get("output"), cfg.input)
    prompt = cfg.get("prompt")
    if prompt is None or not str(prompt).strip():
        raise EditError("the prompt is empty: pass --prompt \"<edit instruction>\"")
    m = cfg.model
    _check_weights(m.get("weights_path"), "model.weights_path")
    if m.get("low_noise_weights_path"):
        _check_weights(m.low_noise_weights_path, "model.low_noise_weights_path")
    check_checkpoint_sizes(cfg)  # tensor shapes only: a wrong model= is found before anything is built
    try:
        check_wan_dir(m.get("vae_path"), "model.vae_path", ["vae"])
        check_wan_dir(m.get("text_encoder_path"), "model.text_encoder_path", ["text_encoder", "tokenizer"])
    except ComponentError as exc:
        raise EditError(str(exc)) from exc


@dataclass
class EditResult:
    """An edited clip.

    Attributes:
        frames: `uint8` `[T, H, W, 3]`.
        fps: frames per second to write at.
        size: `(width, height)`.
        source_frames: frames taken from the input.
        seconds: wall time per stage ("encode", "denoise", "decode").
    """

    frames: np.ndarray
    fps: float
    size: tuple[int, int]
    source_frames: int
    seconds: dict = field(default_factory=dict)


VIDEO_FORMS = (
    "a path to a video file (str or os.PathLike)",
    "a uint8 numpy array [T, H, W, 3]",
    "a list of PIL images (one per frame)",
    "a torch tensor [3, T, H, W] or [T, 3, H, W], float in [-1, 1] or uint8",
)
OUTPUT_TYPES = ("np", "pil", "pt", "latent")


@dataclass
class EditOutput:
    """What `EditPipeline.__call__` returns: one edited clip per prompt.

    Attributes:
        frames: by `output_type`: "np" uint8 `[B, T, H, W, 3]`; "pil" a list of B lists of T
            `PIL.Image`; "pt" float32 `[B, 3, T, H, W]` in `[-1, 1]` on the CPU (the input forms,
            so an output can be fed back in); "latent" the denoised latents float32
            `[B, z, F, h, w]` on the pipeline's device, normalised as the DiT sees them, not
            decoded (`pipe.decode_latents` decodes them).
        fps: frames per second of the clip (`video.fps`).
        size: `(width, height)`.
        source_frames: frames taken from the input.
        seconds: wall time per stage ("encode", "denoise", "decode").
    """

    frames: object
    fps: float
    size: tuple[int, int]
    source_frames: int
    seconds: dict = field(default_factory=dict)


def _as_video_tensor(video, name: str = "video") -> tuple[torch.Tensor, bool]:
    """Any accepted in-memory video form -> (`[T, 3, H, W]` float in `[0, 255]`, was a float tensor
    in [-1, 1]). Raises `EditError` naming `name` and the accepted forms."""
    forms = "; ".join(VIDEO_FORMS)
    if isinstance(video, np.ndarray):
        if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
            raise EditError(f"{name}: a numpy video must be uint8 [T, H, W, 3], got {video.dtype} {list(video.shape)}; accepted: {forms}")
        return torch.from_numpy(np.ascontiguousarray(video)).permute(0, 3, 1, 2).float(), False
    if isinstance(video, (list, tuple)):
        try:
            from PIL import Image
        except ImportError:  # pragma: no cover - Pillow comes with the install
            Image = None
        if not video or Image is None or not all(isinstance(f, Image.Image) for f in video):
            kinds = sorted({type(f).__name__ for f in video}) if video else ["nothing"]
            raise EditError(f"{name}: a list must hold PIL images (one per frame), got {', '.join(kinds)}; accepted: {forms}")
        sizes = {f.size for f in video}
        if len(sizes) != 1:
            raise EditError(f"{name}: the PIL frames have different sizes {sorted(sizes)}; give frames of one size")
        frames = np.stack([np.asarray(f.convert("RGB")) for f in video])
        return torch.from_numpy(frames).permute(0, 3, 1, 2).float(), False
    if isinstance(video, torch.Tensor):
        if video.dim() != 4 or 3 not in (video.shape[0], video.shape[1]):
            raise EditError(f"{name}: a tensor video must be [3, T, H, W] or [T, 3, H, W], got shape {list(video.shape)}; accepted: {forms}")
        x = video.detach().cpu()
        # [3, T, H, W] when the first axis is the channels (also when T == 3), else [T, 3, H, W].
        x = x.permute(1, 0, 2, 3) if x.shape[0] == 3 else x
        if x.dtype == torch.uint8:
            return x.float(), False
        if not x.is_floating_point():
            raise EditError(f"{name}: a tensor video must be float in [-1, 1] or uint8, got {x.dtype}")
        x = x.float()
        if x.numel() and (x.min() < -1.0 - 1e-3 or x.max() > 1.0 + 1e-3):
            raise EditError(f"{name}: a float tensor video must lie in [-1, 1], got values in [{x.min():.3g}, {x.max():.3g}]; "
                            "scale it (x / 127.5 - 1 for 0..255) or pass uint8")
        return (x.clamp(-1, 1) + 1.0) * 127.5, True
    raise EditError(f"{name} must be one of: {forms}; got {type(video).__name__}")


def _prompt_list(prompt, name: str, batch: Optional[int] = None) -> list[str]:
    prompts = [prompt] if isinstance(prompt, str) else list(prompt) if isinstance(prompt, (list, tuple)) else None
    if prompts is None or not all(isinstance(p, str) for p in prompts):
        raise EditError(f"{name} must be a string or a list of strings, got {type(prompt).__name__}")
    if not prompts:
        raise EditError(f"{name} is an empty list: give at least one prompt")
    if batch is not None and len(prompts) == 1 and batch > 1:
        prompts = prompts * batch
    if batch is not None and len(prompts) != batch:
        raise EditError(f"{name} has {len(prompts)} entries, prompt has {batch}: give one, or one per prompt")
    return prompts


# The file of a pipeline folder (`save_pretrained`, `liveditor-export --pipeline`) holding the edit
# config that `from_pretrained` starts from: the model, its DiT settings, sampling and video settings.
PIPELINE_CONFIG = "liveditor_edit.yaml"
_SAVED_SECTIONS = ("model.name", "model.boundary", "model.dit", "sampling", "video", "negative_prompt", "seed")


def write_pipeline_config(folder, model_config: str, cfg) -> Path:
    """Write `folder/PIPELINE_CONFIG`: `model_config` (the `configs/model` name to compose) and the
    `_SAVED_SECTIONS` of `cfg` (an edit config, or a dict holding some of them) that it has."""
    from omegaconf import OmegaConf

    from liveditor.files import atomic_write_text

    cfg = OmegaConf.create(cfg) if isinstance(cfg, dict) else cfg
    saved = {"model_config": model_config}
    for key in _SAVED_SECTIONS:
        value = OmegaConf.select(cfg, key, default=None)
        if value is None and key not in ("negative_prompt",):
            continue
        value = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        node = saved
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    header = "# LIVEditor pipeline: EditPipeline.from_pretrained(<this folder>) starts from these settings\n"
    return atomic_write_text(Path(folder) / PIPELINE_CONFIG, header + OmegaConf.to_yaml(OmegaConf.create(saved)))


def _leaves(node: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in node.items():
        if isinstance(value, dict) and value:
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _apply_pipeline_config(cfg, saved: dict, overrides: Sequence[str], source: Path) -> None:
    """Set in `cfg` every saved setting that no override of `overrides` names (the user's win)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    named = [str(o).split("=", 1)[0].lstrip("+~") for o in overrides]
    values = {k: v for k, v in _leaves({k: v for k, v in saved.items() if k != "model_config"}).items()
              if not any(k == n or k.startswith(n + ".") or n.startswith(k + ".") for n in named)}
    for key, value in values.items():
        try:
            OmegaConf.update(cfg, key, value, merge=False)
        except OmegaConfBaseException as exc:
            raise EditError(f"'{source}': setting {key} is not an edit config key ({' '.join(str(exc).split())}): "
                            "was it written by another LIVEditor version? remove the line") from exc


def _read_pipeline_config(root: Path) -> Optional[dict]:
    path = root / PIPELINE_CONFIG
    if not (root.is_dir() and path.is_file()):
        return None
    import yaml

    try:
        saved = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise EditError(f"'{path}' could not be read as YAML: {' '.join(str(exc).split())}") from exc
    if not isinstance(saved, dict) or not isinstance(saved.get("model_config"), str):
        raise EditError(f"'{path}' has no model_config: it is not a LIVEditor pipeline config (EditPipeline.save_pretrained writes one)")
    return saved


def normal_permissions(folder: Path) -> None:
    """Give every file under `folder` the mode a plain `open()` would (0644 under the usual umask):
    safetensors and diffusers write theirs 0600 through temporary files."""
    umask = os.umask(0)
    os.umask(umask)
    for path in Path(folder).rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~umask)


def _shard_bytes(size) -> Optional[int]:
    """`max_shard_size` as bytes: None, an int, or a string such as "5GB" / "500MB"."""
    if size is None or _is_int(size):
        return size
    import re

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B)\s*", str(size), re.IGNORECASE)
    if not match:
        raise EditError(f"max_shard_size must be a number of bytes or a size such as '5GB', got {size!r}")
    unit = match.group(2).upper()
    base = 1024 if "I" in unit else 1000
    return int(float(match.group(1)) * base ** ("KMG".index(unit[0]) + 1))


class _ModelOffload:
    """Model CPU offload's bookkeeping: at most one model on the execution `device` at a time."""

    def __init__(self, device: torch.device):
        self.device = device
        self.resident: Optional[torch.nn.Module] = None
        self.moves: list[str] = []  # the models moved to `device`, in order (what the tests read)
        self.hooks: list = []  # the experts' forward pre-hooks

    def activate(self, module: torch.nn.Module, name: str) -> None:
        """Move `module` to the execution device, first moving the one there back to the CPU."""
        if self.resident is module:
            return
        self.release()
        module.to(self.device)
        self.resident = module
        self.moves.append(name)

    def release(self) -> None:
        """Move the model on the execution device back to the CPU."""
        if self.resident is not None:
            self.resident.to("cpu")
            self.resident = None


class EditPipeline:
    """VAE, text encoder and DiT expert(s) with the sampling settings of an `edit` config.

        pipe = EditPipeline.from_pretrained("/ckpt/liveditor-1.3b")        # a local folder, nothing downloaded
        pipe.to("cuda", torch.bfloat16)
        out = pipe("in.mp4", "make it snowy", num_inference_steps=32, guidance_scale=2.5)
        frames = out.frames[0]                                              # uint8 [T, H, W, 3]
    """

    def __init__(self, experts: Sequence[Expert], vae: WanVAE, text_encoder: TextEncoder, cfg, device: torch.device):
        self.experts, self.vae, self.text_encoder, self.cfg, self.device = list(experts), vae, text_encoder, cfg, torch.device(device)
        self.requested_runtime: Optional[dict] = None
        self._progress_bar_config: dict = {}
        self._offload: Optional[_ModelOffload] = None

    # ----------------------------------------------------------------------------------- loading

    @classmethod
    def from_config(cls, cfg) -> "EditPipeline":
        """Load every component from the paths in `cfg.model` (after `check_edit_config`).

        `cfg.runtime.device` / `dtype` are replaced by what is actually used (CPU runs float32)."""
        from omegaconf import OmegaConf

        device = resolve_device(cfg.runtime.device)
        dtype = resolve_dtype(cfg.runtime.dtype, device)
        vae_dtype = resolve_dtype(cfg.runtime.vae_dtype, device)
        dit_cfg = check_dit_values(cfg.model.dit)
        check_checkpoint_sizes(cfg)
        m = cfg.model
        progress = bool(cfg.runtime.get("progress", True))
        stages = [key for key in ("weights_path", "low_noise_weights_path") if m.get(key)] + ["vae", "text encoder"]
        bar = tqdm(total=len(stages), desc="loading", unit="part", disable=not progress)
        experts = []
        with library_progress_bars(progress):
            try:
                for key in ("weights_path", "low_noise_weights_path"):
                    path = m.get(key)
                    if not path:
                        continue
                    bar.set_postfix_str(f"DiT model.{key}")
                    log.info("loading DiT %s from %s", key, path)
                    try:
                        model, report = build_editor(dit_cfg, Path(str(path)).expanduser(), device=device, dtype=dtype)
                    except CheckpointError as exc:
                        raise EditError(f"model.{key}: {exc}") from exc
                    log.info("DiT %s: %s layout%s", key, report.layout, " (editor parameters initialised from the base model)" if report.initialised else "")
                    experts.append(Expert(model, 0.0))
                    bar.update(1)
                if len(experts) == 2:  # Wan2.2-A14B: high-noise expert above the boundary, low-noise below
                    experts[0].min_timestep = float(m.boundary) * 1000.0
                bar.set_postfix_str("VAE")
                vae = WanVAE.load(m.vae_path, device=device, dtype=vae_dtype)
                bar.update(1)
                bar.set_postfix_str("text encoder")
                text_encoder = TextEncoder.load(m.text_encoder_path, text_len=dit_cfg.text_len, device=device, dtype=dtype)
                bar.update(1)
            finally:
                bar.close()
        if text_encoder.dim != dit_cfg.text_dim:
            raise EditError(f"the text encoder in model.text_encoder_path outputs {text_encoder.dim} channels, model.dit.text_dim is {dit_cfg.text_dim}")
        if vae.z_dim != dit_cfg.in_dim:
            raise EditError(f"the VAE in model.vae_path has {vae.z_dim} latent channels, model.dit.in_dim is {dit_cfg.in_dim}")
        requested = {key: str(cfg.runtime[key]) for key in ("device", "dtype", "vae_dtype")}
        pipe = cls(experts, vae, text_encoder, OmegaConf.create(OmegaConf.to_container(cfg, resolve=False)), device)
        pipe.requested_runtime = requested  # what the config asked for; cfg.runtime now says what is used
        pipe._record_runtime()
        return pipe

    @classmethod
    def from_pretrained(
        cls,
        path,
        model: Optional[str] = None,
        *,
        vae_path=None,
        text_encoder_path=None,
        low_noise_weights_path=None,
        device="cpu",
        dtype: Optional[torch.dtype] = None,
        overrides: Sequence[str] = (),
        progress: bool = True,
    ) -> "EditPipeline":
        """Load a pipeline from local files; nothing is downloaded.

        Args:
            path: a folder holding a diffusers-format Wan directory (`vae/`, `text_encoder/`,
                `tokenizer/`) and the DiT checkpoint (`transformer/`, and `transformer_2/` for
                Wan2.2-A14B's low-noise expert, or one weight file or sharded index at its top), or
                the DiT checkpoint itself (a file, an `*.index.json`, or a folder holding one), then
                with `vae_path`. A folder written by `save_pretrained` or `liveditor-export
                --pipeline` also holds `liveditor_edit.yaml`: the model and its settings start from it.
            model: the architecture, a name in `configs/model` ("wan2.1-1.3b", "wan2.2-a14b",
                "tiny", ...); None infers it from the checkpoint's tensor shapes.
            vae_path, text_encoder_path: diffusers-format Wan directories (default: `path`).
            low_noise_weights_path: Wan2.2-A14B's low-noise expert (`path` is then the high-noise one).
            device, dtype: where to run, DiT and text-encoder dtype (None: float32; the VAE
                keeps `runtime.vae_dtype`, float32).
            overrides: further Hydra overrides of `configs/edit/edit.yaml` ("sampling.steps=16",
                ...); they become the defaults of every call (`__call__`).
            progress: show progress bars.
        """
        root = Path(os.path.expanduser(str(path)))
        if not root.exists():
            raise EditError(f"from_pretrained: path '{path}' does not exist: give a local folder or checkpoint file (nothing is downloaded)")
        is_wan_dir = root.is_dir() and all((root / sub).is_dir() for sub in ("vae", "text_encoder", "tokenizer"))
        vae_path = vae_path or (root if is_wan_dir else None)
        if vae_path is None:
            raise EditError(f"from_pretrained: '{path}' has no vae/, text_encoder/ and tokenizer/ folders: pass vae_path= a diffusers-format Wan directory")
        try:
            resolve_checkpoint_files(root)
        except CheckpointError as exc:
            raise EditError(f"from_pretrained: no DiT checkpoint in '{path}': {exc}") from exc
        saved = _read_pipeline_config(root)
        if saved is not None and model is not None and model != saved["model_config"]:
            saved = {k: v for k, v in saved.items() if k != "model"}  # another architecture asked for: not the saved DiT settings
        name = model or (saved["model_config"] if saved else None) or infer_model_name(root)
        if low_noise_weights_path is None and is_wan_dir and (root / "transformer_2").is_dir():
            low_noise_weights_path = root / "transformer_2"  # diffusers' Wan2.2 layout: transformer_2/ is the low-noise expert
        dtype = torch.float32 if dtype is None else dtype
        device = torch.device(device) if not isinstance(device, torch.device) else device
        from liveditor.configcheck import compose_edit_config

        quote = lambda p: "'" + str(p).replace("\\", "\\\\").replace("'", "\\'") + "'"
        items = [
            f"model={name}", f"model.weights_path={quote(root)}", f"model.vae_path={quote(vae_path)}",
            f"runtime.device={device}", f"runtime.dtype={dtype_name(dtype)}", f"runtime.progress={str(bool(progress)).lower()}",
        ]
        if text_encoder_path:
            items.append(f"model.text_encoder_path={quote(text_encoder_path)}")
        if low_noise_weights_path:
            items.append(f"model.low_noise_weights_path={quote(low_noise_weights_path)}")
        cfg = compose_edit_config(items + list(overrides))
        if saved is not None:
            _apply_pipeline_config(cfg, saved, list(overrides), root / PIPELINE_CONFIG)
        check_edit_values(cfg)
        if device.type == "cpu" and dtype != torch.float32:
            # resolve_dtype keeps CPU runs in float32; an explicit request is honoured through .to().
            return cls.from_config(cfg).to(dtype=dtype)
        return cls.from_config(cfg)

    def save_pretrained(self, save_directory, max_shard_size=None) -> Path:
        """Write this pipeline as a folder that `EditPipeline.from_pretrained` loads: `vae/`,
        `text_encoder/`, `tokenizer/` (diffusers / transformers formats), `transformer/` (the DiT,
        LIVEditor layout; `transformer_2/` the low-noise expert of a two-expert model) and
        `liveditor_edit.yaml` (the model, its DiT settings, the sampling and video settings, the
        negative prompt and seed). Weights are written in their current dtype.

        `save_directory` must not exist or be empty; the folder appears only complete.
        `max_shard_size`: bytes or a size such as "5GB" per DiT shard (default: one file per DiT).
        Returns the folder."""
        from liveditor.files import atomic_dir
        from liveditor.models import save_editor_weights

        out = Path(os.path.expanduser(str(save_directory)))
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise EditError(f"save_pretrained: '{save_directory}' exists and is not an empty folder: choose a new folder")
        shard = _shard_bytes(max_shard_size)

        def make(tmp: Path) -> None:
            tmp.mkdir(parents=True)
            with library_progress_bars(self.progress):
                if self.vae.is_codec:
                    self.vae.vae.save(tmp / "vae")
                else:
                    self.vae.vae.save_pretrained(str(tmp / "vae"))
                self.text_encoder.model.save_pretrained(str(tmp / "text_encoder"))
                self.text_encoder.tokenizer.save_pretrained(str(tmp / "tokenizer"))
            for i, expert in enumerate(self.experts):
                folder = tmp / ("transformer" if i == 0 else f"transformer_{i + 1}")
                save_editor_weights(expert.model, folder if shard else folder / "diffusion_pytorch_model.safetensors",
                                    layout="liveditor", max_shard_bytes=shard)
            write_pipeline_config(tmp, str(self.cfg.model.name), self.cfg)
            normal_permissions(tmp)

        return atomic_dir(out, make)

    def to(self, device=None, dtype: Optional[torch.dtype] = None) -> "EditPipeline":
        """Move the DiT(s), text encoder and VAE to `device`; cast the DiT(s) and the text encoder
        to `dtype` (the VAE keeps its own dtype, `runtime.vae_dtype`). `pipe.to(torch.bfloat16)`
        casts only. Returns self."""
        if isinstance(device, torch.dtype):
            device, dtype = None, device
        if self._offload is not None:
            if device is not None:
                raise EditError("EditPipeline.to: model CPU offload is on (enable_model_cpu_offload moves each model to "
                                f"{self._offload.device} while it runs): give only a dtype, or load a new pipeline to place the models yourself")
            for module in self._offload_modules():
                module.to(dtype=dtype)
            for expert in self.experts:
                if dtype is not None and hasattr(expert.model, "keep_fp32_parameters_"):
                    expert.model.keep_fp32_parameters_()
            self._record_runtime()
            return self
        device = self.device if device is None else torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise EditError(f"EditPipeline.to: device {device} but no CUDA device is available")
        for expert in self.experts:
            expert.model.to(device=device, dtype=dtype)
            if dtype is not None and hasattr(expert.model, "keep_fp32_parameters_"):
                expert.model.keep_fp32_parameters_()
        self.text_encoder.to(device, dtype)
        self.vae.to(device)
        self.device = device
        self._record_runtime()
        return self

    @property
    def dtype(self) -> torch.dtype:
        """The DiT's dtype."""
        return self.experts[0].model.dtype if self.experts else torch.float32

    def _offload_modules(self) -> list:
        """The text encoder (cast with the DiT) and the DiT experts: what `to(dtype)` casts."""
        return [self.text_encoder.model] + [e.model for e in self.experts]

    def _record_runtime(self) -> None:
        """Write the device and dtypes actually in use into `cfg.runtime` (what a saved config shows)."""
        with open_dict(self.cfg):
            if self._offload is None:
                self.cfg.runtime.device = str(self.device)
            self.cfg.runtime.dtype = dtype_name(self.dtype)
            self.cfg.runtime.vae_dtype = dtype_name(self.vae.dtype)

    @property
    def progress(self) -> bool:
        """Whether this pipeline's progress bars show: `set_progress_bar_config(disable=...)` when
        given, else `runtime.progress`."""
        if "disable" in self._progress_bar_config:
            return not self._progress_bar_config["disable"]
        return bool(self.cfg.runtime.get("progress", True))

    def set_progress_bar_config(self, **kwargs) -> None:
        """As in diffusers: tqdm keyword arguments for every progress bar of this pipeline's calls
        (the denoising steps, VAE encode and decode): `disable=True` hides them (`disable=False`
        shows them whatever `runtime.progress` says), `desc`, `leave`, `position`, `file`, ... replace
        the pipeline's own. Each call replaces the previous configuration."""
        self._progress_bar_config = dict(kwargs)

    def _bars(self):
        """What `sample_edit` and the VAE take as `progress`: False, or tqdm keyword arguments."""
        if not self.progress:
            return False
        return {k: v for k, v in self._progress_bar_config.items() if k != "disable"}

    def enable_model_cpu_offload(self, gpu_id: Optional[int] = None, device="cuda") -> "EditPipeline":
        """As in diffusers: keep every model in CPU memory and move each to the GPU only while it runs
        (the text encoder, then the VAE, then the DiT expert of each step, then the VAE), moving the
        previous one back first; after each call all are back in CPU memory. The GPU then needs the
        memory of the largest model and its activations, not of all of them; each call pays the copies.

        `gpu_id`: the GPU (default: `device`'s index, else 0). `device`: where the models run
        ("cuda"; "cpu" runs the same bookkeeping without saving memory). Returns self."""
        exec_device = torch.device(device)
        if exec_device.type == "cuda":
            if not torch.cuda.is_available():
                raise EditError("enable_model_cpu_offload: no CUDA device is available (it moves models to a GPU while they run)")
            exec_device = torch.device("cuda", gpu_id if gpu_id is not None else (exec_device.index or 0))
        if self._offload is not None:
            self._offload.release()
            for handle in self._offload.hooks:
                handle.remove()
            self._offload = None
        self.to("cpu")
        self._offload = offload = _ModelOffload(exec_device)
        for i, expert in enumerate(self.experts):  # an expert moves when sample_edit calls it
            name = "transformer" if i == 0 else f"transformer_{i + 1}"
            offload.hooks.append(expert.model.register_forward_pre_hook(lambda module, args, name=name: offload.activate(module, name)))
        self.device = self.text_encoder.device = exec_device
        if not self.vae.is_codec:
            self.vae.device = exec_device
        with open_dict(self.cfg):
            self.cfg.runtime.device = f"{exec_device} (model CPU offload)"
        return self

    # ----------------------------------------------------------------------------------- inputs

    def prepare_video(self, video, height: Optional[int] = None, width: Optional[int] = None, num_frames: Optional[int] = None) -> tuple[torch.Tensor, int]:
        """Any accepted video form -> (`[3, T, H, W]` float32 in `[-1, 1]`, frames taken).

        At most `num_frames` (default `video.num_frames`) frames, rounded down to 4k+1 with a
        warning when frames are dropped; a file is resampled to `video.fps` first. The size is
        `(width, height)` when given (one alone keeps the aspect ratio), else `video.resolution`,
        else the bucket nearest the source's aspect ratio; the frames are resized to cover it and
        centre-cropped.
        """
        v = self.cfg.video
        limit = int(v.num_frames) if num_frames is None else num_frames
        if not _is_int(limit) or limit < 1:
            raise EditError(f"num_frames must be an integer >= 1, got {num_frames!r}")
        for name, value in (("height", height), ("width", width)):
            if value is not None and (not _is_int(value) or value <= 0 or value % 16):
                raise EditError(f"{name} must be a positive multiple of 16 (VAE stride 8 x patch 2), got {value!r}")
        limit_key = "video.num_frames" if num_frames is None else "num_frames"
        if isinstance(video, (str, os.PathLike)):
            with quiet_decoder_output():
                info = probe_video(video)
            fps, start_s = float(v.fps), float(v.get("start_s") or 0.0)
            available = resample_indices(info.num_frames, info.fps, fps, 1 << 40, start_s)  # every frame at video.fps
            if not available:
                raise VideoError(f"video '{video}' has no frames after video.start_s={v.get('start_s')} s")
            indices = available[:limit]
            if len(available) > limit:
                log.warning("video '%s': %d frames at %g fps (%.2f s) from %g s; %s=%d keeps the first %d (%.2f s), "
                            "the last %d (%.2f s) are dropped (raise %s, or set video.start_s, to edit another part)",
                            video, len(available), fps, len(available) / fps, start_s, limit_key, limit, limit, limit / fps,
                            len(available) - limit, (len(available) - limit) / fps, limit_key)
            indices = indices[: warn_4k1(len(indices), f"video '{video}'")]
            with quiet_decoder_output():
                frames = torch.from_numpy(read_video(video, indices=indices).frames).permute(0, 3, 1, 2).float()
        else:
            frames, _ = _as_video_tensor(video)
            if frames.shape[0] == 0:
                raise EditError("video has 0 frames")
            taken = min(frames.shape[0], limit)
            if frames.shape[0] > limit:
                log.warning("video: %d frames; %s=%d keeps the first %d, the last %d are dropped (raise %s to keep them)",
                            frames.shape[0], limit_key, limit, limit, frames.shape[0] - limit, limit_key)
            frames = frames[: warn_4k1(taken, "video")]
        src_h, src_w = frames.shape[-2:]
        if height is not None and width is not None:
            size = (width, height)
        elif height is not None or width is not None:
            size = (width, max(16, round(width * src_h / src_w / 16) * 16)) if width else (max(16, round(height * src_w / src_h / 16) * 16), height)
        elif v.get("resolution"):
            size = tuple(int(x) for x in v.resolution)
        else:
            buckets = [tuple(b) for b in v.buckets] if v.get("buckets") else DEFAULT_BUCKETS
            size = choose_bucket(src_w, src_h, buckets)
        return fit_video(frames, size), int(frames.shape[0])

    # ----------------------------------------------------------------------------------- editing

    @torch.no_grad()
    def __call__(
        self,
        video,
        prompt,
        negative_prompt=None,
        num_inference_steps: Optional[int] = None,
        guidance_scale: Optional[float] = None,
        generator=None,
        height: Optional[int] = None,
        width: Optional[int] = None,
        num_frames: Optional[int] = None,
        output_type: str = "np",
        return_dict: bool = True,
        callback_on_step_end=None,
    ):
        """Edit `video` following `prompt` (a string, or a list: one edit per prompt, batched).

        Every setting left None takes the pipeline config's value (`pipe.cfg`, what
        `from_pretrained(..., overrides=[...])` or `from_config` was given), so one config gives the
        same edit here and in `liveditor-edit`; an argument given here overrides it for this call.
        The other sampling settings (`sampling.sampler`, `shift`, `isa_plan_reuse_steps`,
        `batch_cfg`) always come from the config.

        Args:
            video: one of `VIDEO_FORMS`.
            prompt: the edit instruction(s).
            negative_prompt: a string or one per prompt (default: the config's `negative_prompt`, Wan's).
            num_inference_steps: sampler steps (default: `sampling.steps`).
            guidance_scale: classifier-free guidance; 1.0 runs the positive branch only (default:
                `sampling.guidance_scale`).
            generator: a `torch.Generator` (or one per prompt) for the initial noise (default:
                seeded with the config's `seed`).
            height, width, num_frames: output size and frame limit (see `prepare_video`; default
                `video.resolution` or the nearest of `video.buckets`, and `video.num_frames`).
            output_type: "np", "pil", "pt" or "latent" (see `EditOutput.frames`).
            return_dict: True returns an `EditOutput`; False the tuple `(frames,)`.
            callback_on_step_end: `fn(pipe, step_index, timestep, {"latents": latents})` after each
                step; a dict it returns with "latents" replaces them.
        """
        if output_type not in OUTPUT_TYPES:
            raise EditError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        s = self.cfg.sampling
        num_inference_steps = int(s.steps) if num_inference_steps is None else num_inference_steps
        guidance_scale = float(s.guidance_scale) if guidance_scale is None else guidance_scale
        if not _is_int(num_inference_steps) or num_inference_steps < 1:
            raise EditError(f"num_inference_steps must be an integer >= 1, got {num_inference_steps!r}")
        if not _is_number(guidance_scale) or guidance_scale < 0:
            raise EditError(f"guidance_scale must be a number >= 0, got {guidance_scale!r}")
        prompts = _prompt_list(prompt, "prompt")
        if any(not p.strip() for p in prompts):
            raise EditError("prompt is empty: give an edit instruction")
        negatives = _prompt_list(negative_prompt if negative_prompt is not None else (self.cfg.get("negative_prompt") or ""), "negative_prompt", len(prompts))
        generators = self._generators(generator, len(prompts))
        source, taken = self.prepare_video(video, height, width, num_frames)
        step_callback = None
        if callback_on_step_end is not None:
            def step_callback(i, t, latents):
                result = callback_on_step_end(self, i, t, {"latents": latents})
                return result.get("latents") if isinstance(result, dict) else None
        out, seconds = self._edit(source, prompts, negatives, generators, int(num_inference_steps), float(guidance_scale), step_callback,
                                  decode=output_type != "latent")
        T = source.shape[1]
        if output_type == "latent":
            frames = out
        elif output_type == "pt":
            frames = out[:, :, :T].cpu()
        else:
            frames = np.stack([to_uint8_frames(clip) for clip in out[:, :, :T]])
            if output_type == "pil":
                from PIL import Image

                frames = [[Image.fromarray(f) for f in clip] for clip in frames]
        if not return_dict:
            return (frames,)
        return EditOutput(frames, float(self.cfg.video.fps), (source.shape[3], source.shape[2]), taken, seconds)

    def _generators(self, generator, batch: int) -> list:
        if generator is None:
            return [torch.Generator("cpu").manual_seed(int(self.cfg.get("seed") or 0))]
        if isinstance(generator, torch.Generator):
            return [generator]
        if isinstance(generator, (list, tuple)) and all(isinstance(g, torch.Generator) for g in generator):
            if len(generator) != batch:
                raise EditError(f"generator has {len(generator)} entries for {batch} prompts: give one, or one per prompt")
            return list(generator)
        raise EditError(f"generator must be a torch.Generator or a list of them (one per prompt), got {type(generator).__name__}")

    def _edit(self, source: torch.Tensor, prompts: list, negatives: list, generators: list, steps: int, guidance: float, callback=None,
              decode: bool = True):
        """The edit of `source` `[3, T, H, W]` for B prompts -> (`[B, 3, T', H, W]` in [-1, 1], or with
        `decode=False` the denoised latents `[B, z, F, h, w]`; seconds per stage)."""
        try:
            return self._edit_stages(source, prompts, negatives, generators, steps, guidance, callback, decode)
        finally:
            if self._offload is not None:
                self._offload.release()

    def _edit_stages(self, source, prompts, negatives, generators, steps, guidance, callback, decode):
        s, bars = self.cfg.sampling, self._bars()
        place = self._offload.activate if self._offload is not None else (lambda module, name: None)
        B = len(prompts)
        seconds = {}
        t0 = time.perf_counter()
        self.text_encoder.warn_truncation(prompts, "prompt")
        use_cfg = guidance != 1.0
        if use_cfg:
            self.text_encoder.warn_truncation(negatives, "negative prompt")
        place(self.text_encoder.model, "text_encoder")
        states = self.text_encoder.encode(prompts + (negatives if use_cfg else []), warn=False)
        text, negative = states[:B], (states[B:] if use_cfg else None)
        if not self.vae.is_codec:
            place(self.vae.vae, "vae")
        source_latents = self.vae.encode(source.unsqueeze(0), progress=bars).to(self.device)
        seconds["encode"] = time.perf_counter() - t0

        shape = source_latents.shape[1:]
        if len(generators) == 1:
            g = generators[0]
            noise = torch.randn((B, *shape), generator=g, dtype=torch.float32, device=g.device)
        else:
            noise = torch.cat([torch.randn((1, *shape), generator=g, dtype=torch.float32, device=g.device) for g in generators])
        t0 = time.perf_counter()
        latents = sample_edit(
            self.experts, noise.to(self.device), source_latents, text, negative,
            steps=steps, sampler=str(s.sampler), shift=float(s.shift), guidance_scale=guidance,
            isa_plan_reuse_steps=int(s.isa_plan_reuse_steps), progress=bars, callback=callback,
            batch_cfg=bool(s.get("batch_cfg", True)),
        )
        seconds["denoise"] = time.perf_counter() - t0
        if not decode:
            return latents, seconds
        t0 = time.perf_counter()
        out = self._decode(latents, bars)
        seconds["decode"] = time.perf_counter() - t0
        return out, seconds

    def _decode(self, latents: torch.Tensor, bars) -> torch.Tensor:
        if self._offload is not None and not self.vae.is_codec:
            self._offload.activate(self.vae.vae, "vae")
        return torch.cat([self.vae.decode(latents[i : i + 1], progress=bars) for i in range(latents.shape[0])])

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, num_frames: Optional[int] = None) -> torch.Tensor:
        """Latents from `pipe(..., output_type="latent")` `[B, z, F, h, w]` -> video `[B, 3, T, H, W]`
        float32 in `[-1, 1]` on the CPU (what output_type="pt" gives), cut to `num_frames` frames when given."""
        try:
            out = self._decode(latents.to(self.device), self._bars())
        finally:
            if self._offload is not None:
                self._offload.release()
        return (out if num_frames is None else out[:, :, :num_frames]).cpu()

    def encode_prompts(self, prompt: str, negative_prompt: Optional[str]):
        guidance = float(self.cfg.sampling.guidance_scale)
        prompts = [prompt] + ([negative_prompt or ""] if guidance != 1.0 else [])
        states = self.text_encoder.encode(prompts)
        return states[:1], (states[1:2] if guidance != 1.0 else None)

    def edit_file(self, path: str, prompt: str, negative_prompt: Optional[str] = None, seed: Optional[int] = None) -> EditResult:
        """Edit the video at `path` following `prompt`, with the config's sampling settings."""
        source, taken = self.prepare_video(path)
        return self.edit(source, prompt, negative_prompt, seed, source_frames=taken)

    @torch.no_grad()
    def edit(self, video, prompt: str, negative_prompt: Optional[str] = None, seed: Optional[int] = None, source_frames: Optional[int] = None) -> EditResult:
        """Edit `video` with the config's sampling settings, at the video's own size.

        `video`: `[3, T, H, W]` float in `[-1, 1]` (used as is), or any other of `VIDEO_FORMS`
        except a path; H and W must be multiples of 16 (for other sizes call the pipeline with
        `height` and `width`). T is rounded down to 4k+1, with a warning when frames are dropped.
        """
        if isinstance(video, (str, os.PathLike)):
            raise EditError("edit: video is a path: use edit_file(path, prompt) or pipe(path, prompt)")
        if isinstance(video, torch.Tensor) and video.dim() == 4 and video.shape[0] == 3 and video.is_floating_point():
            source = video.float()
        else:
            frames, _ = _as_video_tensor(video)
            source = fit_video(frames, (frames.shape[-1], frames.shape[-2]))
        if not isinstance(prompt, str) or not prompt.strip():
            raise EditError("the prompt is empty: give an edit instruction")
        cfg, s = self.cfg, self.cfg.sampling
        if negative_prompt is None:
            negative_prompt = cfg.get("negative_prompt") or ""
        seed = int(cfg.get("seed", 0) if seed is None else seed)
        _, T, H, W = source.shape
        if H % 16 or W % 16:
            raise EditError(f"edit: video size {W}x{H} must have both sides multiples of 16; for other sizes call pipe(video, prompt, height=..., width=...)")
        T = warn_4k1(T, "video")
        out, seconds = self._edit(source[:, :T], [prompt], [negative_prompt], [torch.Generator("cpu").manual_seed(seed)],
                                  int(s.steps), float(s.guidance_scale))
        frames = to_uint8_frames(out[0, :, :T])
        return EditResult(frames, float(cfg.video.fps), (W, H), int(source_frames or T), seconds)


def checkpoint_sizes(weights) -> dict:
    """The DiT sizes a checkpoint's tensor shapes show (`dim`, `in_dim`, `num_layers`, `ffn_dim`,
    `text_dim`; a size it lacks is None), read from safetensors headers without loading a tensor."""
    from liveditor.models.loading import detect_layout, diffusers_to_wan

    shapes = _checkpoint_shapes(weights)
    if detect_layout(shapes) == "diffusers":
        shapes = diffusers_to_wan(shapes)
    patch = shapes.get("patch_embedding.weight")
    ffn = shapes.get("blocks.0.ffn.0.weight")
    text = shapes.get("text_embedding.0.weight")
    return {
        "dim": patch[0] if patch else None,
        "in_dim": patch[1] if patch else None,
        "num_layers": len({int(k.split(".")[1]) for k in shapes if k.startswith("blocks.")}),
        "ffn_dim": ffn[0] if ffn else None,
        "text_dim": text[1] if text else None,
    }


_SIZE_WORDS = {"dim": "dim {}", "num_layers": "{} layers", "ffn_dim": "ffn_dim {}", "text_dim": "text_dim {}", "in_dim": "in_dim {}"}


def _describe_sizes(sizes: dict, keys) -> str:
    return ", ".join(_SIZE_WORDS[k].format(sizes[k]) for k in keys)


def models_of_size(sizes: dict) -> list[str]:
    """The `configs/model` names (of `MODEL_NAMES`) whose DiT has `sizes` (None entries match anything)."""
    from omegaconf import OmegaConf

    from liveditor.configcheck import compose_edit_config

    matches = []
    for name in MODEL_NAMES:
        dit = OmegaConf.to_container(compose_edit_config([f"model={name}"], strict=False).model.dit, resolve=True)
        if all(v is None or dit.get(k) == v for k, v in sizes.items()):
            matches.append(name)
    return matches


def check_checkpoint_size(weights, dit, key: str, model_name) -> None:
    """Raise `EditError` (one line) when checkpoint `weights` (config key `key`) has other DiT sizes
    than `dit` (a `DiTConfig`, what `model=<model_name>` and `model.dit` ask for). Reads only the
    checkpoint's tensor shapes (safetensors headers), so a wrong size is found before any model is built."""
    sizes = checkpoint_sizes(weights)
    if sizes["dim"] is None:
        return  # no patch embedding: not a DiT checkpoint the size can be read from; loading names what is missing
    wanted = {k: getattr(dit, k) for k in sizes}
    differ = [k for k in sizes if sizes[k] is not None and sizes[k] != wanted[k]]
    if not differ:
        return
    shown = ["dim", "num_layers"] + [k for k in differ if k not in ("dim", "num_layers")]
    guesses = models_of_size(sizes)
    guess = f"model={guesses[0]}?" if guesses else "no configs/model size"
    if model_name in guesses:  # the named model fits: overrides of model.dit do not
        asks = f"model={model_name} with model.dit overrides expects"
        fix = f"drop the override(s) of {', '.join('model.dit.' + k for k in differ)}"
    else:
        asks = f"model={model_name} expects"
        fix = (f"pass model={guesses[0]}" if guesses else "pass the model= it was trained as (configs/model)") + \
            f", or point {key} at a {model_name} checkpoint"
    raise EditError(f"{key}: checkpoint '{weights}' has {_describe_sizes(sizes, shown)} ({guess}); "
                    f"{asks} {_describe_sizes(wanted, shown)}: {fix}")


def check_checkpoint_sizes(cfg) -> None:
    """`check_checkpoint_size` for `model.weights_path` and `model.low_noise_weights_path` of an edit config."""
    dit = check_dit_values(cfg.model.dit)
    for key in ("weights_path", "low_noise_weights_path"):
        path = cfg.model.get(key)
        if path:
            check_checkpoint_size(Path(str(path)).expanduser(), dit, f"model.{key}", cfg.model.get("name"))


def infer_model_name(weights) -> str:
    """The `configs/model` name whose DiT sizes match checkpoint `weights` (read from tensor shapes);
    raises `EditError` when none matches."""
    sizes = checkpoint_sizes(weights)
    if sizes["dim"] is None:
        raise EditError(f"checkpoint '{weights}' has no patch_embedding.weight: cannot tell its size; pass model='wan2.1-1.3b' (or another configs/model name)")
    sizes.pop("text_dim")
    matches = models_of_size(sizes)
    if not matches:
        raise EditError(f"checkpoint '{weights}' ({_describe_sizes(sizes, ['dim', 'num_layers', 'ffn_dim'])}) matches no configs/model size "
                        f"({', '.join(MODEL_NAMES)}): pass model=<name>")
    return matches[0]


# configs/model names, in the order `infer_model_name` prefers among equal architectures
# (Wan2.2-A14B, LIVEditor's base, before Wan2.1-14B: the same DiT).
MODEL_NAMES = ("tiny", "wan2.1-1.3b", "wan2.2-a14b", "wan2.1-14b")


def _checkpoint_shapes(weights) -> dict:
    """`{key: shape}` of a checkpoint without loading safetensors tensors (prefixes stripped as the loader does)."""
    from liveditor.models.loading import read_state_dict

    files = resolve_checkpoint_files(Path(str(weights)).expanduser())
    shapes = {}
    if all(f.name.endswith(".safetensors") for f in files):
        from safetensors import safe_open

        for f in files:
            try:
                with safe_open(str(f), framework="pt") as handle:
                    for key in handle.keys():
                        shapes[key] = list(handle.get_slice(key).get_shape())
            except Exception as exc:  # a truncated or foreign file: one line naming it
                raise EditError(f"checkpoint file '{f}' could not be read as safetensors: {' '.join(str(exc).split())}") from exc
    else:
        try:
            state, _ = read_state_dict(Path(str(weights)).expanduser())
        except CheckpointError as exc:
            raise EditError(str(exc)) from exc
        shapes = {k: list(v.shape) for k, v in state.items()}
    for prefix in ("model.diffusion_model.", "_orig_mod.", "module.", "model."):
        if shapes and all(k.startswith(prefix) for k in shapes):
            shapes = {k[len(prefix):]: v for k, v in shapes.items()}
    return shapes
