"""`liveditor-export`: a training checkpoint -> one safetensors file in the LIVEditor release layout.

    liveditor-export outputs/train/stage1/checkpoints/last.ckpt stage1.safetensors [--ema] [--dtype bfloat16]
    liveditor-edit ... model.weights_path=stage1.safetensors

Reads a Lightning checkpoint file, or a DeepSpeed checkpoint directory (ZeRO-2/3: the partitions are
gathered into full float32 tensors first). `--ema` exports the EMA weights (the checkpoint must have
them). Beside the weights it writes `<out>.json`: the source checkpoint, its global step, whether
EMA was exported, and the DiT architecture, so `liveditor-edit`'s `model.dit` can be matched.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from liveditor.dtypes import DTYPES
from liveditor.files import atomic_target, atomic_write_json



class ExportError(ValueError):
    """The checkpoint cannot be exported; the message names it and the fix."""


def load_training_checkpoint(path: Path) -> dict:
    """A Lightning checkpoint dict; DeepSpeed directories are consolidated to full fp32 tensors."""
    if not path.exists():
        raise ExportError(f"checkpoint '{path}' does not exist")
    if path.is_dir():
        try:
            from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict
        except ImportError as exc:  # pragma: no cover - lightning is a dependency
            raise ExportError(f"'{path}' is a DeepSpeed checkpoint directory; converting it needs lightning and deepspeed: {exc}") from exc
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "consolidated.ckpt"
            try:
                convert_zero_checkpoint_to_fp32_state_dict(str(path), str(out))
            except ImportError as exc:
                raise ExportError(f"'{path}' is a DeepSpeed checkpoint: install DeepSpeed to consolidate it (pip install '.[deepspeed]')") from exc
            return torch.load(out, map_location="cpu", weights_only=False)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ExportError(f"checkpoint '{path}' could not be read ({exc}): is it a liveditor-train checkpoint?") from exc


def export_checkpoint(checkpoint: Path, out: Path, ema: bool = False, dtype: str = "bfloat16") -> Path:
    """Write the editor weights of `checkpoint` to `out` (release layout) and `<out>.json`; returns `out`."""
    from liveditor.models import DiTConfig, EditorDiT, save_editor_weights

    if dtype not in DTYPES:
        raise ExportError(f"--dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    ckpt = load_training_checkpoint(Path(checkpoint))
    hparams = ckpt.get("hyper_parameters") or {}
    if "dit" not in hparams:
        raise ExportError(f"checkpoint '{checkpoint}' has no DiT architecture in its hyper-parameters: it was not written by liveditor-train")
    cfg = DiTConfig.from_dict(hparams["dit"])
    state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    if ema:
        if "ema" not in ckpt:
            raise ExportError(f"--ema: checkpoint '{checkpoint}' holds no EMA weights (train with ema.decay set)")
        state.update(ckpt["ema"]["shadow"])
    model = EditorDiT(cfg)
    missing = sorted(set(model.state_dict()) - set(state))
    if missing:
        raise ExportError(f"checkpoint '{checkpoint}' lacks {len(missing)} model tensors, e.g. {missing[:3]}")
    model.load_state_dict(state, strict=True)
    model.to(DTYPES[dtype]).keep_fp32_parameters_()
    out = Path(out)
    if out.exists() and out.is_dir():
        raise ExportError(f"output '{out}' is a folder: give a file name ending in .safetensors")
    with atomic_target(out, suffix=".safetensors") as tmp:
        save_editor_weights(model, tmp, layout="liveditor")
    meta = {"checkpoint": str(checkpoint), "global_step": ckpt.get("global_step"), "ema": bool(ema), "dtype": dtype,
            "layout": "liveditor", "dit": cfg.to_dict()}
    atomic_write_json(out.with_name(out.name + ".json"), meta)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="liveditor-export", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a liveditor-train checkpoint: a .ckpt file or a DeepSpeed checkpoint directory")
    p.add_argument("output", help="the .safetensors file to write")
    p.add_argument("--ema", action="store_true", help="export the EMA weights")
    p.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES), help="dtype of the exported tensors (default bfloat16)")
    args = p.parse_args(argv)
    try:
        out = export_checkpoint(Path(args.checkpoint), Path(args.output), ema=args.ema, dtype=args.dtype)
    except ExportError as exc:
        print(f"liveditor-export: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out} and {out.name}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
