"""Prepare corruption-aware interleaved samples from a VQA source, for every training stage.

  clear-rl prepare data/shapes_vqa/dataset --out data/prepared
  clear-rl prepare MMStar.tsv --out data/mmstar_prepared --test-fraction 0.1 --balance
  clear-rl prepare SOURCE --out DIR --label probe --probe-model models/base --balance

SOURCE is a `datasets` folder (save_to_disk; its splits are kept) or a VLMEvalKit .tsv file, with
`image`, `question` and `answer` columns; options A-D and a reasoning-trace column are optional.
Each row gets one seeded MMD-Bench corruption and level, a label (restore | direct) and a target in
the token protocol. Labels come from a severity rule (`--restore-levels`) or from probing a model:
wrong on the degraded image (and right on the clean one) -> restore. The output is written with
save_to_disk, atomically, with columns index, image (degraded), clean_image, question, answer,
A-D, corruption, severity, intensity, seed, label, target. The corruptions run in --workers
processes (default: one per core); labelling and writing stay in this one.
"""

from __future__ import annotations

import argparse

from clear_rl.commands import add_backend_argument

HELP = "build the corruption-aware training dataset from a VQA source"


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="a datasets folder (save_to_disk) or a VLMEvalKit .tsv file")
    parser.add_argument("--out", required=True, help="output folder (written atomically)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every corruption, level and choice")
    parser.add_argument(
        "--levels",
        default="low,mid,high",
        help="levels to draw from, among clean,low,mid,high (default low,mid,high)",
    )
    parser.add_argument("--level-weights", default=None, help="relative weights of --levels (default equal)")
    parser.add_argument("--label", choices=("rule", "probe"), default="rule", help="how rows are labelled")
    parser.add_argument("--restore-levels", default="high", help="rule labelling: levels that restore")
    parser.add_argument("--probe-model", default=None, help="probe labelling: a saved clear-rl model folder")
    parser.add_argument("--probe-batch-size", type=int, default=16)
    parser.add_argument("--probe-max-new-tokens", type=int, default=64)
    parser.add_argument("--probe-device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument(
        "--probe-any-failure",
        action="store_true",
        help="restore every row answered wrongly on the degraded image (paper), not only those the model "
        "answers rightly when clean",
    )
    parser.add_argument(
        "--balance", action="store_true", help="as many direct rows as restore rows, per split"
    )
    parser.add_argument(
        "--splits", default=None, help="source splits to prepare, comma-separated (default all)"
    )
    parser.add_argument("--max-samples", type=int, default=None, help="first N rows of each split")
    parser.add_argument(
        "--test-fraction", type=float, default=0.0, help="one-split source: hold out as 'test'"
    )
    parser.add_argument("--reasoning-column", default="reasoning", help="trace column, used when present")
    parser.add_argument("--chunk-size", type=int, default=64, help="rows processed at once")
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="processes corrupting the images, one thread each (default 0: one per core when the "
        "work would take over ~10 s on one, else none); the dataset is the same for any number",
    )
    add_backend_argument(parser)


def check_arguments(args: argparse.Namespace) -> None:
    """Every path and number, before anything heavy is imported."""
    from pathlib import Path

    from clear_rl.commands.checks import at_least, model_folder, output_folder
    from clear_rl.errors import DataError

    source = Path(args.source)
    if not source.exists():
        raise DataError(f"source not found: {source} (a datasets folder or a VLMEvalKit .tsv file)")
    if source.is_file() and source.suffix.lower() != ".tsv":
        raise DataError(f"{source}: a file source must be a VLMEvalKit .tsv file")
    output_folder(args.out, "--out", {"SOURCE": source})
    if args.label == "probe":
        if not args.probe_model:
            raise DataError("--label probe needs --probe-model PATH (a saved clear-rl model folder)")
        model_folder(args.probe_model, "--probe-model")
    for value, minimum, option in ((args.chunk_size, 1, "--chunk-size"), (args.max_samples, 1, "--max-samples"),
                                   (args.probe_batch_size, 1, "--probe-batch-size"),
                                   (args.probe_max_new_tokens, 1, "--probe-max-new-tokens")):  # fmt: skip
        at_least(value, minimum, option)
    if not 0.0 <= args.test_fraction < 1.0:
        raise DataError(f"--test-fraction must be in [0, 1), got {args.test_fraction}")


def run(args: argparse.Namespace) -> int:
    check_arguments(args)
    from clear_rl.data.prepare import prepare_dataset
    from clear_rl.data.samples import PrepareConfig, ProbeSettings
    from clear_rl.errors import DataError

    probe = labeller = None
    if args.label == "probe":
        probe = ProbeSettings(
            model_path=args.probe_model,
            batch_size=args.probe_batch_size,
            max_new_tokens=args.probe_max_new_tokens,
            device=args.probe_device,
            require_clean_correct=not args.probe_any_failure,
        )
        from clear_rl.labelling import Prober

        labeller = Prober(probe)
    weights = None
    if args.level_weights:
        try:
            weights = tuple(float(w) for w in _names(args.level_weights))
        except ValueError:
            raise DataError(f"--level-weights must be numbers, got {args.level_weights!r}") from None
    config = PrepareConfig(
        seed=args.seed,
        levels=_names(args.levels),
        level_weights=weights,
        label=args.label,
        restore_levels=_names(args.restore_levels),
        probe=probe,
        balance=args.balance,
        splits=_names(args.splits) if args.splits else None,
        max_samples=args.max_samples,
        test_fraction=args.test_fraction,
        reasoning_column=args.reasoning_column or None,
        chunk_size=args.chunk_size,
        workers=args.workers,
        backend=args.backend,
    )
    summary = prepare_dataset(args.source, args.out, config, labeller)
    for name, split in summary["splits"].items():
        print(f"{name}: {split['rows']} rows, labels {split['labels']}")
    print(f"prepared dataset: {args.out}")
    return 0
