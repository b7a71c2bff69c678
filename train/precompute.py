"""`liveditor-precompute`: curated edit-pair shards -> latent shards for training.

    liveditor-precompute input_dir=/data/curated/shards out_dir=/data/latents encoders.path=/ckpt/Wan2.1-T2V-1.3B-Diffusers

For every sample of every input shard it decodes `src.mp4` and `tgt.mp4`, encodes both with the Wan
VAE (diffusers `AutoencoderKLWan`, or the exactly invertible `PatchCodec` when `vae/config.json` says
so) and the instruction with umT5 (transformers), and writes a shard of the same name that adds
`latents.safetensors` (train/shards.py has the format). Samples that cannot be used (undecodable
video, frame counts that differ or are not 4k+1, sizes not multiples of twice the VAE's spatial
stride, missing members) are written to `rejects.parquet` with the reason, never silently dropped.

Resumable and splittable: output shard i is written atomically (rejects and latent sums first, then
the tar), so a job killed at any instant and rerun skips finished shards and rewrites the rest
byte-identically. `partition.index/count` take every count-th shard (one GPU or array task each);
whichever task finds every shard present writes `index.json` (counts, sha256 of every shard, the
encoders' identity, the latents' per-channel mean and std). A rerun into a folder made with other
encoders or from other input is refused. Latents far from N(0, 1) (the VAE's declared
latents_mean/latents_std are wrong) fail the `latent_stats` check: exit 2 after index.json is written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import torch
from tqdm.auto import tqdm

from liveditor.files import atomic_write_bytes, atomic_write_json, atomic_write_text
from liveditor.configcheck import compose as compose_config  # noqa: F401  (also imported from here by the demo and tests)
from liveditor.train.shards import (
    INDEX_NAME,
    LATENTS_MEMBER,
    ShardError,
    decode_latent_sample,
    encode_latents,
    iter_tar_samples,
    read_index,
    sha256_file,
    write_tar,
)

log = logging.getLogger("liveditor.precompute")

ENCODERS_NAME = "encoders.json"
TEXT_DEFAULTS_NAME = "text_defaults.safetensors"
REJECT_COLUMNS = ("shard", "key", "reject_reason", "detail")
STATS_FIX_NAME = "vae_latent_stats.json"
STATS_CHECKS = ("error", "warn", "off")


def weights_fingerprint(folder: Path) -> str:
    """Identity of a model folder: sha256 over every file's relative path, size, and the sha256 of its
    first and last MiB (reading whole multi-GB weights would cost minutes; a retrained or replaced
    file changes its size or its ends)."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        size = path.stat().st_size
        h.update(f"{path.relative_to(folder)}\0{size}\0".encode())
        with open(path, "rb") as f:
            h.update(hashlib.sha256(f.read(1 << 20)).digest())
            if size > 1 << 20:
                f.seek(max(size - (1 << 20), 1 << 20))
                h.update(hashlib.sha256(f.read()).digest())
    return h.hexdigest()


class Encoders:
    """The Wan VAE and umT5 text encoder of a diffusers-format Wan directory (`encoders.path`)."""

    def __init__(self, cfg):
        from liveditor.pipeline.components import TextEncoder, WanVAE, check_wan_dir
        from liveditor.pipeline.editor import resolve_device, resolve_dtype

        root = check_wan_dir(cfg.encoders.path, "encoders.path", ["vae", "text_encoder", "tokenizer"])
        self.vae_config = root / "vae" / "config.json"  # declares latents_mean / latents_std
        self.device = resolve_device(str(cfg.runtime.device))
        self.vae = WanVAE.load(root, device=self.device, dtype=resolve_dtype(str(cfg.runtime.vae_dtype), self.device), key="encoders.path")
        self.text = TextEncoder.load(root, text_len=int(cfg.encoders.text_len), device=self.device,
                                     dtype=resolve_dtype(str(cfg.runtime.dtype), self.device), key="encoders.path")
        self.identity = {
            "vae": weights_fingerprint(root / "vae"),
            "text_encoder": weights_fingerprint(root / "text_encoder"),
            "tokenizer": weights_fingerprint(root / "tokenizer"),
            "text_len": int(cfg.encoders.text_len),
            "vae_dtype": str(cfg.runtime.vae_dtype),
            "text_dtype": str(cfg.runtime.dtype),
        }
        self.spatial_multiple = self.vae.spatial_stride * 2  # the DiT's 2x2 patch on top of the VAE's (or codec's) stride

    def token_counts(self, prompts: list[str]) -> list[int]:
        """Real token count of each prompt as the encoder sees it (end token included, truncated to text_len)."""
        ids = self.text.tokenizer(prompts, truncation=True, max_length=self.text.text_len, add_special_tokens=True).input_ids
        return [max(1, len(i)) for i in ids]

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> list[torch.Tensor]:
        """Prompts -> per prompt `[L_i, text_dim]` umT5 states of its real tokens."""
        if not prompts:
            return []
        states = self.text.encode(prompts)
        return [states[i, :n].float().cpu() for i, n in enumerate(self.token_counts(prompts))]

    @torch.no_grad()
    def encode_video(self, frames) -> torch.Tensor:
        """`uint8` `[T, H, W, 3]` -> normalised latents `vae.latent_shape(T, H, W)` (`[z, F', H/s, W/s]`) float32."""
        video = torch.from_numpy(frames).permute(3, 0, 1, 2).float().div(127.5).sub(1.0)
        return self.vae.encode(video.unsqueeze(0))[0].float().cpu()


