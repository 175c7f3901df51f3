"""``sst-merge`` command-line entry point.

Each sub-command lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``;
the modules are imported only to build the parser, so they must keep heavy imports (torch,
transformers) inside ``run``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from sst_merge_plugin import __version__
from sst_merge_plugin.core.errors import SSTError

# sub-command name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "assets": ("sst_merge_plugin.data.cli", "fetch and list the offline model and prompt assets"),
    "fisher": ("sst_merge_plugin.fisher.cli", "collect a Fisher file from a model and prompts"),
    "evaluate": (
        "sst_merge_plugin.evaluation.cli",
        "evaluate a model: harmful refusal, benign over-refusal, utility skills",
    ),
    "tune": (
        "sst_merge_plugin.bench.tune",
        "choose a merge configuration's operating point on a validation split (knob grid)",
    ),
    "demo": (
        "sst_merge_plugin.bench.demo",
        "train, merge and evaluate on SmolLM2 (or --model): SST-Merge vs the baselines "
        "(minutes on a CPU)",
    ),
}


class CLIError(SSTError):
    """A user-facing error: printed without a traceback, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sst-merge", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"sst-merge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(command_parser)
        command_parser.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except SSTError as exc:
        print(f"sst-merge {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sst-merge {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
