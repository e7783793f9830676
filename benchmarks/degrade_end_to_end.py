"""`clear-rl degrade` end to end: a VLMEvalKit TSV of 512x512 natural-looking images (base64
JPEG, as the benchmarks ship) made into its MMD-Bench Low/Mid/High copies, mixed mode, by the
real path (`degrade_tsv`: read, decode, corrupt, encode JPEG q95, write the files and the
manifest), in images/s on one worker and on every core, and the speed-up.

`python -m benchmarks.degrade_end_to_end --rows 100` (or BENCH_DEGRADE_ROWS=100) for a quick
run; the default is 1,000 rows (3,000 images per run).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

# The rest is imported where used: run as `python -m benchmarks.degrade_end_to_end`, this module
# is every spawned worker's __main__ too, and workers should start as fast as the CLI's do.

SIZE, LEVELS = 512, ("low", "mid", "high")
DEFAULT_ROWS = 1000


def _write_source(path: Path, rows: int) -> None:
    """A TSV of `rows` distinct images, written row by row (the images never sit in memory)."""
    from clear_rl.io.images import encode_base64_image, tensor_to_pil
    from tests.degrade_images import iter_natural_images

    with path.open("w", encoding="utf-8") as out:
        out.write("index\timage\tquestion\tanswer\tA\tB\n")
        for k, image in enumerate(iter_natural_images(rows, SIZE, SIZE, seed=1)):
            out.write(f"{k}\t{encode_base64_image(tensor_to_pil(image), 95)}\tWhat is shown?\tA\tx\ty\n")


def _run(source: Path, out: Path, workers: int) -> float:
    """Seconds for one whole `degrade_tsv` run with `workers` processes (start-up included)."""
    from clear_rl.degrade.benchmark import DegradeOptions, degrade_tsv

    options = DegradeOptions(mode="mixed", levels=LEVELS, seed=0, progress=False, workers=workers)
    start = time.perf_counter()
    degrade_tsv(source, out, options)
    return time.perf_counter() - start


def main(rows: int | None = None) -> None:
    from benchmarks.results import machine_line, update_section
    from clear_rl.parallel import available_cores

    rows = rows or int(os.environ.get("BENCH_DEGRADE_ROWS", DEFAULT_ROWS))
    cores = available_cores()
    images = rows * len(LEVELS)
    with tempfile.TemporaryDirectory(prefix="degrade-e2e-") as work:
        source = Path(work, "Bench.tsv")
        start = time.perf_counter()
        _write_source(source, rows)
        print(
            f"source: {rows} rows, {source.stat().st_size / 1e6:.0f} MB in {time.perf_counter() - start:.0f}s"
        )
        seconds = {}
        for workers in sorted({1, cores}):
            seconds[workers] = _run(source, Path(work, f"out{workers}"), workers)
            print(
                f"workers={workers}: {seconds[workers]:.1f}s, {images / seconds[workers]:.1f} images/s",
                flush=True,
            )
        same = all(
            Path(work, f"out{cores}", p.name).read_bytes() == p.read_bytes()
            for p in sorted(Path(work, "out1").iterdir())
        )
    rate = {w: images / s for w, s in seconds.items()}
    lines = [
        f"## degrade_end_to_end: `clear-rl degrade` of a {rows:,}-row TSV, 512x512, mixed Low/Mid/High",
        "",
        machine_line(),
        f"Load average over the last 5 minutes when it finished: {os.getloadavg()[1]:.1f} "
        "(other jobs on the same cores make every figure lower and noisier).",
        "",
        f"`degrade_tsv` as the CLI runs it: read the TSV, decode each base64 JPEG, corrupt, encode JPEG "
        f"q95, write the three TSVs and the manifest; {images:,} images per run, one run each, "
        "worker start-up included. Outputs of the runs identical byte for byte: "
        f"{'yes' if same else 'NO'}.",
        "",
        "| workers | seconds | images/s | speed-up |",
        "|---|---|---|---|",
        *(f"| {w} | {seconds[w]:.1f} | {rate[w]:.1f} | {rate[w] / rate[1]:.2f}x |" for w in sorted(seconds)),
    ]
    update_section("degrade_end_to_end", "\n".join(lines))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rows", type=int, default=None, help=f"rows of the source TSV (default {DEFAULT_ROWS})"
    )
    main(parser.parse_args().rows)