def check_frames(src, tgt, cfg, spatial_multiple: int) -> tuple[Optional[int], Optional[str], str]:
    """Frames to use for a pair, or a reject reason: returns `(count, reason, detail)`."""
    from liveditor.pipeline.preprocess import frame_count_4k1

    if src.shape[0] != tgt.shape[0]:
        return None, "frame_count_mismatch", f"source has {src.shape[0]} frames, target {tgt.shape[0]}"
    if src.shape[1:] != tgt.shape[1:]:
        return None, "size_mismatch", f"source is {src.shape[2]}x{src.shape[1]}, target {tgt.shape[2]}x{tgt.shape[1]}"
    n = src.shape[0]
    if (n - 1) % 4:
        if cfg.video.frames == "reject":
            return None, "frame_count_not_4k1", f"{n} frames is not of the form 4k+1 (video.frames=reject)"
        n = frame_count_4k1(n)
    if n < int(cfg.video.min_frames):
        return None, "too_few_frames", f"{n} usable frames, video.min_frames={cfg.video.min_frames}"
    h, w = src.shape[1:3]
    if h % spatial_multiple or w % spatial_multiple:
        return None, "size_not_multiple", f"{w}x{h} is not a multiple of {spatial_multiple} on both sides"
    return n, None, ""


def process_shard(path: Path, out_path: Path, enc: Encoders, cfg, bar) -> tuple[int, list[dict]]:
    """Encode one input shard into `out_path`; returns (samples written, reject rows)."""
    from liveditor.video import VideoError, read_video

    kept, rejects, sums = [], [], LatentSums(enc.vae.z_dim)
    with tempfile.TemporaryDirectory(prefix="liveditor-precompute-") as tmp:
        for key, members in iter_tar_samples(path):
            bar.update(1)
            missing = [m for m in ("src.mp4", "tgt.mp4", "json") if m not in members]
            if missing:
                rejects.append(dict(shard=path.name, key=key, reject_reason="missing_member", detail=f"no {', '.join(missing)}"))
                continue
            try:
                meta = json.loads(members["json"])
                instruction = str(meta["instruction"]).strip()
                if not instruction:
                    raise KeyError("instruction")
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                rejects.append(dict(shard=path.name, key=key, reject_reason="bad_json", detail=f"no usable instruction: {exc}"))
                continue
            frames = {}
            try:
                for side in ("src", "tgt"):
                    file = Path(tmp) / f"{side}.mp4"
                    file.write_bytes(members[f"{side}.mp4"])
                    frames[side] = read_video(file).frames
            except VideoError as exc:  # the message names the temporary file: name the member instead
                detail = str(exc).replace(str(Path(tmp) / f"{side}.mp4"), f"{key}.{side}.mp4")
                rejects.append(dict(shard=path.name, key=key, reject_reason="undecodable_video", detail=detail))
                continue
            n, reason, detail = check_frames(frames["src"], frames["tgt"], cfg, enc.spatial_multiple)
            if reason:
                rejects.append(dict(shard=path.name, key=key, reject_reason=reason, detail=detail))
                continue
            kept.append((key, members, meta, instruction, enc.encode_video(frames["src"][:n]), enc.encode_video(frames["tgt"][:n]), n))
    texts = enc.encode_text([k[3] for k in kept])
    samples = []
    for (key, members, meta, _, src_lat, tgt_lat, n), text in zip(kept, texts):
        meta = dict(meta, latents={"source": list(src_lat.shape), "target": list(tgt_lat.shape), "text_tokens": int(text.shape[0]),
                                   "frames": n, "format": "bf16 normalised Wan VAE latents"})
        out = {}
        if bool(cfg.keep_media):
            out["src.mp4"], out["tgt.mp4"] = members["src.mp4"], members["tgt.mp4"]
        out["json"] = json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8")
        out[LATENTS_MEMBER] = encode_latents(src_lat, tgt_lat, text)
        samples.append((key, out))
        sums.add(src_lat).add(tgt_lat)
    write_rejects(out_path.parent / "rejects" / (out_path.stem + ".parquet"), rejects)
    atomic_write_json(stats_path(out_path.parent, out_path.name), sums.to_dict())
    write_tar(out_path, samples)
    return len(samples), rejects


