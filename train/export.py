"""`liveditor-export`: a training checkpoint -> one safetensors file in the LIVEditor release layout,
or with `--pipeline WAN_DIR` a pipeline folder that `EditPipeline.from_pretrained` loads.

    liveditor-export outputs/train/stage1/checkpoints/last.ckpt stage1.safetensors [--ema] [--dtype bfloat16]
    liveditor-edit ... model.weights_path=stage1.safetensors

    liveditor-export last.ckpt stage1-pipeline --pipeline /ckpt/Wan2.1-T2V-1.3B-Diffusers
    EditPipeline.from_pretrained("stage1-pipeline")       # or liveditor-edit model.weights_path=stage1-pipeline model.vae_path=stage1-pipeline

A pipeline folder holds `transformer/diffusion_pytorch_model.safetensors` (the exported DiT), copies of
WAN_DIR's `vae/`, `text_encoder/` and `tokenizer/`, `liveditor_edit.yaml` (the DiT architecture, so
`from_pretrained` needs no `model=`) and `export.json`; it appears only complete.

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


def export_checkpoint(checkpoint: Path, out: Path, ema: bool = False, dtype: str = "bfloat16", pipeline=None) -> Path:
    """Write the editor weights of `checkpoint` to `out` (release layout) and `<out>.json`; returns `out`.

    With `pipeline` (a diffusers-format Wan directory), `out` is a pipeline folder instead (module docstring)."""
    from liveditor.models import DiTConfig, EditorDiT, save_editor_weights

    if dtype not in DTYPES:
        raise ExportError(f"--dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    out = Path(out)
    if pipeline is not None:
        from liveditor.pipeline.components import ComponentError, check_wan_dir

        try:
            wan_dir = check_wan_dir(pipeline, "--pipeline", ["vae", "text_encoder", "tokenizer"])
        except ComponentError as exc:
            raise ExportError(str(exc)) from exc
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise ExportError(f"output '{out}' exists and is not an empty folder: --pipeline writes a new folder")
    elif out.exists() and out.is_dir():
        raise ExportError(f"output '{out}' is a folder: give a file name ending in .safetensors (or pass --pipeline WAN_DIR to write a pipeline folder)")
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
    meta = {"checkpoint": str(checkpoint), "global_step": ckpt.get("global_step"), "ema": bool(ema), "dtype": dtype,
            "layout": "liveditor", "dit": cfg.to_dict()}
    if pipeline is not None:
        return _write_pipeline(out, model, cfg, Path(wan_dir), meta)
    with atomic_target(out, suffix=".safetensors") as tmp:
        save_editor_weights(model, tmp, layout="liveditor")
    atomic_write_json(out.with_name(out.name + ".json"), meta)
    return out


def _write_pipeline(out: Path, model, cfg, wan_dir: Path, meta: dict) -> Path:
    """`out` as a pipeline folder: the DiT in `transformer/`, WAN_DIR's parts, `liveditor_edit.yaml`, `export.json`."""
    import shutil

    from liveditor.files import atomic_dir
    from liveditor.models import save_editor_weights
    from liveditor.pipeline.editor import PIPELINE_CONFIG, models_of_size, normal_permissions, write_pipeline_config

    sizes = {k: getattr(cfg, k) for k in ("dim", "in_dim", "num_layers", "ffn_dim", "text_dim")}
    names = models_of_size(sizes)
    # The DiT settings are all written, so the configs/model entry composed first only names the size.
    model_config, name = (names[0], names[0]) if names else ("wan2.1-1.3b", "custom")

    def make(tmp: Path) -> None:
        tmp.mkdir(parents=True)
        for part in ("vae", "text_encoder", "tokenizer"):
            shutil.copytree(wan_dir / part, tmp / part)
        save_editor_weights(model, tmp / "transformer" / "diffusion_pytorch_model.safetensors", layout="liveditor")
        write_pipeline_config(tmp, model_config, {"model": {"name": name, "dit": cfg.to_dict()}})
        atomic_write_json(tmp / "export.json", {**meta, "pipeline_from": str(wan_dir), "config": PIPELINE_CONFIG})
        normal_permissions(tmp)

    return atomic_dir(out, make)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="liveditor-export", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a liveditor-train checkpoint: a .ckpt file or a DeepSpeed checkpoint directory")
    p.add_argument("output", help="the .safetensors file to write (with --pipeline: the folder to write)")
    p.add_argument("--pipeline", metavar="WAN_DIR", default=None,
                   help="write a pipeline folder for EditPipeline.from_pretrained, with the VAE, text encoder and tokenizer of "
                        "this diffusers-format Wan directory")
    p.add_argument("--ema", action="store_true", help="export the EMA weights")
    p.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES), help="dtype of the exported tensors (default bfloat16)")
    args = p.parse_args(argv)
    try:
        out = export_checkpoint(Path(args.checkpoint), Path(args.output), ema=args.ema, dtype=args.dtype, pipeline=args.pipeline)
    except ExportError as exc:
        print(f"liveditor-export: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote pipeline folder {out}" if args.pipeline else f"wrote {out} and {out.name}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
