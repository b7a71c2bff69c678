"""`liveditor` command: subcommands for the whole loop (`demo`, `isa-report`)."""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="liveditor", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the embedded default end to end on this machine")
    demo.add_argument("--out", default="outputs/demo", help="folder for the demo's outputs")
    rep = sub.add_parser("isa-report", help="ISA accuracy and speed at a small shape")
    rep.add_argument("--out", default="outputs/isa-report")
    args = parser.parse_args(argv)

    from liveditor.isa.report import run_report

    return run_report(args.out)


if __name__ == "__main__":
    sys.exit(main())