def stats_path(out_dir: Path, shard_name: str) -> Path:
    """The per-channel latent sums of output shard `shard_name`, beside its rejects."""
    return out_dir / "rejects" / (Path(shard_name).stem + ".stats.json")


class LatentSums:
    """Per-channel count, sum and sum of squares (float64) of the latents a shard writes, as stored:
    rounded to bf16. Sums add exactly the same way on every run, so a resumed job writes the same bytes."""

    def __init__(self, z_dim: int, count: int = 0, total=None, squares=None):
        self.count = count
        self.sum = torch.zeros(z_dim, dtype=torch.float64) if total is None else torch.tensor(total, dtype=torch.float64)
        self.sum_sq = torch.zeros(z_dim, dtype=torch.float64) if squares is None else torch.tensor(squares, dtype=torch.float64)

    def add(self, latents: torch.Tensor) -> "LatentSums":
        """Add `[z, F, h, w]` normalised latents (rounded to bf16, as written)."""
        x = latents.to(torch.bfloat16).double().flatten(1)
        self.count += x.shape[1]
        self.sum += x.sum(1)
        self.sum_sq += (x * x).sum(1)
        return self

    def merge(self, other: "LatentSums") -> "LatentSums":
        self.count, self.sum, self.sum_sq = self.count + other.count, self.sum + other.sum, self.sum_sq + other.sum_sq
        return self

    def to_dict(self) -> dict:
        return {"count": self.count, "sum": self.sum.tolist(), "sum_sq": self.sum_sq.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "LatentSums":
        return cls(len(d["sum"]), int(d["count"]), d["sum"], d["sum_sq"])

    def stats(self) -> dict:
        """`{"mean": [z], "std": [z] (population), "count": values per channel}`; empty lists when count is 0."""
        if self.count == 0:
            return {"mean": [], "std": [], "count": 0}
        mean = self.sum / self.count
        return {"mean": mean.tolist(), "std": (self.sum_sq / self.count - mean * mean).clamp(min=0).sqrt().tolist(), "count": self.count}


def shard_latent_sums(out_dir: Path, name: str, z_dim: int) -> LatentSums:
    """The latent sums of output shard `name`: its stats file, or (a shard written before these files
    existed) measured from the latents in its tar."""
    path = stats_path(out_dir, name)
    if path.exists():
        return LatentSums.from_dict(json.loads(path.read_text()))
    sums = LatentSums(z_dim)
    for key, members in iter_tar_samples(out_dir / name):
        sample = decode_latent_sample(key, members)
        sums.add(sample.source_latents).add(sample.target_latents)
    return sums


def latent_stats_limits(cfg) -> dict:
    """The validated `latent_stats` config block: `check` (error | warn | off), `min_std`, `max_std`, `max_abs_mean`."""
    s = cfg.latent_stats
    check = "off" if s.check is False else s.check  # YAML 1.1 reads a bare `off` in a file as false
    if check not in STATS_CHECKS:
        raise ShardError(f"latent_stats.check must be one of {', '.join(STATS_CHECKS)}, got {s.check!r}")
    limits = {"check": check}
    for key in ("min_std", "max_std", "max_abs_mean"):
        value = s[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ShardError(f"latent_stats.{key} must be a number > 0, got {value!r}")
        limits[key] = float(value)
    if limits["max_std"] <= limits["min_std"]:
        raise ShardError(f"latent_stats.max_std={limits['max_std']} must be greater than latent_stats.min_std={limits['min_std']}")
    return limits


def check_latent_stats(stats: dict, limits: dict, vae_config: Path, declared_mean, declared_std, out_dir: Path) -> None:
    """Compare the measured per-channel mean/std of the normalised latents with `limits`. On failure
    write `out_dir/vae_latent_stats.json` (the latents_mean/latents_std the VAE config should declare,
    from the declared ones and the measurement) and raise ShardError (check=error) or log a warning."""
    if limits["check"] == "off" or not stats["count"]:
        return
    lo, hi, top = limits["min_std"], limits["max_std"], limits["max_abs_mean"]
    def badness(c):  # > 1: outside the limits, by that factor
        m, s = stats["mean"][c], stats["std"][c]
        return max(lo / s if s > 0 else math.inf, s / hi, abs(m) / top)
    bad = [c for c in range(len(stats["std"])) if badness(c) > 1]
    if not bad:
        return
    worst = max(bad, key=badness)
    fix = {"vae_config": str(vae_config),
           "latents_mean": [dm + ds * m for dm, ds, m in zip(declared_mean, declared_std, stats["mean"])],
           "latents_std": [ds * s for ds, s in zip(declared_std, stats["std"])]}
    atomic_write_json(out_dir / STATS_FIX_NAME, fix)
    message = (
        f"the normalised latents in '{out_dir}' are far from N(0, 1): channel {worst} has mean {stats['mean'][worst]:.4g}, "
        f"std {stats['std'][worst]:.4g} ({len(bad)} of {len(stats['std'])} channels outside latent_stats min_std={lo:g}, "
        f"max_std={hi:g}, max_abs_mean={top:g}), so the latents_mean/latents_std declared in '{vae_config}' are wrong: "
        f"set them to the measured values in '{out_dir / STATS_FIX_NAME}' and rerun into a new out_dir"
    )
    if limits["check"] == "error":
        raise ShardError(message + " (or set latent_stats.check=warn to keep these latents)")
    log.warning("precompute: %s", message)


def write_rejects(path: Path, rows: list[dict]) -> None:
    """Reject rows as a Parquet manifest (curation's manifest writer: atomic, a missing key is null)."""
    import pyarrow as pa

    from liveditor.data_pipeline.manifest import write_manifest

    write_manifest(rows, path, pa.schema([(c, pa.string()) for c in REJECT_COLUMNS]))


def check_identity(out_dir: Path, identity: dict) -> None:
    """Refuse to add to a folder of latents made by other encoders or from other input (a stale cache)."""
    path = out_dir / ENCODERS_NAME
    if path.exists():
        previous = json.loads(path.read_text())
        changed = sorted(k for k in set(previous) | set(identity) if previous.get(k) != identity.get(k))
        if changed:
            raise ShardError(
                f"out_dir='{out_dir}' holds latents made with other encoders or input (differs in {changed}): "
                "they would be stale; choose another out_dir or delete that folder"
            )
    else:
        atomic_write_json(path, identity)


def write_text_defaults(out_dir: Path, enc: Encoders, cfg) -> None:
    """Embeddings training needs without a text encoder: the empty prompt (text dropout for CFG) and
    the negative prompt (guidance in validation edits)."""
    from safetensors.torch import save

    path = out_dir / TEXT_DEFAULTS_NAME
    if path.exists():
        return
    empty, negative = enc.encode_text(["", str(cfg.negative_prompt)])
    data = save({"empty": empty.to(torch.bfloat16).contiguous(), "negative": negative.to(torch.bfloat16).contiguous()},
                metadata={"negative_prompt": str(cfg.negative_prompt)})
    atomic_write_bytes(path, data)


def maybe_write_index(out_dir: Path, in_index: dict, identity: dict, z_dim: int) -> Optional[dict]:
    """Write `index.json` once every planned shard exists; returns it (None while some are missing).
    `z_dim`: the latent channels (the shape of `latent_stats` when no shard has a sample)."""
    import pyarrow.parquet as pq

    names = [s["name"] for s in in_index["shards"]]
    if not all((out_dir / n).exists() for n in names):
        return None
    shards, rejects, shapes, sums = [], [], {}, LatentSums(z_dim)
    for name in names:
        count = 0
        for key, members in iter_tar_samples(out_dir / name):
            meta = json.loads(members["json"])
            shape = "x".join(str(v) for v in meta["latents"]["target"])
            shapes[shape] = shapes.get(shape, 0) + 1
            count += 1
        shards.append({"name": name, "samples": count, "bytes": (out_dir / name).stat().st_size, "sha256": sha256_file(out_dir / name)})
        rejects.extend(pq.read_table(out_dir / "rejects" / (Path(name).stem + ".parquet")).to_pylist())
        sums.merge(shard_latent_sums(out_dir, name, z_dim))
    write_rejects(out_dir / "rejects.parquet", rejects)
    reasons: dict[str, int] = {}
    for r in rejects:
        reasons[r["reject_reason"]] = reasons.get(r["reject_reason"], 0) + 1
    index = {
        "format": "webdataset", "kind": "latents",
        "members": ["src.mp4", "tgt.mp4", "json", LATENTS_MEMBER] if any(s["samples"] for s in shards) else [],
        "shards": shards, "num_shards": len(shards), "num_samples": sum(s["samples"] for s in shards),
        "num_rejected": len(rejects), "reject_reasons": dict(sorted(reasons.items())),
        "latent_shapes": dict(sorted(shapes.items())), "encoders": identity, "text_defaults": TEXT_DEFAULTS_NAME,
        "latent_stats": sums.stats(),
    }
    atomic_write_json(out_dir / INDEX_NAME, index)
    return index


def run_precompute(cfg) -> Path:
    """Encode the shards of `cfg.input_dir` assigned to this partition into `cfg.out_dir`."""
    from omegaconf import OmegaConf

    in_dir = Path(str(cfg.input_dir)).expanduser() if cfg.input_dir else None
    in_index = read_index(cfg.input_dir, "input_dir")
    if cfg.video.frames not in ("trim", "reject"):
        raise ShardError(f"video.frames must be trim or reject, got {cfg.video.frames!r}")
    count, index = int(cfg.partition.count), int(cfg.partition.index)
    if count < 1 or not 0 <= index < count:
        raise ShardError(f"partition.index={index} must lie in [0, partition.count={count})")
    limits = latent_stats_limits(cfg)
    out_dir = Path(str(cfg.out_dir)).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    if bool(cfg.runtime.deterministic):
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    enc = Encoders(cfg)
    identity = dict(enc.identity, input_index_sha256=sha256_file(in_dir / INDEX_NAME))
    check_identity(out_dir, identity)
    atomic_write_text(out_dir / f"precompute.config.{index}.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    write_text_defaults(out_dir, enc, cfg)

    mine = [s for i, s in enumerate(in_index["shards"]) if i % count == index]
    todo = [s for s in mine if not (out_dir / s["name"]).exists()]
    log.info("precompute: %d of %d shards are this task's (partition %d/%d), %d left", len(mine), len(in_index["shards"]), index, count, len(todo))
    bar = tqdm(total=sum(int(s.get("samples", 0)) for s in todo), desc="precompute", unit="sample", disable=not cfg.progress)
    start, written = time.perf_counter(), 0
    for s in todo:
        n, rejects = process_shard(in_dir / s["name"], out_dir / s["name"], enc, cfg, bar)
        written += n
        for r in rejects:
            log.warning("rejected %s/%s: %s (%s)", r["shard"], r["key"], r["reject_reason"], r["detail"])
    bar.close()
    elapsed = time.perf_counter() - start
    if todo:
        log.info("precompute: %d samples in %.1f s (%.2f samples/s)", written, elapsed, written / max(elapsed, 1e-9))
    final = maybe_write_index(out_dir, in_index, identity, enc.vae.z_dim)
    if final is None:
        log.info("precompute: other partitions' shards are still missing; the last task to finish writes %s", INDEX_NAME)
    else:
        log.info("precompute: %d samples in %d shards, %d rejected -> %s", final["num_samples"], final["num_shards"], final["num_rejected"], out_dir)
        if final["num_samples"] == 0:
            log.error("precompute: NO samples were written: every sample was rejected (see %s)", out_dir / "rejects.parquet")
        stats = final["latent_stats"]
        if stats["count"]:
            log.info("precompute: normalised latents per channel: mean %.3g..%.3g, std %.3g..%.3g (latent_stats in %s)",
                     min(stats["mean"]), max(stats["mean"]), min(stats["std"]), max(stats["std"]), INDEX_NAME)
        check_latent_stats(stats, limits, enc.vae_config, enc.vae.mean.flatten().tolist(), enc.vae.std.flatten().tolist(), out_dir)
    return out_dir


def main(argv=None) -> int:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from liveditor.pipeline.components import ComponentError
    from liveditor.pipeline.editor import EditError

    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(__doc__)
        print("Overrides (key=value) of configs/precompute/precompute.yaml:\n")
        from omegaconf import OmegaConf

        print(OmegaConf.to_yaml(compose_config("precompute")))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run_precompute(compose_config("precompute", args))
    except (ShardError, ComponentError, EditError, HydraException, OmegaConfBaseException) as exc:
        print(f"liveditor-precompute: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
