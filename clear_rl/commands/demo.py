"""Run the whole CLEAR pipeline on the embedded default: a tiny model and ShapesVQA, made locally.

  clear-rl demo                 # the full demo (about 20 minutes on 2 CPU cores), into demo_out/
  clear-rl demo --smoke         # a few steps per stage: checks every stage hands a model on

Stages: ShapesVQA, stage 0 (a competent tiny base), prepare (probe labels), SFT, bridge,
Interleaved GRPO (recipes/demo/*.yaml), then evaluation of Base, CLEAR-SFT and CLEAR-RL at
clean / low / mid / high. Prints the paper's tables and writes them to OUT/SUMMARY.md.
"""

from __future__ import annotations

import argparse

HELP = "run the whole pipeline on a tiny model and a synthetic dataset (make demo)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=None, help="output folder (default demo_out, or demo_smoke_out)")
    parser.add_argument("--smoke", action="store_true", help="a few steps per stage (CI)")
    parser.add_argument("--recipes", default="recipes/demo", help="folder of the demo recipes")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from clear_rl.errors import ClearRLError

    if not Path(args.recipes, "sft.yaml").exists():  # before the pipeline (torch, TRL) is imported
        raise ClearRLError(
            f"demo recipes not found in {args.recipes}; run from the repository root or pass --recipes"
        )
    from clear_rl.demo.pipeline import DemoConfig, run_demo

    config = DemoConfig.smoke() if args.smoke else DemoConfig()
    config.recipes_dir, config.seed = args.recipes, args.seed
    if args.out:
        config.out_dir = args.out
    run_demo(config)
    return 0
