"""The ``detox`` command line."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="detox", description="LLM detoxification: generation, evaluation, corpus rewriting.")
    parser.add_argument("--version", action="store_true", help="print the versions and the available kernel backends")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version or args.command is None:
        from detox_kernels.info import main as info_main

        info_main()
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
