"""Video decode and encode: the project's one video reader and one mp4 writer.

Decoding uses decord when it imports (fast random access), else PyAV; writing uses PyAV (H.264 in
mp4). Frames are always `uint8` arrays `[T, H, W, 3]` in RGB order.

    info = probe_video("in.mp4")                    # frames, fps, size without decoding everything
    clip = read_video("in.mp4", max_frames=81)      # VideoClip(frames [T, H, W, 3], fps)
    write_video("out.mp4", clip.frames, fps=16)     # atomic: a partial file never appears at the path

Every failure raises `VideoError`, whose message names the file and the reason, for example
"video 'x.mp4' has 0 decodable frames".
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from liveditor.files import atomic_target

PathLike = Union[str, os.PathLike]

DECODERS = ("auto", "decord", "pyav")


class VideoError(ValueError):
    """A video could not be opened, decoded or written; the message names the file."""


@dataclass(frozen=True)
class VideoInfo:
    """What a container says about its first video stream.

    Attributes:
        path: the file.
        num_frames: frame count (decoded count for PyAV when the container has none).
        fps: average frames per second.
        width, height: pixels.
    """

    path: str
    num_frames: int
    fps: float
    width: int
    height: int

    @property
    def duration_s(self) -> float:
        return self.num_frames / self.fps if self.fps > 0 else 0.0


@dataclass
class VideoClip:
    """Decoded frames.

    Attributes:
        frames: `uint8` `[T, H, W, 3]` RGB.
        fps: frames per second of the returned frames (source fps divided by the frame step).
        source: the file they came from.
    """

    frames: np.ndarray
    fps: float
    source: str = ""

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        """`(width, height)` in pixels."""
        return int(self.frames.shape[2]), int(self.frames.shape[1])


def _have_decord() -> bool:
    try:
        import decord  # noqa: F401
    except Exception:  # a broken native build is as good as absent
        return False
    return True


def _pick_decoder(decoder: str) -> str:
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    if decoder == "auto":
        return "decord" if _have_decord() else "pyav"
    return decoder


def _check_file(path: PathLike) -> str:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise VideoError(f"video '{path}' does not exist")
    if not os.path.isfile(path):
        raise VideoError(f"video '{path}' is not a file")
    if os.path.getsize(path) == 0:
        raise VideoError(f"video '{path}' is empty (0 bytes)")
    return path


def probe_video(path: PathLike, decoder: str = "auto") -> VideoInfo:
    """Frame count, fps and size of the first video stream of `path`."""
    path = _check_file(path)
    decoder = _pick_decoder(decoder)
    if decoder == "decord":
        vr = _open_decord(path)
        if len(vr) == 0:
            raise VideoError(f"video '{path}' has 0 decodable frames")
        h, w = vr[0].shape[:2]
        return VideoInfo(path, len(vr), float(vr.get_avg_fps()), int(w), int(h))
    import av

    try:
        with av.open(path) as container:
            stream = _video_stream(container, path)
            fps = float(stream.average_rate or stream.guessed_rate or 0.0)
            n = int(stream.frames or 0)
            width, height = int(stream.codec_context.width), int(stream.codec_context.height)
            if n == 0:  # container without a frame count: count by decoding
                n = sum(1 for _ in container.decode(stream))
    except VideoError:
        raise
    except Exception as exc:
        raise VideoError(f"video '{path}' could not be decoded: {exc}") from exc
    if n == 0:
        raise VideoError(f"video '{path}' has 0 decodable frames")
    return VideoInfo(path, n, fps, width, height)


def _open_decord(path: str):
    import decord

    try:
        return decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    except Exception as exc:
        raise VideoError(f"video '{path}' could not be decoded: {exc}") from exc


def _video_stream(container, path: str):
    if not container.streams.video:
        raise VideoError(f"video '{path}' has no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    return stream


def frame_indices(num_available: int, max_frames: Optional[int] = None, start_frame: int = 0, frame_step: int = 1) -> list[int]:
    """Indices `start_frame, start_frame + frame_step, ...` below `num_available`, at most `max_frames`."""
    if frame_step < 1:
        raise ValueError(f"frame_step must be >= 1, got {frame_step}")
    if start_frame < 0:
        raise ValueError(f"start_frame must be >= 0, got {start_frame}")
    idx = list(range(start_frame, num_available, frame_step))
    return idx[:max_frames] if max_frames is not None else idx


def read_video(
    path: PathLike,
    max_frames: Optional[int] = None,
    start_frame: int = 0,
    frame_step: int = 1,
    indices: Optional[Sequence[int]] = None,
    decoder: str = "auto",
) -> VideoClip:
    """Decode frames of `path` to `uint8` `[T, H, W, 3]` RGB.

    Args:
        max_frames: keep at most this many frames (after `start_frame` and `frame_step`).
        start_frame: first frame index to keep.
        frame_step: keep every `frame_step`-th frame; the clip's fps is divided by it.
        indices: explicit frame indices (overrides the three above); out-of-range indices are an error.
        decoder: "auto" (decord when importable, else PyAV), "decord" or "pyav".
    """
    path = _check_file(path)
    decoder = _pick_decoder(decoder)
    step = 1 if indices is not None else frame_step
    if decoder == "decord":
        vr = _open_decord(path)
        n = len(vr)
        idx = _resolve_indices(path, n, indices, max_frames, start_frame, frame_step)
        try:
            frames = vr.get_batch(idx).asnumpy()
        except Exception as exc:
            raise VideoError(f"video '{path}' could not be decoded: {exc}") from exc
        fps = float(vr.get_avg_fps())
    else:
        frames, fps = _read_pyav(path, indices, max_frames, start_frame, frame_step)
    if frames.shape[0] == 0:
        raise VideoError(f"video '{path}' has 0 decodable frames")
    return VideoClip(np.ascontiguousarray(frames, dtype=np.uint8), fps / step, path)


def _resolve_indices(path, n, indices, max_frames, start_frame, frame_step) -> list[int]:
    if n == 0:
        raise VideoError(f"video '{path}' has 0 decodable frames")
    if indices is None:
        return frame_indices(n, max_frames, start_frame, frame_step)
    idx = [int(i) for i in indices]
    bad = [i for i in idx if not 0 <= i < n]
    if bad:
        raise VideoError(f"video '{path}' has {n} frames; requested indices out of range: {bad[:5]}")
    return idx


def _read_pyav(path, indices, max_frames, start_frame, frame_step):
    import av

    wanted = None if indices is None else sorted(set(int(i) for i in indices))
    wanted_set = set(wanted or ())
    decoded: dict[int, np.ndarray] = {}
    kept: list[np.ndarray] = []
    try:
        with av.open(path) as container:
            stream = _video_stream(container, path)
            fps = float(stream.average_rate or stream.guessed_rate or 0.0)
            for i, frame in enumerate(container.decode(stream)):
                if wanted is not None:
                    if i in wanted_set:
                        decoded[i] = frame.to_ndarray(format="rgb24")
                    if not wanted or i >= wanted[-1]:
                        break
                    continue
                if i < start_frame or (i - start_frame) % frame_step:
                    continue
                kept.append(frame.to_ndarray(format="rgb24"))
                if max_frames is not None and len(kept) >= max_frames:
                    break
    except VideoError:
        raise
    except Exception as exc:
        raise VideoError(f"video '{path}' could not be decoded: {exc}") from exc
    if wanted is not None:
        missing = [i for i in wanted if i not in decoded]
        if missing:
            raise VideoError(f"video '{path}' has no frames at indices {missing[:5]}")
        kept = [decoded[int(i)] for i in indices]
    if not kept:
        return np.zeros((0, 0, 0, 3), dtype=np.uint8), fps
    return np.stack(kept), fps


def write_video(path: PathLike, frames: np.ndarray, fps: float = 16.0, crf: int = 18, codec: str = "libx264",
                preset: Optional[str] = None) -> Path:
    """Write `uint8` `[T, H, W, 3]` RGB frames to an mp4 at `path` with PyAV.

    The file is written to a temporary name in the same folder and renamed into place, so `path`
    holds either nothing or a complete video. Odd sizes are padded by one pixel (H.264 with yuv420p
    needs even sizes). x264 runs with `cpu-independent=1` and a fixed 2 sliced threads, so the same
    frames give the same bytes in every run and on machines with any number of cores
    (deterministic shard sets rely on it). `preset` is x264's speed/size trade-off (None: x264's
    default, medium); curation's pair videos use veryfast, a third of medium's CPU time at the same CRF.
    Returns the path.
    """
    import av

    path = Path(path)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise VideoError(f"cannot write '{path}': frames must be [T, H, W, 3], got shape {tuple(frames.shape)}")
    if frames.shape[0] == 0:
        raise VideoError(f"cannot write '{path}': no frames")
    if frames.dtype != np.uint8:
        raise VideoError(f"cannot write '{path}': frames must be uint8, got {frames.dtype}")
    if not fps > 0:
        raise VideoError(f"cannot write '{path}': fps must be positive, got {fps}")
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    try:
        with atomic_target(path, suffix=".partial.mp4") as tmp, av.open(tmp, mode="w", format="mp4") as container:
            stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
            stream.width, stream.height = int(frames.shape[2]), int(frames.shape[1])
            stream.pix_fmt = "yuv420p"
            # cpu-independent: without it x264's output differs from run to run at some sizes. A fixed
            # 2 sliced threads (2 slices per picture) instead of one per CPU: the slice count is in the
            # bitstream, so with the default the bytes depended on the machine's core count.
            if codec == "libx264":
                stream.thread_type, stream.thread_count = "SLICE", 2
                options = {"crf": str(crf), "x264-params": "cpu-independent=1:threads=2:sliced-threads=1"}
                if preset is not None:
                    options["preset"] = str(preset)
                stream.options = options
            else:
                stream.options = {}
            for rgb in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    except BaseException as exc:
        if isinstance(exc, Exception) and not isinstance(exc, VideoError):
            raise VideoError(f"cannot write '{path}': {exc}") from exc
        raise
    return path


def read_video_thumbnails(path: PathLike, max_width: int = 96, threads: Optional[int] = None) -> VideoClip:
    """Decode every frame of `path` at low resolution, fast: `uint8` `[T, h, w, 3]` RGB, `w <= max_width`.

    For analysis that needs every frame but not every pixel (shot boundaries, motion). PyAV decodes
    with the H.264 loop filter skipped (invisible at thumbnail size, ~1.5x faster) and libavcodec's
    `fast` flag (bit-exact for H.264 here), and the thumbnail is taken straight from the YUV planes
    by striding, so no full-size RGB frame is ever made. Frames in other pixel formats go through
    swscale to the same size.

    Threads (`threads`, default: the CPUs this process may use, as OpenCV's FFmpeg reader does):
    slice threading when the first picture has several slices (x264's sliced threads, which
    PyAV-written files have), else frame threading. Slice threading alone leaves single-slice
    footage, most camera and web video, on one core.
    """
    import av

    path = _check_file(path)
    if threads is None:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    thumbs: Optional[np.ndarray] = None
    n = 0
    try:
        with _open_without_probe_decoding(av, path) as container:
            stream = _video_stream(container, path)
            cc = stream.codec_context
            cc.options = {"skip_loop_filter": "all"}
            cc.flags2 |= av.codec.context.Flags2.fast
            fps = float(stream.average_rate or stream.guessed_rate or 0.0)
            width, height = int(cc.width), int(cc.height)
            step = max(2, 2 * -(-width // (2 * max_width)))  # even stride: chroma is half size
            h, w = max(1, height // step), max(1, width // step)
            thumbs = np.empty((max(int(stream.frames or 0), 16), h, w, 3), dtype=np.uint8)
            configured = False
            for packet in container.demux(stream):
                if not configured and packet.size:
                    many_slices = _h264_slices(cc, bytes(packet)) > 1
                    stream.thread_type = "SLICE" if many_slices else "FRAME"
                    cc.thread_count = max(1, threads)
                    configured = True
                for frame in cc.decode(packet):
                    if n == len(thumbs):
                        thumbs = np.concatenate([thumbs, np.empty_like(thumbs)])
                    if frame.format.name in ("yuv420p", "yuvj420p") and frame.height // step == h and frame.width // step == w:
                        _yuv420_thumbnail_into(thumbs[n], frame, step)
                    else:
                        rgb = frame.to_ndarray(width=w, height=h, format="rgb24")
                        thumbs[n] = _rgb_to_yuv(rgb)
                    n += 1
    except VideoError:
        raise
    except Exception as exc:
        raise VideoError(f"video '{path}' could not be decoded: {exc}") from exc
    if not n:
        raise VideoError(f"video '{path}' has 0 decodable frames")
    return VideoClip(_yuv_to_rgb(thumbs[:n]), fps, path)


def _open_without_probe_decoding(av, path: str):
    """`av.open`, with stream probing told not to decode (it decodes the first frames to learn what
    mp4 and mkv headers already say; ~5 ms of a 720p file). Formats whose streams appear only while
    probing (MPEG-TS) or whose size the header lacks are opened the ordinary way."""
    try:
        container = av.open(path, stream_options=[{"skip_frame": "all"}] * 16)
    except ValueError:
        return av.open(path)
    if container.streams.video and container.streams.video[0].codec_context.width:
        return container
    container.close()
    return av.open(path)


def _h264_slices(codec_context, data: bytes) -> int:
    """Slices (coded-picture NAL units) in the first packet of an H.264 stream; 0 for other codecs."""
    if codec_context.name != "h264" or not data:
        return 0
    extradata = codec_context.extradata or b""
    if extradata[:1] == b"\x01" and len(extradata) > 4:  # avcC (mp4, mkv): length-prefixed NAL units
        size, pos, types = (extradata[4] & 3) + 1, 0, []
        while pos + size < len(data):
            length = int.from_bytes(data[pos : pos + size], "big")
            types.append(data[pos + size] & 0x1F)
            pos += size + length
    else:  # Annex B (transport streams): start-code separated
        types = [part[0] & 0x1F for part in data.split(b"\x00\x00\x01")[1:] if part]
    return sum(t in (1, 5) for t in types)


def _yuv420_thumbnail_into(out: np.ndarray, frame, step: int) -> None:
    """Fill `out` `[h, w, 3]` with the YUV thumbnail of a yuv420p frame, by striding its planes (luma every `step`)."""
    h, w = out.shape[:2]
    for i, (p, s) in enumerate(zip(frame.planes, (step, step // 2, step // 2))):
        a = np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)
        out[:, :, i] = a[: h * s : s, : w * s : s]


# BT.601 limited range, the default of SD/HD H.264 streams without colour metadata.
_YUV2RGB = np.array([[1.164, 0.0, 1.596], [1.164, -0.392, -0.813], [1.164, 2.017, 0.0]], dtype=np.float32)


def _yuv_to_rgb(yuv: np.ndarray) -> np.ndarray:
    """`uint8` YUV to RGB: OpenCV's SIMD `transform` (~40x faster) when cv2 imports, else numpy.

    The two round differently by at most 1 in a few values.
    """
    try:
        import cv2
    except ImportError:
        x = yuv.astype(np.float32) - np.array([16.0, 128.0, 128.0], dtype=np.float32)
        return np.clip(x @ _YUV2RGB.T + 0.5, 0, 255).astype(np.uint8)
    affine = np.concatenate([_YUV2RGB, -(_YUV2RGB @ np.array([16.0, 128.0, 128.0], dtype=np.float32))[:, None]], axis=1)
    flat = np.ascontiguousarray(yuv).reshape(-1, yuv.shape[-2], 3)
    return cv2.transform(flat, affine.astype(np.float64)).reshape(yuv.shape)


def _rgb_to_yuv(rgb: np.ndarray) -> np.ndarray:
    inv = np.linalg.inv(_YUV2RGB)
    x = rgb.astype(np.float32) @ inv.T + np.array([16.0, 128.0, 128.0], dtype=np.float32)
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)
