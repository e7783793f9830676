"""Run one CLEAR training stage from a YAML recipe.

  clear-rl train recipes/demo/sft.yaml
  clear-rl train recipes/demo/grpo.yaml training.max_steps=20 training.learning_rate=1e-6
  accelerate launch --config_file recipes/accelerate/multi_gpu.yaml -m clear_rl train RECIPE

The recipe is validated completely before any model is loaded: unknown keys, wrong types and
missing fields, then what it points at (model folders and their weights files, the dataset's
splits and columns, the reward plugins) and the output folder, all before TRL is imported and
before anything is written. `key.path=value` arguments override recipe keys; the merged recipe
is saved into training.output_dir as clear_rl_recipe.yaml when the run starts.

An output folder holds one run: a folder holding a finished run, another recipe's run, or
checkpoints of this recipe's unfinished run is refused unless the run resumes
(training.resume_from_checkpoint=last, its own checkpoints only) or --overwrite clears the old
run first; `last` on a finished run says so and exits 0.
"""

from __future__ import annotations

import argparse

HELP = "run a training stage (align | sft | bridge | grpo) from a YAML recipe"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="path to the recipe YAML")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value", help="recipe overrides")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start over in an output folder that holds a run: its checkpoints and model are removed first",
    )


def run(args: argparse.Namespace) -> int:
    from clear_rl.distributed import check_launch
    from clear_rl.preflight import check_inputs
    from clear_rl.recipe import load_recipe, stage_module
    from clear_rl.recipe_env import env_overrides, recipe_stage
    from clear_rl.runs import RunFinished, no_trace_on_refusal

    overrides = [*env_overrides(recipe_stage(args.recipe)), *args.overrides]  # CLEAR_RL_TRAIN_OVERRIDES
    try:
        recipe = load_recipe(args.recipe, overrides, check_inputs=check_inputs, overwrite=args.overwrite)
    except RunFinished as done:
        print(f"clear-rl train: {done}")
        return 0
    check_launch(recipe.training)  # an FSDP / DeepSpeed / multi-process launch accelerate would not honour
    training = recipe.training
    with no_trace_on_refusal(training.output_dir, main_process=training.process_index == 0):
        trainer = stage_module(recipe.stage).train(recipe)
    # Tear the process group down while the interpreter is alive: a gloo group left to interpreter
    # finalisation can abort the process (SIGABRT) when its worker threads free tensors after the
    # GIL is gone (pytorch/pytorch#179291), failing a run that finished and saved everything.
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()
    return 0
