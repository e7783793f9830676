"""Run one CLEAR training stage from a YAML recipe.

  clear-rl train recipes/demo/sft.yaml
  clear-rl train recipes/demo/grpo.yaml training.max_steps=20 training.learning_rate=1e-6
  accelerate launch --config_file recipes/accelerate/multi_gpu.yaml -m clear_rl train RECIPE

The recipe is validated completely before any model is loaded: unknown keys, wrong types and
missing fields, then what it points at (model folders, the dataset's splits and columns), all
before TRL is imported. `key.path=value` arguments override recipe keys; the merged recipe is
saved into training.output_dir as clear_rl_recipe.yaml when the run starts.
"""

from __future__ import annotations

import argparse

HELP = "run a training stage (sft | bridge | grpo) from a YAML recipe"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="path to the recipe YAML")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value", help="recipe overrides")


def run(args: argparse.Namespace) -> int:
    from clear_rl.distributed import check_launch
    from clear_rl.recipe import load_recipe, stage_module

    recipe = load_recipe(args.recipe, args.overrides, check_inputs=True)
    check_launch(recipe.training)  # an FSDP / DeepSpeed / multi-process launch accelerate would not honour
    trainer = stage_module(recipe.stage).train(recipe)
    # Tear the process group down while the interpreter is alive: a gloo group left to interpreter
    # finalisation can abort the process (SIGABRT) when its worker threads free tensors after the
    # GIL is gone (pytorch/pytorch#179291), failing a run that finished and saved everything.
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()
    return 0
