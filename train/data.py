"""Training data: latent shards in a deterministic, resumable order.

WebDataset has no resumable iterator, so the order here is a pure function of
`(seed, epoch, rank, worker)` and the shard index, and the position in it is part of every checkpoint:

1. **Shards.** Each epoch permutes the shard list (seeded by `(seed, epoch)`), deals it to ranks
   (`perm[rank::world_size]`) and then to each rank's loader workers (`[worker::num_workers]`),
   as open_clip splits by node then by worker. Fewer shards than ranks x workers is an error.
2. **Samples.** A worker reads its shards in order through a shuffle buffer seeded by
   `(seed, epoch, rank, worker, pass)` and groups samples by latent shape into batches (only
   same-shape samples share a batch). A shard whose sha256 is not the one `index.json` records
   (swapped for another encoder's shard, changed or damaged since) is refused when it is opened;
   bad samples in a shard (no latents, wrong shapes) are logged, counted and skipped.
3. **Epoch length.** Every worker of every rank yields exactly `batches_per_worker =
   num_samples // (world_size * num_workers * batch_size)` batches an epoch, so all ranks take the
   same number of steps; a worker whose shards run short starts another shuffled pass over them,
   one with more leaves the rest for later epochs' permutations.
4. **Position.** Each batch carries `(epoch, worker, seq)`. After a training step consumes it,
   `DataPositionCallback` records it in the loader, and Lightning saves the loader's `state_dict`
   (epoch, batches consumed per worker, the last worker) in every checkpoint. On resume each worker
   replays its stream and skips what was consumed, and the workers are rotated so that the
   DataLoader's round-robin continues with the worker after the last one consumed: the resumed
   run sees exactly the batches the uninterrupted run would have.

Batches: `source_latents`, `target_latents` `[B, C, F, H, W]` bf16, `text` `[B, L_max, text_dim]`
bf16 zero-padded to the longest prompt of the batch (the DiT pads to `text_len` with zeros anyway),
`text_lengths` `[B]`, `keys`, `position`, `skipped` (bad samples this worker has skipped so far this
epoch; the loader adds them up into a running total, `skipped_total`).

The latents' encoders (`index.json` `encoders`) are checked against the run's (`model.vae_path`,
`model.text_encoder_path`) by `check_latent_encoders` before training starts.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from liveditor.train.shards import (INDEX_NAME, LatentSample, ShardError, decode_latent_sample, iter_tar_samples, read_index,
                                    sha256_file)

log = logging.getLogger("liveditor.train.data")


@dataclass(frozen=True)
class ShardInfo:
    path: str
    samples: int
    sha256: Optional[str] = None  # as index.json records it (None: not checked)


def list_shards(folder, key: str = "data.shards") -> tuple[list[ShardInfo], dict]:
    """The shards of a latent shard folder from its index (config value `key` names the folder)."""
    index = read_index(folder, key)
    root = Path(str(folder)).expanduser()
    if index.get("kind") not in (None, "latents"):
        raise ShardError(f"{key}='{folder}' holds {index.get('kind')} shards, not latents: run liveditor-precompute on it first")
    shards = []
    for s in index["shards"]:
        path = root / s["name"]
        if not path.exists():
            raise ShardError(f"{key}='{folder}': shard {s['name']} listed in {INDEX_NAME} is missing")
        shards.append(ShardInfo(str(path), int(s["samples"]), s.get("sha256")))
    return shards, index


def verify_shard(shard: ShardInfo) -> None:
    """Refuse a shard whose bytes are not those `index.json` records. Hashing reads the file once
    more (about 1 s per GB, in the loader worker, beside training); the tar reader then finds it in
    the page cache."""
    if shard.sha256 is None:
        return
    actual = sha256_file(shard.path)
    if actual != shard.sha256:
        raise ShardError(
            f"shard '{shard.path}' is not the one its index.json lists (sha256 {actual[:12]}..., index.json {shard.sha256[:12]}...): "
            "it was replaced (another encoder's latents?), changed or damaged after liveditor-precompute wrote the index; "
            "restore it, or rerun liveditor-precompute into a new folder"
        )


def _made_with(folder: Path) -> str:
    """`encoders.path` of the precompute configs saved in a latent folder, for messages."""
    import yaml

    paths = set()
    for config in sorted(folder.glob("precompute.config.*.yaml")):
        try:
            paths.add(str(yaml.safe_load(config.read_text())["encoders"]["path"]))
        except Exception:
            continue
    return f" (liveditor-precompute encoders.path='{', '.join(sorted(paths))}')" if paths else ""


def check_latent_encoders(index: dict, folder, vae_path, text_encoder_path=None) -> None:
    """The encoders that made the latents of `folder` (`index["encoders"]`, fingerprints by
    `weights_fingerprint`) must be the run's: `vae_path`/vae (the VAE that decodes validation edits
    and `liveditor-edit`'s outputs) and `text_encoder_path`/{text_encoder, tokenizer}. With no
    `vae_path` there is nothing to compare with: a log line says so."""
    from liveditor.pipeline.components import check_wan_dir
    from liveditor.train.precompute import weights_fingerprint

    recorded = index.get("encoders") or {}
    if not vae_path:
        log.info("model.vae_path is not set: the encoders of the latents in data.shards are not checked against this run's "
                 "(set model.vae_path to the Wan directory they were made with to check them)")
        return
    if not recorded:
        log.info("data.shards='%s': its index.json records no encoders, so they are not checked against model.vae_path", folder)
        return
    parts = [("vae", "model.vae_path", vae_path)]
    if text_encoder_path:
        parts += [(p, "model.text_encoder_path", text_encoder_path) for p in ("text_encoder", "tokenizer")]
    for part, key, path in parts:
        root = check_wan_dir(path, key, [part])
        actual = weights_fingerprint(root / part)
        if part in recorded and recorded[part] != actual:
            raise ShardError(
                f"data.shards='{folder}' holds latents made with another {part} (index.json encoders.{part} "
                f"{recorded[part][:12]}...{_made_with(Path(str(folder)).expanduser())}) than this run's {key}='{path}' "
                f"({part} {actual[:12]}...): set {key} to the Wan directory the latents were made with, or rerun "
                f"liveditor-precompute with encoders.path='{path}' into a new folder"
            )


def _rng(*parts: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]))


def epoch_shard_order(num_shards: int, seed: int, epoch: int) -> list[int]:
    """The shard permutation of an epoch."""
    return [int(i) for i in _rng(seed, epoch, 0x5A4D).permutation(num_shards)]


def read_samples(shards: list[ShardInfo], stats: dict, latent_channels: Optional[int] = None,
                 text_dim: Optional[int] = None) -> Iterator[LatentSample]:
    """Decoded samples of `shards` in file order; bad ones are logged, counted in `stats["skipped"]`
    and skipped (a corrupt tar loses the rest of that shard, not the run)."""
    for shard in shards:
        verify_shard(shard)
        try:
            for key, members in iter_tar_samples(Path(shard.path)):
                try:
                    yield decode_latent_sample(key, members, latent_channels, text_dim)
                except ShardError as exc:
                    stats["skipped"] += 1
                    log.warning("skipping a bad sample (%d so far on this worker): %s", stats["skipped"], exc)
        except ShardError as exc:
            stats["skipped"] += 1
            log.warning("skipping the rest of a bad shard (%d bad so far on this worker): %s", stats["skipped"], exc)


def collate(samples: list[LatentSample]) -> dict:
    """Same-shape samples -> a batch dict (text zero-padded to the longest prompt)."""
    lengths = [s.text_embedding.shape[0] for s in samples]
    text = torch.zeros(len(samples), max(lengths), samples[0].text_embedding.shape[1], dtype=samples[0].text_embedding.dtype)
    for i, s in enumerate(samples):
        text[i, : lengths[i]] = s.text_embedding
    return {
        "source_latents": torch.stack([s.source_latents for s in samples]),
        "target_latents": torch.stack([s.target_latents for s in samples]),
        "text": text,
        "text_lengths": torch.tensor(lengths),
        "keys": [s.key for s in samples],
    }


@dataclass
class LoaderPosition:
    """What training steps have consumed in the current epoch (saved in checkpoints)."""

    epoch: int = 0
    consumed: list[int] = field(default_factory=list)  # batches consumed per logical worker
    last_worker: int = -1  # logical worker of the last consumed batch
    skipped: list[int] = field(default_factory=list)  # bad samples each logical worker had skipped at its last consumed batch
    skipped_before: int = 0  # bad samples skipped in earlier epochs

    def next_epoch(self, epoch: int, workers: int) -> "LoaderPosition":
        return LoaderPosition(epoch=epoch, consumed=[0] * workers, skipped=[0] * workers, skipped_before=self.skipped_total)

    @property
    def skipped_total(self) -> int:
        return self.skipped_before + sum(self.skipped)


class EditBatchStream(IterableDataset):
    """Batches of one rank (see the module docstring). Built by `LatentDataModule`."""

    def __init__(self, shards: list[ShardInfo], batch_size: int, num_workers: int, rank: int, world_size: int,
                 seed: int = 0, shuffle_buffer: int = 64, latent_channels: Optional[int] = None, text_dim: Optional[int] = None):
        super().__init__()
        self.shards, self.batch_size = shards, int(batch_size)
        self.num_workers = max(1, int(num_workers))  # logical workers (1 when loading in the main process)
        self.rank, self.world_size, self.seed, self.shuffle_buffer = int(rank), int(world_size), int(seed), int(shuffle_buffer)
        self.latent_channels, self.text_dim = latent_channels, text_dim
        if self.batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        needed = self.world_size * self.num_workers
        if len(shards) < needed:
            raise ShardError(
                f"data.shards has {len(shards)} shards, fewer than ranks x workers = {self.world_size} x {self.num_workers}: "
                f"every loader worker needs a shard of its own; lower data.num_workers or write smaller shards"
            )
        total = sum(s.samples for s in shards)
        self.batches_per_worker = total // (needed * self.batch_size)
        if self.batches_per_worker < 1:
            raise ShardError(f"data.shards has {total} samples, too few for one batch of {self.batch_size} per worker on {needed} workers")
        # set by the loader before each iteration
        self.epoch, self.consumed, self.first_worker = 0, [0] * self.num_workers, 0

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return self.batches_per_worker * self.num_workers

    def identity(self) -> dict:
        """What a saved position is only valid for."""
        digest = hashlib.sha256(json.dumps([(Path(s.path).name, s.samples) for s in self.shards]).encode()).hexdigest()
        return {"world_size": self.world_size, "num_workers": self.num_workers, "batch_size": self.batch_size,
                "seed": self.seed, "shuffle_buffer": self.shuffle_buffer, "shards_sha256": digest}

    def worker_shards(self, epoch: int, worker: int) -> list[ShardInfo]:
        order = epoch_shard_order(len(self.shards), self.seed, epoch)
        return [self.shards[i] for i in order[self.rank :: self.world_size][worker :: self.num_workers]]

    def shuffled(self, items: Iterator[LatentSample], rng: np.random.Generator) -> Iterator[LatentSample]:
        buffer: list[LatentSample] = []
        for item in items:
            if len(buffer) < self.shuffle_buffer:
                buffer.append(item)
                continue
            i = int(rng.integers(len(buffer)))
            buffer[i], item = item, buffer[i]
            yield item
        while buffer:
            yield buffer.pop(int(rng.integers(len(buffer))))

    def worker_batches(self, epoch: int, worker: int) -> Iterator[tuple[int, dict]]:
        """Exactly `batches_per_worker` `(seq, batch)` of a logical worker in an epoch."""
        shards = self.worker_shards(epoch, worker)
        stats = {"skipped": 0}
        seq, data_pass = 0, 0
        while seq < self.batches_per_worker:
            rng = _rng(self.seed, epoch, self.rank, worker, data_pass)
            buckets: dict[tuple, list[LatentSample]] = {}
            made = 0
            for sample in self.shuffled(read_samples(shards, stats, self.latent_channels, self.text_dim), rng):
                bucket = buckets.setdefault(sample.shape_key, [])
                bucket.append(sample)
                if len(bucket) == self.batch_size:
                    batch = collate(bucket)
                    buckets[sample.shape_key] = []
                    batch["skipped"] = stats["skipped"]
                    yield seq, batch
                    seq, made = seq + 1, made + 1
                    if seq == self.batches_per_worker:
                        return
            if made == 0:
                raise ShardError(
                    f"rank {self.rank} worker {worker}: a whole pass over its {len(shards)} shards made no batch of "
                    f"{self.batch_size} same-shape samples ({stats['skipped']} bad samples): lower data.batch_size"
                )
            data_pass += 1

    def __iter__(self):
        info = get_worker_info()
        slot = info.id if info is not None else 0
        if info is not None and info.num_workers != self.num_workers:
            raise RuntimeError(f"the loader has {info.num_workers} workers, the stream was built for {self.num_workers}")
        worker = (slot + self.first_worker) % self.num_workers  # rotation: see the module docstring
        skip = self.consumed[worker]
        for seq, batch in self.worker_batches(self.epoch, worker):
            if seq < skip:
                continue
            batch["position"] = {"epoch": self.epoch, "worker": worker, "seq": seq}
            yield batch


class ResumableLoader(DataLoader):
    """A DataLoader over an `EditBatchStream` whose position Lightning saves and restores."""

    def __init__(self, stream: EditBatchStream, num_workers: int, pin_memory: bool = False, prefetch_factor: Optional[int] = None):
        kwargs = {"prefetch_factor": prefetch_factor} if num_workers > 0 and prefetch_factor else {}
        super().__init__(stream, batch_size=None, num_workers=num_workers, pin_memory=pin_memory, persistent_workers=False, **kwargs)
        self.stream = stream
        self.position = LoaderPosition(consumed=[0] * stream.num_workers, skipped=[0] * stream.num_workers)

    @property
    def skipped_total(self) -> int:
        """Bad samples this rank's loader has skipped so far, over its workers and epochs (consumed batches only)."""
        return self.position.skipped_total

    def __iter__(self):
        pos = self.position
        if all(c >= self.stream.batches_per_worker for c in pos.consumed):  # the epoch is done: start the next
            self.position = pos = pos.next_epoch(pos.epoch + 1, self.stream.num_workers)
        self.stream.epoch, self.stream.consumed = pos.epoch, list(pos.consumed)
        self.stream.first_worker = (pos.last_worker + 1) % self.stream.num_workers
        return super().__iter__()

    def mark_consumed(self, position: dict, skipped: int = 0) -> None:
        """Record that a training step consumed the batch at `position` (`{"epoch", "worker", "seq"}`),
        which its worker made after skipping `skipped` bad samples this epoch."""
        epoch, worker, seq = int(position["epoch"]), int(position["worker"]), int(position["seq"])
        if epoch != self.position.epoch:
            self.position = self.position.next_epoch(epoch, self.stream.num_workers)
        self.position.consumed[worker] = max(self.position.consumed[worker], seq + 1)
        self.position.skipped[worker] = max(self.position.skipped[worker], int(skipped))
        self.position.last_worker = worker

    def state_dict(self) -> dict:
        return {"position": asdict(self.position), "stream": self.stream.identity()}

    def load_state_dict(self, state: dict) -> None:
        saved, now = state["stream"], self.stream.identity()
        changed = sorted(k for k in now if saved.get(k) != now[k])
        if changed:
            raise ShardError(
                f"the checkpoint's data position was saved with other data settings ({', '.join(f'{k}: {saved.get(k)} -> {now[k]}' for k in changed)}): "
                "an exact resume needs the same shards, world size, data.num_workers, data.batch_size, data.seed and data.shuffle_buffer"
            )
        position = LoaderPosition(**state["position"])
        if len(position.skipped) != self.stream.num_workers:  # a checkpoint from before skipped samples were kept
            position.skipped = [0] * self.stream.num_workers
        self.position = position


