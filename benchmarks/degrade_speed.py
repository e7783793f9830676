"""MMD-Bench corruption throughput: images per second per corruption and level, 512x512,
batches of 16, on this machine; beside per-image NumPy/PIL baselines of a few corruptions
written from the same specification (the reference is a per-image OpenCV/NumPy loop)."""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from benchmarks._common import natural_images
from benchmarks.results import machine_line, update_section
from clear_rl.degrade import CORRUPTIONS, LEVELS, corrupt
from clear_rl.degrade.ops import gaussian_kernel

SIZE, BATCH, REPEATS = 512, 16, 3


def _best_rate(run: Callable[[], object], images: int) -> float:
    run()  # warm-up (kernel caches, allocator)
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return images / best


# Per-image baselines, as the released generator runs (one uint8 HxWx3 array at a time).
def _np_dark(img: np.ndarray, i: float) -> np.ndarray:
    return np.clip(img * (1 - i**2), 0, 255).astype(np.uint8)


def _np_noise(img: np.ndarray, i: float, rng=np.random.default_rng(0)) -> np.ndarray:
    return np.clip(img.astype(np.float32) + rng.normal(0, 75 * i, img.shape), 0, 255).astype(np.uint8)


def _np_scan(img: np.ndarray, i: float) -> np.ndarray:
    out, period, band = img.copy(), max(3, int(20 / (i + 0.1))), max(5, int(7 * i))
    for row in range(0, img.shape[0], period):
        out[row : row + band] = (out[row : row + band] * 0.01).astype(np.uint8)
    return out


def _np_blocks(img: np.ndarray, i: float, rng=np.random.default_rng(0)) -> np.ndarray:
    out, b = img.copy(), min(32, int(5 + 30 * i))
    rows, cols = img.shape[0] // b, img.shape[1] // b
    for _ in range(int(35 * i)):
        r1, c1, r2, c2 = (
            rng.integers(0, rows),
            rng.integers(0, cols),
            rng.integers(0, rows),
            rng.integers(0, cols),
        )
        first = out[r1 * b : (r1 + 1) * b, c1 * b : (c1 + 1) * b].copy()
        out[r1 * b : (r1 + 1) * b, c1 * b : (c1 + 1) * b] = out[r2 * b : (r2 + 1) * b, c2 * b : (c2 + 1) * b]
        out[r2 * b : (r2 + 1) * b, c2 * b : (c2 + 1) * b] = first
    return out


def _np_lens_blur(img: np.ndarray, i: float) -> np.ndarray:
    """Separable Gaussian (k = int(3+300i)|1) by FFT with reflect-101 padding, then the blend."""
    size = int(3 + 300 * i) | 1
    taps, pad = np.array(gaussian_kernel(size, 20 * i)), size // 2
    padded = np.pad(img.astype(np.float32), ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    shape = padded.shape[:2]
    kernel = np.zeros(shape)
    kernel[:size, :size] = np.outer(taps, taps)
    spectrum = np.conj(np.fft.rfft2(kernel))[..., None]
    blurred = np.fft.irfft2(np.fft.rfft2(padded, axes=(0, 1)) * spectrum, s=shape, axes=(0, 1))
    blurred = blurred[: img.shape[0], : img.shape[1]]
    return np.clip(np.round((1 - 0.7 * i) * img + 0.9 * i * blurred.astype(np.uint8)), 0, 255).astype(
        np.uint8
    )


def _pil_jpeg(img: np.ndarray, i: float) -> np.ndarray:
    """libjpeg through PIL, as cv2.imencode/imdecode does."""
    buffer = io.BytesIO()
    Image.fromarray(img).save(buffer, format="JPEG", quality=min(max(int(100 - 95 * i), 5), 100))
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


BASELINES = {
    "lens_blur": _np_lens_blur,
    "jpeg_compression": _pil_jpeg,
    "block_exchange": _np_blocks,
    "scan_lines": _np_scan,
    "dark_illumination": _np_dark,
    "gaussian_noise": _np_noise,
}


def main() -> None:
    images = torch.stack(list(natural_images(BATCH, SIZE)))
    seeds = list(range(BATCH))
    arrays = [(im.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for im in images]
    threads = torch.get_num_threads()
    rates: dict[str, dict[str, float]] = {}
    baseline_rows = []
    for name in CORRUPTIONS:
        # One thread: stable on a shared machine and comparable with the single-threaded
        # baselines; the high level is measured again with all of torch's threads.
        torch.set_num_threads(1)
        rates[name] = {
            lv: _best_rate(lambda n=name, lv=lv: corrupt(images, n, lv, seeds), BATCH) for lv in LEVELS
        }
        torch.set_num_threads(threads)
        rates[name]["threads"] = _best_rate(lambda n=name: corrupt(images, n, "high", seeds), BATCH)
        print(f"{name:24s} " + "  ".join(f"{k} {r:7.1f}/s" for k, r in rates[name].items()), flush=True)
        if name in BASELINES:  # right after ours, under the same machine load
            rate = _best_rate(lambda f=BASELINES[name]: [f(a, LEVELS["high"]) for a in arrays], BATCH)
            ours = rates[name]["high"]
            baseline_rows.append(f"| {name} | {rate:.1f} | {ours:.1f} | {ours / rate:.2f}x |")
            print(f"  per-image baseline {rate:7.1f}/s", flush=True)

    per_image_ms = {lv: 1000 * sum(1 / rates[n][lv] for n in CORRUPTIONS) / len(CORRUPTIONS) for lv in LEVELS}
    lines = [
        "## degrade_speed: MMD-Bench corruptions, 512x512, batch 16 (images/s, best of 3)",
        "",
        machine_line(),
        f"Load average over the last 5 minutes when it finished: {os.getloadavg()[1]:.1f} "
        "(other jobs on the same cores make every figure lower and noisier).",
        "",
        f"| corruption | low, 1 thread | mid, 1 thread | high, 1 thread | high, {threads} threads |",
        "|---|---|---|---|---|",
        *(
            f"| {n} | " + " | ".join(f"{rates[n][k]:.1f}" for k in (*LEVELS, "threads")) + " |"
            for n in CORRUPTIONS
        ),
        "| **mean time per image, 1 thread** | "
        + " | ".join(f"{per_image_ms[lv]:.1f} ms" for lv in LEVELS)
        + " | |",
        "",
        "Per-image baselines written here from the same spec (NumPy, or PIL's libjpeg for JPEG), "
        "one 512x512 image at a time like the released generator, at High, both on one thread:",
        "",
        "| corruption | baseline img/s | clear-rl img/s | clear-rl / baseline |",
        "|---|---|---|---|",
        *baseline_rows,
    ]
    update_section("degrade_speed", "\n".join(lines))


if __name__ == "__main__":
    main()
