"""The one place that loads editor DiT weights.

Accepted checkpoints, detected from their keys:

- `wan`: an original Wan2.1/2.2 DiT (`patch_embedding.*`, `blocks.N.self_attn.q.*`, `head.head.*`);
  it lacks the editor's parameters, which start as `EditorDiT.init_editor_parameters` says
  (source embedding copied from `patch_embedding`, every `alpha` zero).
- `diffusers`: diffusers' `WanTransformer3DModel` layout (`condition_embedder.*`, `blocks.N.attn1.to_q.*`,
  `proj_out.*`), converted to Wan names on load, then treated as `wan`.
- `liveditor`: the LIVEditor release, Wan keys plus `source_video_embedding_more_memory.*` and
  `blocks.N.{self_attn,cross_attn}.alpha_{1,2}.weight`.

Files: one `.safetensors` / `.pt` / `.pth` / `.bin` / `.ckpt` file, a sharded safetensors set through
its `*.index.json`, or a folder holding either (a diffusers pipeline folder's `transformer/` is
looked into). Loading is strict: missing or unexpected keys, or shape mismatches, are an error that
lists them.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Union

import torch

PathLike = Union[str, os.PathLike]

LAYOUTS = ("wan", "diffusers", "liveditor")
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
# Wrappers training frameworks put around a state dict, and prefixes they put before its keys.
_NESTED_KEYS = ("state_dict", "module", "model", "ema")
_KEY_PREFIXES = ("model.diffusion_model.", "_orig_mod.", "module.", "model.")


class CheckpointError(ValueError):
    """A checkpoint could not be found, read, or matched to the model; the message says which."""


# Wan name <-> diffusers name, as dotted prefixes: model-level, and inside `blocks.N.`. One table
# serves both directions; a key takes the longest prefix that matches whole components.
_WAN_DIFFUSERS_TOP = [
    ("time_embedding.0", "condition_embedder.time_embedder.linear_1"),
    ("time_embedding.2", "condition_embedder.time_embedder.linear_2"),
    ("text_embedding.0", "condition_embedder.text_embedder.linear_1"),
    ("text_embedding.2", "condition_embedder.text_embedder.linear_2"),
    ("time_projection.1", "condition_embedder.time_proj"),
    ("head.head", "proj_out"),
    ("head.modulation", "scale_shift_table"),
]
_WAN_DIFFUSERS_BLOCK = [
    ("modulation", "scale_shift_table"),
    ("ffn.0", "ffn.net.0.proj"),
    ("ffn.2", "ffn.net.2"),
    # diffusers calls the cross-attention norm `norm2` (Wan: `norm3`); the other two carry no weights.
    ("norm3", "norm2"),
] + [
    (f"{wan}{part}", f"{diffusers}{to}")
    for wan, diffusers in (("self_attn", "attn1"), ("cross_attn", "attn2"))
    for part, to in (("", ""), (".q", ".to_q"), (".k", ".to_k"), (".v", ".to_v"), (".o", ".to_out.0"))
]


def _rename(key: str, to_diffusers: bool) -> str:
    """One key from Wan's names to diffusers' (or back); keys the table does not name stay as they are."""
    block = re.match(r"^blocks\.\d+\.", key)
    head, rest = (block.group(0), key[block.end():]) if block else ("", key)
    table = _WAN_DIFFUSERS_BLOCK if block else _WAN_DIFFUSERS_TOP
    pairs = [(d, w) for w, d in table] if not to_diffusers else table
    best = max((src for src, _ in pairs if rest == src or rest.startswith(src + ".")), key=len, default=None)
    if best is None:
        return key
    return head + dict(pairs)[best] + rest[len(best):]


EDITOR_ONLY_PATTERNS = (
    r"^source_video_embedding_more_memory\.",
    r"^blocks\.\d+\.(self_attn|cross_attn)\.alpha_[12]\.",
)


@dataclass
class LoadReport:
    """What `load_editor_weights` did.

    Attributes:
        path: the checkpoint.
        layout: "wan", "diffusers" or "liveditor".
        files: files read.
        initialised: editor parameters the checkpoint lacked and that were initialised (plain Wan).
        bytes_read, tensors_read: what was read from the files (a rank of a partitioned load reads
            its partition of each tensor only).
    """

    path: str
    layout: str
    files: list = field(default_factory=list)
    initialised: list = field(default_factory=list)
    bytes_read: int = 0
    tensors_read: int = 0


def resolve_checkpoint_files(path: PathLike) -> list[Path]:
    """The weight files a checkpoint path stands for (shards in index order)."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint '{p}' does not exist")
    if p.is_dir():
        if (p / "transformer").is_dir() and not any(p.glob("*.safetensors*")):
            p = p / "transformer"
        indexes = sorted(p.glob("*.safetensors.index.json")) + sorted(p.glob("*.index.json"))
        if indexes:
            return resolve_checkpoint_files(indexes[0])
        files = sorted(f for f in p.iterdir() if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES))
        # An original Wan folder also holds the T5 and VAE .pth files: the DiT is the diffusers-named file.
        dit_files = [f for f in files if f.name.startswith("diffusion_pytorch_model")]
        if len(dit_files) == 1:
            return dit_files
        if len(files) == 1:
            return files
        if not files:
            raise CheckpointError(f"checkpoint folder '{p}' has no weight file ({', '.join(WEIGHT_SUFFIXES)}) and no *.index.json")
        raise CheckpointError(
            f"checkpoint folder '{p}' has several weight files and no *.index.json: {[f.name for f in files]}; "
            "point at one file or at the index"
        )
    if p.name.endswith(".json"):
        try:
            index = json.loads(p.read_text())
            weight_map = index["weight_map"]
        except (OSError, ValueError, KeyError) as exc:
            raise CheckpointError(f"checkpoint index '{p}' is not a safetensors index with a weight_map: {exc}") from exc
        shards = list(dict.fromkeys(weight_map.values()))
        files = [p.parent / s for s in shards]
        missing = [str(f) for f in files if not f.exists()]
        if missing:
            raise CheckpointError(f"checkpoint index '{p}' names shards that do not exist: {missing}")
        return files
    if not p.name.endswith(WEIGHT_SUFFIXES):
        raise CheckpointError(f"checkpoint '{p}' is not a weight file ({', '.join(WEIGHT_SUFFIXES)}) nor an index .json")
    return [p]


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.name.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        try:  # memory-mapped: only the tensors used are paged in (zip checkpoints; older ones are read whole)
            obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"checkpoint file '{path}' could not be read: {exc}") from exc
    for _ in range(3):  # unwrap {"state_dict": {...}} and the like
        if isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next((obj[k] for k in _NESTED_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint file '{path}' holds a {type(obj).__name__}, not a state dict")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _strip_prefixes(keys) -> dict[str, str]:
    """model key -> key as stored, with the wrappers' common prefixes taken off (each only when every key has it)."""
    names = {k: k for k in keys}
    for prefix in _KEY_PREFIXES:
        if names and all(k.startswith(prefix) for k in names):
            names = {k[len(prefix):]: raw for k, raw in names.items()}
    return names


def read_state_dict(path: PathLike) -> tuple[dict[str, torch.Tensor], list[Path]]:
    """All tensors of a checkpoint (every shard), with common wrapper prefixes stripped."""
    files = resolve_checkpoint_files(path)
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(_read_file(f))
    names = _strip_prefixes(state)
    return {k: state[raw] for k, raw in names.items()}, files


def detect_layout(state: Mapping[str, torch.Tensor]) -> str:
    """"diffusers", "liveditor" or "wan", from the key names."""
    keys = list(state)
    if any(k.startswith("condition_embedder.") or ".attn1." in k or k.startswith("proj_out.") for k in keys):
        return "diffusers"
    if any(re.match(p, k) for k in keys for p in EDITOR_ONLY_PATTERNS):
        return "liveditor"
    return "wan"


def diffusers_to_wan(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a diffusers `WanTransformer3DModel` state dict to Wan's names (tensors are shared)."""
    return {_rename(key, to_diffusers=False): value for key, value in state.items()}


def wan_to_diffusers(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of `diffusers_to_wan` for the Wan keys (used to export, and by the tests)."""
    return {_rename(key, to_diffusers=True): value for key, value in state.items()}


def _key_list(keys, limit: int = 20) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


# safetensors' dtype names (the format's header, github.com/huggingface/safetensors)
_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}


class _SafetensorsFile:
    """One safetensors file read by byte ranges: its header at open, then exactly the elements asked for,
    with plain reads into fresh tensors (no memory map, so the file's pages never count in this
    process's resident memory and nothing but the bytes asked for is read)."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self._file = open(path, "rb", buffering=0)  # noqa: SIM115 (closed by close())
            size = os.fstat(self._file.fileno()).st_size
            n = int.from_bytes(self._file.read(8), "little")
            if n <= 0 or 8 + n > size:
                raise ValueError(f"header length {n} does not fit a file of {size} bytes")
            header = json.loads(self._file.read(n))
            header.pop("__metadata__", None)
            self._start = 8 + n
            self.entries = {}
            for key, e in header.items():
                dtype = _SAFETENSORS_DTYPES.get(e["dtype"])
                if dtype is None:
                    raise ValueError(f"tensor '{key}' has dtype {e['dtype']}, which torch cannot hold")
                shape, (begin, end) = tuple(e["shape"]), e["data_offsets"]
                if end - begin != math.prod(shape) * dtype.itemsize or self._start + end > size:
                    raise ValueError(f"tensor '{key}' has {end - begin} bytes for shape {shape} {e['dtype']}")
                self.entries[key] = (dtype, shape, begin)
        except Exception as exc:
            self.close()
            raise CheckpointError(f"checkpoint file '{path}' could not be read: {exc}") from exc

    def read(self, key: str, start: int, stop: int) -> torch.Tensor:
        """Flat elements `[start, stop)` of tensor `key`."""
        dtype, _, begin = self.entries[key]
        # Bytes on the CPU, then viewed as `dtype`: inside `deepspeed.zero.Init` torch's float
        # constructors are replaced by ones that cast to the model's dtype and place on the accelerator.
        raw = torch.empty((stop - start) * dtype.itemsize, dtype=torch.uint8, device="cpu")
        view = raw.numpy()
        self._file.seek(self._start + begin + start * dtype.itemsize)
        done = 0
        while done < view.size:
            got = self._file.readinto(view[done:])
            if not got:
                raise CheckpointError(f"checkpoint file '{self.path}' ended inside tensor '{key}'")
            done += got
        return raw.view(dtype)

    def close(self) -> None:
        f = getattr(self, "_file", None)
        if f is not None:
            f.close()
            self._file = None


class CheckpointReader:
    """A checkpoint's tensors read one at a time, never the whole state dict at once.

    Safetensors shards (a file, or a set through its `*.index.json`) are opened lazily: only their
    headers at first, then exactly the bytes of the tensors, or of the element range of a tensor,
    asked for (`get`, `read_flat`). Other files (`.pt`, ...) are memory-mapped where torch can (zip checkpoints).
    Keys are the model's: wrapper prefixes stripped and diffusers' names turned into Wan's
    (`layout`, detected from the key names unless given). `bytes_read` and `tensors_read` count
    what was read, so a caller can check that a rank read only its own part.
    """

    def __init__(self, path: PathLike, layout: Optional[str] = None):
        self.path = str(path)
        self.files = resolve_checkpoint_files(path)
        self.bytes_read = 0
        self.tensors_read = 0
        self._handles: dict[int, _SafetensorsFile] = {}
        self._loaded: dict[int, dict[str, torch.Tensor]] = {}
        where: dict[str, int] = {}
        for i, f in enumerate(self.files):
            keys = self._handle(i).entries.keys() if f.name.endswith(".safetensors") else self._load(i).keys()
            where.update({k: i for k in keys})  # a key in two files: the later file's, as reading them in order gives
        names = _strip_prefixes(where)
        found = layout or detect_layout(names)
        if found not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {found!r}")
        self.layout = found
        if found == "diffusers":
            names = {_rename(k, to_diffusers=False): raw for k, raw in names.items()}
        self._where = {k: (where[raw], raw) for k, raw in names.items()}

    def _handle(self, i: int) -> _SafetensorsFile:
        if i not in self._handles:
            self._handles[i] = _SafetensorsFile(self.files[i])
        return self._handles[i]

    def _load(self, i: int) -> dict[str, torch.Tensor]:
        if i not in self._loaded:
            self._loaded[i] = _read_file(self.files[i])
        return self._loaded[i]

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()
        self._loaded.clear()

    def __enter__(self) -> "CheckpointReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __contains__(self, key: str) -> bool:
        return key in self._where

    def __len__(self) -> int:
        return len(self._where)

    def keys(self) -> list[str]:
        return list(self._where)

    def shape(self, key: str) -> tuple:
        """The stored tensor's shape, from the file's header (no data read)."""
        i, raw = self._where[key]
        return tuple(self._loaded[i][raw].shape) if i in self._loaded else self._handles[i].entries[raw][1]

    def _count(self, t: torch.Tensor) -> torch.Tensor:
        self.bytes_read += t.numel() * t.element_size()
        self.tensors_read += 1
        return t

    def get(self, key: str) -> torch.Tensor:
        """One whole tensor (on the CPU, in its stored dtype)."""
        i, raw = self._where[key]
        if i in self._loaded:
            return self._count(self._loaded[i][raw])
        shape = self.shape(key)
        return self._count(self._handles[i].read(raw, 0, math.prod(shape)).view(shape))

    def read_flat(self, key: str, start: int, stop: int) -> torch.Tensor:
        """Elements `[start, stop)` of the tensor flattened (row-major); from safetensors, only their bytes are read."""
        numel = math.prod(self.shape(key))
        start, stop = max(0, min(start, numel)), max(0, min(stop, numel))
        i, raw = self._where[key]
        if i in self._loaded:
            part = self._loaded[i][raw].reshape(-1)[start:stop].clone()
        else:
            part = self._handles[i].read(raw, start, max(start, stop))
        return self._count(part) if part.numel() else part


def is_editor_key(key: str) -> bool:
    """A parameter only the editor has (the source embedding, the `alpha` gates), not a plain Wan one."""
    return any(re.match(p, key) for p in EDITOR_ONLY_PATTERNS)


def match_checkpoint(reader: CheckpointReader, expected: Mapping[str, tuple], strict: bool = True) -> LoadReport:
    """Check a checkpoint's keys and shapes against the model's (`expected`: key -> shape) without
    reading any tensor; strict: missing or unexpected keys are a `CheckpointError` listing them."""
    path, found = reader.path, reader.layout
    if not len(reader):
        raise CheckpointError(f"checkpoint '{path}' holds no tensors")
    report = LoadReport(path, found, [str(f) for f in reader.files])
    editor_keys = {k for k in expected if is_editor_key(k)}
    has_editor_keys = any(k in reader for k in editor_keys)
    if not has_editor_keys:
        # A base Wan checkpoint: the editor's parameters start from the base model (no shortcut).
        report.initialised = sorted(editor_keys)
    missing = set(expected) - set(reader.keys()) - (editor_keys if not has_editor_keys else set())
    unexpected = set(reader.keys()) - set(expected)
    if strict and (missing or unexpected):
        lines = [f"checkpoint '{path}' ({found} layout) does not match the model (model.dit config):"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {_key_list(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {_key_list(unexpected)}")
        raise CheckpointError("\n".join(lines))
    mismatched = [
        f"{k}: checkpoint {reader.shape(k)} vs model {tuple(shape)}"
        for k, shape in expected.items() if k in reader and reader.shape(k) != tuple(shape)
    ]
    if mismatched:
        raise CheckpointError(
            f"checkpoint '{path}' has tensors of other shapes than the model (is model.dit the right size?):\n  "
            + "\n  ".join(mismatched[:20]) + (f"\n  ... ({len(mismatched) - 20} more)" if len(mismatched) > 20 else "")
        )
    return report


def _load_into(model: torch.nn.Module, reader: CheckpointReader, strict: bool) -> LoadReport:
    expected = {k: tuple(v.shape) for k, v in model.state_dict(keep_vars=True).items()}
    report = match_checkpoint(reader, expected, strict)
    with torch.no_grad():
        tensors = dict(model.named_parameters())
        tensors.update(dict(model.named_buffers()))
        for k in expected:  # one tensor at a time, straight from its shard into its parameter
            if k in reader and k in tensors:
                tensors[k].copy_(reader.get(k))
        if report.initialised:
            model.init_editor_parameters()
    report.bytes_read, report.tensors_read = reader.bytes_read, reader.tensors_read
    return report


def load_editor_weights(model: torch.nn.Module, path: PathLike, strict: bool = True, layout: Optional[str] = None) -> LoadReport:
    """Load a checkpoint into an `EditorDiT` in place (parameters keep their dtype and device).

    Tensors are read one at a time (`CheckpointReader`): besides the model, host memory holds one
    tensor of the checkpoint, never a second copy of the whole state dict.

    Args:
        path: file, index JSON or folder (see the module docstring).
        strict: missing or unexpected keys raise `CheckpointError` listing them; with
            `strict=False` they are skipped (missing ones keep their current values).
        layout: force "wan", "diffusers" or "liveditor" instead of detecting it.
    """
    with CheckpointReader(path, layout) as reader:
        return _load_into(model, reader, strict)


def save_editor_weights(model: torch.nn.Module, path: PathLike, layout: str = "liveditor", max_shard_bytes: Optional[int] = None) -> list[Path]:
    """Save an `EditorDiT` as safetensors in a layout `load_editor_weights` reads.

    `layout`: "liveditor" (every key), "wan" (without the editor's parameters) or "diffusers" (Wan
    keys renamed). With `max_shard_bytes`, `path` is a folder that receives shards and
    `diffusion_pytorch_model.safetensors.index.json`; else `path` is the file. Returns files written.
    """
    from safetensors.torch import save_file

    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if layout in ("wan", "diffusers"):
        state = {k: v for k, v in state.items() if not any(re.match(p, k) for p in EDITOR_ONLY_PATTERNS)}
    if layout == "diffusers":
        state = wan_to_diffusers(state)
    path = Path(path)
    if max_shard_bytes is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(state, str(path))
        return [path]
    path.mkdir(parents=True, exist_ok=True)
    shards: list[dict] = [{}]
    size = 0
    for k in sorted(state):
        n = state[k].numel() * state[k].element_size()
        if shards[-1] and size + n > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = state[k]
        size += n
    written, weight_map = [], {}
    for i, shard in enumerate(shards):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(path / name))
        written.append(path / name)
        weight_map.update({k: name for k in shard})
    index = path / "diffusion_pytorch_model.safetensors.index.json"
    total = sum(v.numel() * v.element_size() for v in state.values())
    index.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return written + [index]


def _construct(cfg, device, dtype: torch.dtype):
    from liveditor.models.dit import EditorDiT

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = EditorDiT(cfg)
    finally:
        torch.set_default_dtype(previous)
    return model.keep_fp32_parameters_()


def build_editor(cfg, weights: Optional[PathLike] = None, device="cpu", dtype: torch.dtype = torch.float32, strict: bool = True):
    """An `EditorDiT` of architecture `cfg`, built directly in `dtype` on `device`, with `weights` loaded.

    With `weights` the model is built on the meta device, checked against the checkpoint's headers,
    then given empty storage on `device` that each tensor fills as it is read from its shard: host
    memory holds the model once (none of it when `device` is a GPU) plus one checkpoint tensor, and
    no random initialisation runs. (With `strict=False` and parameters the checkpoint lacks, those
    keep a random initialisation: the model is then built eagerly.)
    Without `weights` the model keeps Wan's random initialisation (benchmarks, tests).
    Returns `(model, LoadReport or None)`.
    """
    if weights is None:
        return _construct(cfg, device, dtype).eval(), None
    with CheckpointReader(weights) as reader:
        model = _construct(cfg, "meta", dtype)
        expected = {k: tuple(v.shape) for k, v in model.state_dict(keep_vars=True).items()}
        report = match_checkpoint(reader, expected, strict)
        if any(k not in reader and k not in report.initialised for k in expected):
            model = _construct(cfg, device, dtype)
        else:
            model = model.to_empty(device=device)
        report = _load_into(model, reader, strict)
    return model.eval(), report
