"""Latent shards: WebDataset tars of edit pairs with their precomputed latents, and their index.

One sample per key, members in this order (any reader of WebDataset tars reads them):

    <key>.src.mp4              source video (kept unless precompute.keep_media=false)
    <key>.tgt.mp4              edited video (likewise)
    <key>.json                 the curated sample's metadata plus a "latents" entry (shapes, text tokens)
    <key>.latents.safetensors  source_latents [16, F', H', W'] bf16, target_latents [16, F', H', W'] bf16,
                               text_embedding [L, 4096] bf16 (umT5 states of the L real prompt tokens)

`F' = (F - 1) / 4 + 1`, `H' = H / 8`, `W' = W / 8` for the Wan2.1 VAE; latents are normalised
(`(mu - latents_mean) / latents_std`). `index.json` beside the shards lists every shard with its
sample count, byte size and sha256, and the identity of the encoders that made the latents, so that
a stale cache is detected.

Tars are byte-for-byte deterministic (fixed member headers, sorted-key JSON), so a rerun after a kill
reproduces them exactly.
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import torch

from liveditor.files import sha256_file, write_tar  # noqa: F401  (re-exported for the shard writers)

LATENTS_MEMBER = "latents.safetensors"
LATENT_KEYS = ("source_latents", "target_latents", "text_embedding")
INDEX_NAME = "index.json"
LATENT_FORMAT = "liveditor-latents-v1"


class ShardError(ValueError):
    """A shard set or a sample in it is not what it should be; the message names it."""


def split_member(name: str) -> tuple[str, str]:
    """`"abc.src.mp4"` -> `("abc", "src.mp4")` (the key ends at the first dot of the basename, as in WebDataset)."""
    base = name.rsplit("/", 1)[-1]
    if "." not in base:
        raise ShardError(f"tar member '{name}' has no extension: not a WebDataset sample member")
    key, member = base.split(".", 1)
    return key, member


def iter_tar_samples(path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield `(key, {member: bytes})` in file order. Raises ShardError on a corrupt or truncated tar
    (after yielding the samples that were complete)."""
    current_key, members = None, {}
    try:
        with tarfile.open(path, mode="r:") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                key, member = split_member(info.name)
                if current_key is not None and key != current_key:
                    yield current_key, members
                    members = {}
                current_key = key
                members[member] = tar.extractfile(info).read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ShardError(f"shard '{path}' is corrupt or truncated: {exc}") from exc
    if current_key is not None:
        yield current_key, members


def encode_latents(source_latents: torch.Tensor, target_latents: torch.Tensor, text_embedding: torch.Tensor) -> bytes:
    """The `latents.safetensors` member: the three tensors as contiguous bf16."""
    from safetensors.torch import save

    tensors = {
        "source_latents": source_latents.detach().to("cpu", torch.bfloat16).contiguous(),
        "target_latents": target_latents.detach().to("cpu", torch.bfloat16).contiguous(),
        "text_embedding": text_embedding.detach().to("cpu", torch.bfloat16).contiguous(),
    }
    return save(tensors, metadata={"format": LATENT_FORMAT})


@dataclass
class LatentSample:
    """One training sample. Shapes: latents `[C, F', H', W']`, text `[L, text_dim]`."""

    key: str
    source_latents: torch.Tensor
    target_latents: torch.Tensor
    text_embedding: torch.Tensor
    meta: dict

    @property
    def shape_key(self) -> tuple:
        """What samples of one batch must share: the latent grid of source and target."""
        return tuple(self.target_latents.shape) + tuple(self.source_latents.shape)


def decode_latent_sample(key: str, members: dict[str, bytes], latent_channels: Optional[int] = None, text_dim: Optional[int] = None) -> LatentSample:
    """Parse a latent shard sample; raises ShardError naming the key and what is wrong."""
    from safetensors.torch import load

    if LATENTS_MEMBER not in members:
        raise ShardError(f"sample '{key}' has no {LATENTS_MEMBER} (was the shard made by liveditor-precompute?)")
    try:
        tensors = load(members[LATENTS_MEMBER])
    except Exception as exc:
        raise ShardError(f"sample '{key}': {LATENTS_MEMBER} could not be read: {exc}") from exc
    missing = [k for k in LATENT_KEYS if k not in tensors]
    if missing:
        raise ShardError(f"sample '{key}': {LATENTS_MEMBER} lacks {missing}")
    src, tgt, text = (tensors[k] for k in LATENT_KEYS)
    if src.dim() != 4 or tgt.dim() != 4:
        raise ShardError(f"sample '{key}': latents must be [C, F, H, W], got source {tuple(src.shape)} and target {tuple(tgt.shape)}")
    if latent_channels is not None and (src.shape[0] != latent_channels or tgt.shape[0] != latent_channels):
        raise ShardError(f"sample '{key}': latents have {src.shape[0]}/{tgt.shape[0]} channels, the model takes {latent_channels}")
    if text.dim() != 2 or text.shape[0] < 1 or (text_dim is not None and text.shape[1] != text_dim):
        raise ShardError(f"sample '{key}': text_embedding must be [L >= 1, {text_dim or 'text_dim'}], got {tuple(text.shape)}")
    try:
        meta = json.loads(members["json"]) if "json" in members else {}
    except json.JSONDecodeError as exc:
        raise ShardError(f"sample '{key}': json member is not JSON: {exc}") from exc
    return LatentSample(key, src, tgt, text, meta)


def read_index(folder, key: str) -> dict:
    """The `index.json` of a shard folder given by config value `key`; errors name the key and the fix."""
    if folder is None or str(folder).strip() == "":
        raise ShardError(f"{key} is not set: point it at a folder of shards with an index.json")
    root = Path(str(folder)).expanduser()
    if not root.is_dir():
        raise ShardError(f"{key}='{folder}' does not exist or is not a folder")
    index_path = root / INDEX_NAME
    if not index_path.exists():
        raise ShardError(f"{key}='{folder}' has no {INDEX_NAME}: the shard set is incomplete (rerun the job that writes it)")
    try:
        index = json.loads(index_path.read_text())
    except json.JSONDecodeError as exc:
        raise ShardError(f"{index_path} is not valid JSON: {exc}") from exc
    if not isinstance(index.get("shards"), list):
        raise ShardError(f"{index_path} lists no shards")
    return index