def make_datamodule(cfg_data, latent_channels: int, text_dim: int, sequence_parallel: int = 1):
    """A LightningDataModule for `cfg_data` (`configs/train/data/*.yaml`); with `sequence_parallel`
    > 1, consecutive groups of that many ranks share one data-parallel rank."""
    import lightning.pytorch as pl

    class _LatentDataModule(pl.LightningDataModule):
        def __init__(self):
            super().__init__()
            self.cfg = cfg_data
            shards, self.index = list_shards(cfg_data.shards, "data.shards")
            holdout = int(cfg_data.get("holdout_shards", 0) or 0)
            if holdout >= len(shards):
                raise ShardError(f"data.holdout_shards={holdout} leaves no training shards of the {len(shards)} in data.shards")
            self.train_shards = shards[: len(shards) - holdout] if holdout else shards
            self.val_shards = shards[len(shards) - holdout :] if holdout else []
            self.train_loader: Optional[ResumableLoader] = None
            self.root = Path(str(cfg_data.shards)).expanduser()

        def train_dataloader(self):
            trainer = self.trainer
            rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
            # ranks of one sequence-parallel group read the same batches
            rank, world = rank // sequence_parallel, world // sequence_parallel
            stream = EditBatchStream(
                self.train_shards, int(self.cfg.batch_size), int(self.cfg.num_workers), rank, world, seed=int(self.cfg.seed),
                shuffle_buffer=int(self.cfg.shuffle_buffer), latent_channels=latent_channels, text_dim=text_dim,
            )
            self.train_loader = ResumableLoader(stream, int(self.cfg.num_workers), pin_memory=bool(self.cfg.get("pin_memory", False)),
                                                prefetch_factor=self.cfg.get("prefetch_factor"))
            return self.train_loader

        def held_out(self, limit: int) -> list[LatentSample]:
            """Up to `limit` held-out samples (data.holdout_shards), in file order."""
            out = []
            for sample in read_samples(self.val_shards, {"skipped": 0}, latent_channels, text_dim):
                out.append(sample)
                if len(out) >= limit:
                    break
            return out

        def text_defaults(self) -> dict[str, torch.Tensor]:
            """`{"empty": [L, D], "negative": [L, D]}` from the latent shards' text_defaults.safetensors."""
            from safetensors.torch import load_file

            from liveditor.train.precompute import TEXT_DEFAULTS_NAME

            path = self.root / self.index.get("text_defaults", TEXT_DEFAULTS_NAME)
            if not path.exists():
                raise ShardError(f"data.shards='{self.root}' has no {path.name}: rerun liveditor-precompute (it writes it)")
            return load_file(str(path))

    return _LatentDataModule()
