"""Scoring throughput: EditVerseBench's model metrics on 81-frame videos with real-size random models.

    python -m liveditor.eval.bench --json eval_bench.json                       # an H100/H200, < 4 minutes
    python -m liveditor.eval.bench --device cpu --model-size tiny --items 2 --frames 5 --size 64x48   # CPU path

Each item is one random 81-frame video (832x480 by default, Wan2.1-1.3B's size) scored by the four
model metrics of EditVerseBench exactly as `liveditor-eval score` runs them (PIL preprocessing of
every frame in a thread pool, fp32 forward passes in batches of `--batch-frames`, one CLIP-L pass
shared by its two metrics):
CLIP ViT-L/14 temporal consistency and frame-text alignment, DINOv2-base temporal consistency and
PickScore (ViT-H/14). The models are real-size and random-initialised on the device (the weights do
not change the cost). Decoding is not timed (frames are made in memory).

Items run until `--items` are scored or `--max-seconds` have passed; the table gives items/s and
the projected time for `--items` items. FLOPs divided by (forward passes only, per frame, 224 px):
`2 * params(vision tower) * tokens + 4 * layers * tokens^2 * width` (matmuls; attention's QK^T and
PV), the text towers once per item.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

METRICS = ("clip_temporal_consistency", "frame_text_alignment", "dino_temporal_consistency", "pick_score_video_quality")


def vision_flops(model_vision, tokens: int, layers: int, width: int) -> float:
    """Forward FLOPs of one image through a ViT: matmuls over every parameter, plus attention."""
    params = sum(p.numel() for p in model_vision.parameters())
    return 2.0 * params * tokens + 4.0 * layers * tokens * tokens * width


def build_models(model_size: str, device: torch.device, tmp: Path):
    """EvalModels pre-filled with random CLIP-L/14 (or tiny), DINOv2-base and PickScore ViT-H/14."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer, Dinov2Config, Dinov2Model

    from .models import EvalModels
    from .tiny import CLIP_SIZES, DINOV2_SIZES, make_clip_tokenizer

    tok = CLIPTokenizer.from_pretrained(str(make_clip_tokenizer(tmp / "tokenizer")))
    clip_size, pick_size, dino_size = ("l14", "h14", "base") if model_size == "real" else ("tiny", "tiny", "tiny")

    def clip(size):
        vw, vl, vh, patch, image, tw, tl, th, proj = CLIP_SIZES[size]
        act = "gelu" if size == "h14" else "quick_gelu"
        cfg = CLIPConfig(text_config=dict(hidden_size=tw, intermediate_size=4 * tw, num_hidden_layers=tl, num_attention_heads=th,
                                          vocab_size=49408, max_position_embeddings=77, eos_token_id=49407, bos_token_id=49406,
                                          pad_token_id=49407, hidden_act=act),
                         vision_config=dict(hidden_size=vw, intermediate_size=4 * vw, num_hidden_layers=vl, num_attention_heads=vh,
                                            patch_size=patch, image_size=image, hidden_act=act), projection_dim=proj)
        with torch.device(device):
            return CLIPModel(cfg).float().eval(), tok

    width, layers, heads = DINOV2_SIZES[dino_size]
    with torch.device(device):
        dino = Dinov2Model(Dinov2Config(hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads, patch_size=14,
                                        image_size=518)).float().eval()
    models = EvalModels({}, str(device))
    models._loaded.update({"clip_l14": clip(clip_size), "pickscore": clip(pick_size), "dinov2": dino})
    return models


def frame_flops(models) -> float:
    """FLOPs per frame over the four metrics (CLIP-L's vision tower runs once: temporal consistency and
    frame-text share it; PickScore's and DINOv2's once each)."""
    clip, _ = models.get("clip_l14")
    pick, _ = models.get("pickscore")
    dino = models.get("dinov2")

    def vit(m, patch, image):
        c = m.config
        return vision_flops(m, (image // patch) ** 2 + 1, c.num_hidden_layers, c.hidden_size)

    cv, pv = clip.config.vision_config, pick.config.vision_config
    return (vit(clip.vision_model, cv.patch_size, cv.image_size) + vit(pick.vision_model, pv.patch_size, pv.image_size)
            + vit(dino, 14, 224))


def run_bench(items: int = 200, frames: int = 81, size=(832, 480), model_size: str = "real", device: str = "auto",
              batch_frames: int = 32, max_seconds: float = 150.0, seed: int = 0) -> dict:
    from .benchmarks import Item
    from .metrics import build_metrics
    from .models import pick_device

    dev = pick_device(device)
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 as EditVerse's scorer
    torch.backends.cudnn.allow_tf32 = False
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        models = build_models(model_size, dev, Path(tmp))
        models.batch_frames = int(batch_frames)
        build_s = time.perf_counter() - t0
        metrics = build_metrics("editverse", models, select=METRICS)
        rng = np.random.default_rng(seed)
        w, h = size
        base = rng.integers(0, 256, (frames, h, w, 3), dtype=np.uint8)
        item = Item("0", "", "turn the sky purple", "a city street under a purple sky at dusk", "bench")
        for fn in metrics.values():  # warm-up (kernels, thread pool)
            fn(base[:2], base[:2], item)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        per_metric = {m: 0.0 for m in METRICS}
        done = 0
        start = time.perf_counter()
        while done < items and (time.perf_counter() - start) < max_seconds:
            video = np.roll(base, done, axis=2)  # a different video per item
            for name, fn in metrics.items():
                t = time.perf_counter()
                fn(video, video, item)
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                per_metric[name] += time.perf_counter() - t
            done += 1
        elapsed = time.perf_counter() - start
        flops = frame_flops(models) * frames * done
    device_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    return {
        "device": device_name, "model_size": model_size, "frames": frames, "size": [w, h], "batch_frames": batch_frames,
        "items_scored": done, "items_target": items, "seconds": elapsed, "items_per_s": done / elapsed,
        "frames_per_s": done * frames / elapsed, "projected_s_for_target": items * elapsed / max(done, 1),
        "seconds_per_metric": per_metric, "model_build_s": build_s, "tflops_per_s": flops / elapsed / 1e12,
        "torch": torch.__version__,
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m liveditor.eval.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=200)
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--size", default="832x480", help="WIDTHxHEIGHT of the frames")
    p.add_argument("--model-size", choices=("real", "tiny"), default="real")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-frames", type=int, default=32)
    p.add_argument("--max-seconds", type=float, default=150.0, help="stop measuring after this long (then project)")
    p.add_argument("--json", default=None, help="write the result here")
    a = p.parse_args(argv)
    w, h = (int(v) for v in a.size.lower().split("x"))
    r = run_bench(a.items, a.frames, (w, h), a.model_size, a.device, a.batch_frames, a.max_seconds)
    print(f"device {r['device']} | {r['items_scored']}/{r['items_target']} items of {r['frames']} frames at {w}x{h} "
          f"| models {r['model_size']} | batch {r['batch_frames']}")
    print(f"{'metric':32s} {'s/item':>8s}")
    for m, s in r["seconds_per_metric"].items():
        print(f"{m:32s} {s / max(r['items_scored'], 1):8.3f}")
    print(f"items/s {r['items_per_s']:.3f} | frames/s {r['frames_per_s']:.1f} | projected {r['items_target']} items: "
          f"{r['projected_s_for_target']:.0f} s | {r['tflops_per_s']:.1f} TFLOP/s (fp32, forward only)")
    if a.json:
        Path(a.json).write_text(json.dumps(r, indent=2))
    return r


if __name__ == "__main__":
    main()
