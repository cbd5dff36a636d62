"""The `nnunet-scribble` command.

Each feature module that offers a subcommand exposes ``register(subparsers)``; it adds its parser and
sets ``func`` (called with the parsed namespace). Heavy imports (torch, nnU-Net) happen inside ``func``
so ``nnunet-scribble --help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from nnunet_scribble.arguments import ArgumentParser
from nnunet_scribble.errors import UserFacingError

COMMAND_MODULES = (
    "nnunet_scribble.trainers",
    "nnunet_scribble.evaluation.command",
    "nnunet_scribble.demo.command",
    "nnunet_scribble.conversion.command",
    "nnunet_scribble.sam.command",
    "nnunet_scribble.visualization.command",
    "nnunet_scribble.selection.command",
)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    from nnunet_scribble import __version__

    try:
        nnunet = version("nnunetv2")
    except PackageNotFoundError:
        nnunet = "not installed"
    return f"nnunet-scribble {__version__} (nnunetv2 {nnunet})"


def _print_trainers_path(_args) -> int:
    from nnunet_scribble.ext_trainers import TRAINERS_PATH

    print(TRAINERS_PATH)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="nnunet-scribble",
        description="Scribble-supervised training on top of nnU-Net v2.",
    )
    parser.add_argument("--version", action="version", version=_version())
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    subparsers.add_parser(
        "trainers-path", help="print the folder to put in nnUNet_extTrainer",
        description="Print the folder that makes nnU-Net find this package's trainers: "
                    "export nnUNet_extTrainer=$(nnunet-scribble trainers-path)",
    ).set_defaults(func=_print_trainers_path)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
    except UserFacingError as e:
        print(f"nnunet-scribble {args.command}: error: {e}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
