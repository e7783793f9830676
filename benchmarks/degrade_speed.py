"""MMD-Bench corruption speed: the OpenCV backend against the torch backend, per corruption and
level, 512x512 natural-looking images, one thread each (ms per image, best of 3).

The OpenCV backend runs one image at a time as the released generator does; the torch backend
runs batches of 16 on the CPU. On a CUDA machine the torch backend is also measured at batch 64
on the GPU, beside the OpenCV backend on one CPU core.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import cv2
import torch

from benchmarks.results import machine_line, update_section
from clear_rl.degrade import CORRUPTIONS, LEVELS, corrupt
from tests.degrade_images import natural_images  # the tests' natural-looking images, seeded

SIZE, BATCH, GPU_BATCH, REPEATS = 512, 16, 64, 3


def best_seconds(run: Callable[[], object]) -> float:
    run()  # warm-up (kernel caches, allocator, lru caches)
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def _gpu_rows(images: torch.Tensor, cpu_ms: dict[str, dict[str, float]]) -> list[str]:
    """The torch backend at batch 64 on the GPU against the OpenCV backend on one CPU core, High."""
    if not torch.cuda.is_available():
        return ["No CUDA device on this machine: the GPU comparison was not measured."]
    batch = images.repeat(GPU_BATCH // len(images) + 1, 1, 1, 1)[:GPU_BATCH].cuda()  # uint8
    seeds = list(range(GPU_BATCH))
    rows = [
        f"GPU: {torch.cuda.get_device_name()}, batch {GPU_BATCH}, High.",
        "",
        "| corruption | torch on GPU, img/s | OpenCV on 1 CPU core, img/s | GPU / CPU |",
        "|---|---|---|---|",
    ]
    for name in CORRUPTIONS:

        def run(n=name):
            corrupt(batch, n, "high", seeds, backend="torch")
            torch.cuda.synchronize()

        gpu_rate = GPU_BATCH / best_seconds(run)
        cpu_rate = 1000 / cpu_ms[name]["opencv"]
        rows.append(f"| {name} | {gpu_rate:.0f} | {cpu_rate:.0f} | {gpu_rate / cpu_rate:.1f}x |")
    return rows


def main() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    # uint8 in, uint8 out for both backends: the decoded images `degrade` and `prepare` corrupt,
    # with no float conversion timed on either side.
    images = (natural_images(BATCH, SIZE, SIZE, seed=0) * 255).round().to(torch.uint8)
    seeds = list(range(BATCH))
    ms: dict[str, dict[str, dict[str, float]]] = {}
    for name in CORRUPTIONS:
        ms[name] = {}
        for level in LEVELS:
            fast = best_seconds(lambda n=name, lv=level: corrupt(images, n, lv, seeds, backend="opencv"))
            batched = best_seconds(lambda n=name, lv=level: corrupt(images, n, lv, seeds, backend="torch"))
            ms[name][level] = {"opencv": 1000 * fast / BATCH, "torch": 1000 * batched / BATCH}
        print(
            f"{name:24s} "
            + "  ".join(
                f"{lv} cv {v['opencv']:6.1f} torch {v['torch']:6.1f} ms" for lv, v in ms[name].items()
            ),
            flush=True,
        )
    torch.set_num_threads(threads)

    def cell(values: dict[str, float]) -> str:
        return f"{values['opencv']:.2f} / {values['torch']:.2f} ({values['torch'] / values['opencv']:.1f}x)"

    mean = {
        lv: {b: sum(ms[n][lv][b] for n in CORRUPTIONS) / len(CORRUPTIONS) for b in ("opencv", "torch")}
        for lv in LEVELS
    }
    lines = [
        "## degrade_speed: MMD-Bench corruptions, OpenCV vs torch backend on the CPU",
        "",
        machine_line(),
        f"opencv-python-headless {cv2.__version__}. 512x512 natural-looking images, one thread for "
        f"both backends, ms per image (best of {REPEATS}); OpenCV one image at a time, torch in "
        f"batches of {BATCH}. Load average over the last 5 minutes when it finished: "
        f"{os.getloadavg()[1]:.1f} (other jobs on the same cores make every figure higher).",
        "",
        "Each cell: OpenCV ms / torch ms (torch / OpenCV).",
        "",
        "| corruption | low | mid | high |",
        "|---|---|---|---|",
        *(f"| {n} | " + " | ".join(cell(ms[n][lv]) for lv in LEVELS) + " |" for n in CORRUPTIONS),
        "| **mean over the 16** | " + " | ".join(f"**{cell(mean[lv])}**" for lv in LEVELS) + " |",
        "",
        *_gpu_rows(images, {n: ms[n]["high"] for n in CORRUPTIONS}),
    ]
    update_section("degrade_speed", "\n".join(lines))


if __name__ == "__main__":
    main()
