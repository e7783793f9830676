"""The `clear-rl` command line: one entry point, one sub-command per job.

Each sub-command lives in `clear_rl/commands/<name>.py` and provides `HELP`, `add_arguments` and
`run`. Command modules import heavy libraries (torch, transformers) inside `run`, so `--help`
stays fast. `python -m clear_rl` is the same CLI, which is what `accelerate launch -m clear_rl`
runs on every process.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from clear_rl import __version__
from clear_rl.errors import ClearRLError

# Sub-command name -> module. Order is the order `--help` lists them.
COMMANDS: dict[str, str] = {
    "train": "clear_rl.commands.train",
    "eval": "clear_rl.commands.eval",
    "degrade": "clear_rl.commands.degrade",
    "demo": "clear_rl.commands.demo",
    "prepare": "clear_rl.commands.prepare",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clear-rl",
        description="CLEAR: RL post-training of unified multimodal models on degraded images.",
    )
    parser.add_argument("--version", action="version", version=f"clear-rl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        command = sub.add_parser(
            name,
            help=module.HELP,
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(command)
        command.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args._run(args) or 0)
    except ClearRLError as exc:
        print(f"clear-rl {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"clear-rl {args.command}: interrupted; completed outputs are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
