"""Build MMD-Bench copies of a benchmark, or draw the corruption grid of one image.

  clear-rl degrade LMUData/MMStar.tsv --out LMUData/          # MMStar_MMD_{low,mid,high}.tsv
  clear-rl degrade MMStar.tsv --mode full --levels high       # MMStar_MMD_<type>_high.tsv x 16
  clear-rl degrade data/vqa_saved --image-column image        # a datasets save_to_disk folder
  clear-rl degrade --grid grid.png photo.jpg                  # 16 corruptions x 3 levels

Mixed mode draws one corruption per image with the benchmark's weights and applies it at every
level (draws independent per level); full mode writes every corruption at every level. Seeds
derive from --seed and each row's index; a manifest JSON records each row's corruption,
intensity and seed, the files written so far, and `"complete": true` when all are. A run that
was killed is continued with the same command plus --resume: the files it finished are kept,
the rest are written, and the result is byte for byte that of an uninterrupted run.
Images are decoded, corrupted and encoded in --workers processes (default: one per core); the
files are the same bytes for any number of workers, so a run may be resumed with another count.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from clear_rl.commands import add_backend_argument

HELP = "build MMD-Bench (degraded) copies of a TSV or datasets folder, or a corruption grid"


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "input", help="VLMEvalKit TSV, datasets folder (save_to_disk), or an image with --grid"
    )
    parser.add_argument("--out", help="output folder (default: the input's folder)")
    parser.add_argument("--mode", choices=("mixed", "full"), default="mixed", help="mixed (default) or full")
    parser.add_argument(
        "--levels",
        type=_csv,
        default=["low", "mid", "high"],
        help="comma list of low/mid/high or numbers in [0, 1]",
    )
    parser.add_argument(
        "--types", type=_csv, default=None, help="full mode: comma list of corruptions (default: all 16)"
    )
    parser.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per batch (default 16)")
    parser.add_argument(
        "--image-column", default="image", help="image column of a datasets folder (default: image)"
    )
    parser.add_argument("--name", help="dataset name used in output names (default: the input's name)")
    parser.add_argument(
        "--grid", metavar="PNG", help="draw the 16 x 3 corruption grid of the input image to PNG"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="worker processes, one thread each (default 0: one per core when the work would take "
        "over ~10 s on one, else none); the output is the same for any number",
    )
    add_backend_argument(parser)
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue a killed run with the same options: keep the files its manifest lists",
    )


def run(args: argparse.Namespace) -> int:
    from clear_rl.errors import DataError

    source = Path(args.input)
    if not source.exists():
        raise DataError(f"input not found: {source}")
    if args.batch_size < 1:
        raise DataError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.workers < 0:
        raise DataError(f"--workers must be 0 (automatic) or a number of processes, got {args.workers}")
    if args.out is not None and Path(args.out).exists() and not Path(args.out).is_dir():
        raise DataError(f"--out: {args.out} is a file, not a folder")
    if args.grid:
        from clear_rl.degrade.grid import corruption_grid
        from clear_rl.io.atomic import atomic_path
        from clear_rl.io.images import decode_image

        with atomic_path(args.grid) as tmp:
            corruption_grid(
                decode_image(source), seed=args.seed, levels=args.levels, backend=args.backend
            ).save(tmp, format="PNG")
        print(f"wrote {args.grid}")
        return 0

    from clear_rl.degrade.benchmark import DegradeOptions, degrade_dataset, degrade_tsv

    out_dir = Path(args.out) if args.out else source.parent
    options = DegradeOptions(
        mode=args.mode,
        levels=tuple(args.levels),
        seed=args.seed,
        batch_size=args.batch_size,
        types=tuple(args.types) if args.types else None,
        name=args.name,
        resume=args.resume,
        workers=args.workers,
        backend=args.backend,
    )
    if source.is_dir():
        result = degrade_dataset(source, out_dir, options, image_column=args.image_column)
    else:
        result = degrade_tsv(source, out_dir, options)
    for path in result.outputs:
        print(f"wrote {path}")  # or kept, with --resume: every output is complete now
    print(f"manifest {result.manifest}")
    return 0
