"""`liveditor-edit`: edit a video with an instruction.

    liveditor-edit --input in.mp4 --prompt "turn the sky purple" --output out.mp4 \
        model.weights_path=/ckpt/liveditor model.vae_path=/ckpt/Wan2.2-T2V-A14B-Diffusers [key=value ...]

Flags give the input, the instruction and the output; everything else is a Hydra override of
`configs/edit/edit.yaml` (`model=wan2.1-1.3b`, `sampling.steps=16`, `model.dit.attention=dense`, ...),
checked like every job's config (`liveditor.configcheck`).
The output appears only when complete (written to a temporary name, then renamed), with the
resolved config next to it as `<output stem>.config.yaml` (with the device and dtypes actually
used). Bad input, a bad override (unknown key or group choice, wrong type or value), an output path
that cannot be written or a checkpoint of another size than `model=` exits with status 2 and one
line naming it, before any model is loaded.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from liveditor.configcheck import compose_edit_config  # noqa: F401 (the edit config, checked: re-exported)
from liveditor.files import atomic_write_text

EXIT_BAD_INPUT = 2


def config_path_for(output: str) -> Path:
    """Where the resolved config of an edit written to `output` goes."""
    out = Path(output)
    return out.with_name(out.stem + ".config.yaml")


def run_edit(cfg) -> Path:
    """Check `cfg`, edit `cfg.input` following `cfg.prompt`, write `cfg.output` and its config.

    Every check that needs no model (settings, input, output path, weight paths) runs before
    anything is loaded. The saved config records the device and dtypes actually used."""
    from omegaconf import OmegaConf

    from liveditor.pipeline.editor import EditPipeline, check_edit_config
    from liveditor.video import write_video

    check_edit_config(cfg)
    out = Path(str(cfg.output)).expanduser()
    sp = start_sequence_parallel(cfg)
    try:
        pipe = EditPipeline.from_config(cfg)
        if sp is not None:
            for expert in pipe.experts:
                expert.model.enable_sequence_parallel(sp)
            logging.getLogger("liveditor.edit").info("sequence parallel: rank %d of %d holds 1/%d of the tokens", sp.rank, sp.size, sp.size)
        result = pipe.edit_file(str(cfg.input), str(cfg.prompt), cfg.get("negative_prompt"), cfg.get("seed"))
    finally:
        if sp is not None:
            import torch.distributed as dist

            dist.destroy_process_group()
    if sp is not None and sp.rank != 0:
        return out  # every rank made the same edit; rank 0 writes it
    write_video(out, result.frames, fps=result.fps)
    resolved = OmegaConf.to_container(pipe.cfg, resolve=True)
    resolved["result"] = {
        "frames": int(result.frames.shape[0]),
        "size": list(result.size),
        "fps": result.fps,
        "source_frames": result.source_frames,
        "seconds": {k: round(v, 3) for k, v in result.seconds.items()},
        "requested_runtime": pipe.requested_runtime,
    }
    atomic_write_text(config_path_for(str(out)), OmegaConf.to_yaml(OmegaConf.create(resolved)))
    return out


def start_sequence_parallel(cfg):
    """For `runtime.sequence_parallel=N > 1`: join the N-process group torchrun started (NCCL on one GPU
    per process, gloo on CPU), point `runtime.device` at this process's GPU and quiet the others'
    progress; returns the `SequenceParallel` group, or None for N = 1."""
    import os

    from liveditor.pipeline.editor import EditError

    degree = int(cfg.runtime.get("sequence_parallel", 1) or 1)
    if degree == 1:
        return None
    world = os.environ.get("WORLD_SIZE")  # set by the launcher (torchrun), not a user setting
    if world is None or int(world) != degree:
        raise EditError(f"runtime.sequence_parallel={degree} needs {degree} processes: launch with "
                        f"torchrun --nproc-per-node {degree} -m liveditor.pipeline.cli ... (found WORLD_SIZE={world})")
    import torch
    import torch.distributed as dist

    from liveditor.models.sequence_parallel import SequenceParallel

    use_cuda = str(cfg.runtime.device) != "cpu" and torch.cuda.is_available()
    if use_cuda:
        cfg.runtime.device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        torch.cuda.set_device(torch.device(str(cfg.runtime.device)))
    dist.init_process_group("nccl" if use_cuda else "gloo")
    if dist.get_rank() != 0:
        cfg.runtime.progress = False
    return SequenceParallel()


class _OneLineParser(argparse.ArgumentParser):
    """argparse, with a usage error on one line (no usage block) and exit status 2."""

    def error(self, message):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _OneLineParser(
        prog="liveditor-edit",
        description="Edit a video following an instruction with the LIVEditor in-context DiT.",
        epilog="Trailing key=value arguments are Hydra overrides of configs/edit/edit.yaml, "
        "e.g. model=wan2.1-1.3b model.weights_path=... model.vae_path=... sampling.steps=32",
    )
    p.add_argument("--input", "-i", required=True, help="source video (mp4 or anything FFmpeg decodes)")
    p.add_argument("--prompt", "-p", required=True, help="the edit instruction")
    p.add_argument("--output", "-o", required=True, help="edited video to write (.mp4)")
    p.add_argument("--negative-prompt", default=None, help="negative prompt (default: Wan's)")
    p.add_argument("--seed", type=int, default=None, help="noise seed (default: config seed)")
    p.add_argument("--config-name", default="edit/edit", help="config to start from (default: edit/edit)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides key=value")
    return p


def _quote(value: str) -> str:
    # Hydra override grammar: a single-quoted string with backslash-escaped quotes and backslashes.
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def one_line(exc: Exception) -> str:
    """An error message on one line: its lines joined with "; ", runs of spaces collapsed."""
    lines = [" ".join(line.split()) for line in str(exc).splitlines()]
    return "; ".join(line for line in lines if line).replace(":;", ":")


def main(argv=None) -> int:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from liveditor.models.loading import CheckpointError
    from liveditor.pipeline.components import ComponentError
    from liveditor.pipeline.editor import EditError
    from liveditor.video import VideoError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    overrides = list(args.overrides) + [f"input={_quote(args.input)}", f"output={_quote(args.output)}", f"prompt={_quote(args.prompt)}"]
    if args.negative_prompt is not None:
        overrides.append(f"negative_prompt={_quote(args.negative_prompt)}")
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    try:
        cfg = compose_edit_config(overrides, args.config_name)
        out = run_edit(cfg)
    except (EditError, VideoError, CheckpointError, ComponentError, HydraException, OmegaConfBaseException) as exc:
        print(f"liveditor-edit: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"wrote {out} and {config_path_for(str(out))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
