"""Stage 1, probe: list the input videos and read their metadata.

Inputs come from `input.paths` (folders searched recursively for `input.extensions`, single
files of any extension, glob patterns) and `input.manifest` (CSV, JSON, JSONL or Parquet with a
`path` column and optional `caption`). Each video is opened with decord (PyAV when decord fails),
its last frame is decoded to catch truncated files, and `check_frames` frames spread across the file
are decoded with PyAV (which, unlike decord, reports damaged packets instead of concealing them), so
a file damaged in the middle is caught here, not stages later under another name. A still image
under a video name (a PNG renamed `.mp4`, which FFmpeg opens as a one-frame "video") is `not_a_video`.
Missing, zero-byte, non-video, stream-less, frame-less, truncated and undecodable files become rows
with a `reject_reason`; the run goes on. Every readable video gets a `content_hash` (`content_hash`:
its size and three 1 MiB samples, start, middle and end): byte-identical copies of one video under
other names share it, and the dedup stage keeps the pairs of one copy only (`dedup.py`). Its
`video_id` hashes its path relative to `base_dir` (`video_id`).
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import pyarrow as pa

from liveditor.video import VideoError, probe_video, read_video

from .manifest import REJECT_FIELDS
from .pair_video import read_frame_times
from .stage import StageContext, reject, run_rowwise, short_id

log = logging.getLogger("liveditor.curate")

SCHEMA = pa.schema([
    pa.field("video_id", pa.string()), pa.field("path", pa.string()), pa.field("caption", pa.string()),
    pa.field("size_bytes", pa.int64()), pa.field("num_frames", pa.int64()), pa.field("fps", pa.float64()),
    pa.field("width", pa.int64()), pa.field("height", pa.int64()), pa.field("duration_s", pa.float64()),
    pa.field("decoder", pa.string()), pa.field("content_hash", pa.string()), pa.field("error", pa.string()), *REJECT_FIELDS,
])


def read_table_file(path: str) -> list[dict]:
    """Rows of a CSV, JSON (a list of objects), JSONL or Parquet file."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"manifest '{path}' does not exist: fix the path in the config")
    suffix = p.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(p).to_pylist()
    if suffix == ".csv":
        import csv

        with open(p, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    if suffix == ".jsonl":
        with open(p, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    if suffix == ".json":
        data = json.loads(p.read_text(encoding="utf-8"))
        if isinstance(data, dict):  # {"data": [...]} or {"key": {...}, ...}
            data = data.get("data") or data.get("items") or list(data.values())
        return list(data)
    raise ValueError(f"manifest '{path}' has an unknown format '{suffix}': use .csv, .json, .jsonl or .parquet")


def video_id(path: str, base_dir: str = ".") -> str:
    """A video's id: a short hash of its path relative to `base_dir`. Every key made from it (clip ids, pair
    keys) and every choice seeded by those keys (the edits a clip gets, an instruction's phrasing, the
    synthetic editor's parameters) is then the same when a tree of inputs is curated again from another
    place with its `base_dir`, as `liveditor learn` and `liveditor demo` do under any `--out`."""
    return short_id(os.path.relpath(os.path.abspath(path), os.path.abspath(base_dir)))


def list_inputs(input_cfg, base_dir: str = ".") -> list[dict]:
    """`[{path, caption, video_id}]` for every input, absolute paths, sorted, each path once."""
    exts = {e.lower() for e in input_cfg.extensions}
    found: dict[str, dict] = {}

    def add(path: str, caption=None):
        path = os.path.abspath(os.path.join(base_dir, path))
        found.setdefault(path, {"path": path, "caption": caption, "video_id": video_id(path, base_dir)})

    for entry in input_cfg.paths or []:
        entry = os.path.join(base_dir, str(entry))
        if os.path.isdir(entry):
            for root, _, files in os.walk(entry):
                for name in files:
                    if os.path.splitext(name)[1].lower() in exts:
                        add(os.path.join(root, name))
        elif any(ch in entry for ch in "*?["):
            for match in glob.glob(entry, recursive=True):
                if os.path.isfile(match):
                    add(match)
        else:
            add(entry)  # a named file is probed whatever its extension, and rejected if missing
    if input_cfg.manifest:
        rows = read_table_file(os.path.join(base_dir, str(input_cfg.manifest)))
        key = input_cfg.manifest_path_key
        manifest_dir = os.path.dirname(os.path.abspath(os.path.join(base_dir, str(input_cfg.manifest))))
        for i, row in enumerate(rows):
            if key not in row:
                raise KeyError(f"manifest '{input_cfg.manifest}' row {i} has no '{key}' column: set input.manifest_path_key")
            add(os.path.join(manifest_dir, str(row[key])), row.get(input_cfg.manifest_caption_key))
    return [found[k] for k in sorted(found)]


def _reason(path: str, message: str) -> str:
    m = message.lower()
    if "does not exist" in m:
        return "missing"
    if "empty (0 bytes)" in m:
        return "zero_bytes"
    if "no video stream" in m:
        return "no_video_stream"
    if "0 decodable frames" in m:
        return "zero_frames"
    if "invalid data" in m or "moov atom" in m or "error reading" in m or "could not find" in m:
        return "not_a_video"
    return "decode_error"


# Leading bytes of the containers videos come in: a file that starts like one but does not open
# is a cut-off or damaged video, not some other kind of file.
_SIGNATURES = ((4, b"ftyp"), (0, b"\x1a\x45\xdf\xa3"), (0, b"RIFF"), (0, b"\x00\x00\x01\xba"), (0, b"FLV"), (4, b"moov"), (4, b"mdat"))


def looks_like_video_container(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return False
    return any(head[o : o + len(sig)] == sig for o, sig in _SIGNATURES)


class NotAVideo(VideoError):
    """The file opens, but as something other than a video (a still image)."""


def check_spread_frames(path: str, count: int) -> None:
    """Decode `count` frames spread evenly from the first to the last (and every frame between each and
    its keyframe) with PyAV; raise `VideoError` naming the file on damage, `NotAVideo` for a still image."""
    import av

    try:
        with av.open(path) as container:
            fmt = container.format.name
            if fmt == "image2" or fmt.endswith("_pipe"):
                raise NotAVideo(f"video '{path}' is a still image ({fmt} format), not a video")
    except VideoError:
        raise
    except Exception as exc:
        raise VideoError(f"video '{path}' could not be opened: {exc}") from exc
    if count <= 0:
        return
    times = read_frame_times(path)
    targets = sorted({int(times.pts[i]) for i in np.linspace(0, len(times) - 1, num=count).round().astype(int)})
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            keyframes = sorted(p.pts for p in container.demux(stream) if p.is_keyframe and p.pts is not None)
            container.seek(0, stream=stream)
            frames = None
            position = None  # pts of the last frame decoded
            for target in targets:
                k = max([kf for kf in keyframes if kf <= target], default=None)
                if frames is None or position is None or k is None or k > position:  # jump ahead; else decode on
                    container.seek(target, stream=stream, backward=True, any_frame=False)
                    frames = container.decode(stream)
                for frame in frames:
                    position = frame.pts if frame.pts is not None else position
                    if position is not None and position >= target:
                        break
                else:
                    raise VideoError(f"video '{path}' ends before its frame at {target * times.time_base:.2f} s")
    except VideoError:
        raise
    except Exception as exc:
        raise VideoError(f"video '{path}' could not be decoded near {target * times.time_base:.2f} s: {exc}") from exc


SAMPLE_BYTES = 1 << 20


def content_hash(path: str) -> str:
    """SHA-256 (hex) of a file's size and of 1 MiB at its start, middle and end: equal for byte-identical
    copies; different for a re-encode or a cut (the size, and an mp4's index at one end, change). Three
    reads per video instead of the whole file."""
    size = os.path.getsize(path)
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        for start in sorted({0, max(0, size // 2 - SAMPLE_BYTES // 2), max(0, size - SAMPLE_BYTES)}):
            f.seek(start)
            digest.update(f.read(SAMPLE_BYTES))
    return digest.hexdigest()


def probe_one(item: dict, decoder: str = "auto", check_last_frame: bool = True, check_frames: int = 9) -> dict:
    """Probe one input; a failure is a rejected row with the reason and the decoder's message."""
    path = item["path"]
    row = {"video_id": item.get("video_id") or video_id(path), "path": path, "caption": item.get("caption"),
           "size_bytes": os.path.getsize(path) if os.path.isfile(path) else None,
           "error": None, "reject_reason": None, "reject_stage": None}
    tried = ["decord", "pyav"] if decoder == "auto" else [decoder]
    error = None
    for dec in tried:
        try:
            info = probe_video(path, decoder=dec)
            if check_last_frame:  # a truncated file keeps its header's frame count
                read_video(path, indices=[info.num_frames - 1], decoder=dec)
        except VideoError as exc:
            error = str(exc)
            if _reason(path, error) in ("missing", "zero_bytes"):
                break
            continue
        except ImportError:
            continue
        row.update(num_frames=info.num_frames, fps=info.fps, width=info.width, height=info.height,
                   duration_s=info.duration_s, decoder=dec)
        try:
            check_spread_frames(path, check_frames)
        except VideoError as exc:
            row["error"] = str(exc)  # the header's metadata stays in the row: it says what the file claimed
            reason = "not_a_video" if isinstance(exc, NotAVideo) or not looks_like_video_container(path) else "truncated_or_corrupt"
            log.warning("video '%s' skipped (reason: %s): %s", path, reason, exc)
            return reject(row, "probe", reason)
        if info.fps <= 0:
            return reject(row, "probe", "no_frame_rate")
        row["content_hash"] = content_hash(path)
        return row
    row["error"] = error
    reason = _reason(path, error or "")
    if reason in ("not_a_video", "decode_error") and looks_like_video_container(path):
        # Headers read but frames do not decode to the end: the usual signature of a cut-off file.
        reason = "truncated_or_corrupt"
    log.warning("video '%s' skipped (reason: %s): %s", path, reason, error)
    return reject(row, "probe", reason)


def run(ctx: StageContext) -> None:
    cfg = ctx.cfg
    items = [it for it in list_inputs(cfg.input, cfg.base_dir) if ctx.partition.owns(it["path"])]
    if not items and ctx.partition.count == 1:
        raise FileNotFoundError(
            f"no input videos found in input.paths={list(cfg.input.paths or [])} input.manifest={cfg.input.manifest}: "
            f"point input.paths at folders, files or globs of {list(cfg.input.extensions)} files")
    p = cfg.probe
    run_rowwise(ctx, "probe", items, lambda it: [probe_one(it, p.decoder, p.check_last_frame, p.check_frames)], SCHEMA, p.chunk_size,
                desc=f"probe {ctx.partition.name}")
