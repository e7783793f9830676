"""Strength of graffiti and watermark_damage against the released generator's own definition.

The release draws with Python's unseeded `random`, so its images cannot be regenerated; its
strength can. `release_graffiti` and `release_watermark` below transcribe the released
`add_degradation.py` functions (BGR, Python `random`, as /shared/MMD_BENCH_SPEC.md specifies
them) to serve as the reference; both clear-rl backends run on the same images, and the table
gives mean PSNR against the clean image for each, per level.
"""

from __future__ import annotations

import random

import cv2
import numpy as np

from benchmarks.results import machine_line, update_section
from clear_rl.degrade import LEVELS, corrupt
from tests.degrade_images import natural_images

SIZE, CHUNK, CHUNKS = 512, 32, 8  # 256 images: the mean of 64 still moved by about 1 dB between seeds


def release_graffiti(bgr: np.ndarray, i: float, rng: random.Random) -> np.ndarray:
    """The released graffiti: int(10i) random lines, and at i > 0.55 a red Hershey stamp."""
    h, w = bgr.shape[:2]
    out = bgr.copy()
    for _ in range(int(10 * i)):
        colour = (rng.randint(0, 255), rng.randint(0, 255), rng.randint(0, 255))
        pt1 = (rng.randint(0, w - 1), rng.randint(0, h - 1))
        pt2 = (rng.randint(0, w - 1), rng.randint(0, h - 1))
        cv2.line(out, pt1, pt2, colour, rng.randint(1, max(1, int(5 * i))))
    if i > 0.55:
        text = rng.choice(["X", "FAKE", "COPY", "VOID", "COPYRIGHT", str(rng.randint(1, 100))])
        scale = max(0.5, i * 5)
        thickness = max(1, int(scale))
        (text_w, text_h), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        if h - 10 > text_h + 10:
            x = rng.randint(0, max(1, w - text_w - 10))
            y = rng.randint(text_h + 10, h - 10)
            cv2.putText(out, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 255), thickness)
    return out


def release_watermark(bgr: np.ndarray, i: float, rng: random.Random) -> np.ndarray:
    """The released watermark_damage: Telea-inpainted rectangles blended in, outline at i > 0.5."""
    h, w = bgr.shape[:2]
    mask = np.zeros((h, w), np.float32)
    for _ in range(int(1 + i * 15)):
        x, y = rng.randint(0, w - 50), rng.randint(0, h - 50)
        cv2.rectangle(mask, (x, y), (x + rng.randint(50, 200), y + rng.randint(20, 80)), 1, -1)
    mask = (mask * 255).astype(np.uint8)
    out = cv2.addWeighted(bgr, 1 - i, cv2.inpaint(bgr, mask, 3, cv2.INPAINT_TELEA), i, 0)
    if i > 0.5:
        edges = cv2.Canny(mask, 50, 150) > 0
        out[edges] = out[edges] * 0.8
    return out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def _strengths(name: str, release, level: str, intensity: float) -> dict[str, float]:
    """Mean PSNR over CHUNKS x CHUNK images for the release and both backends."""
    rng = random.Random(0)
    scores: dict[str, list[float]] = {"release": [], "opencv": [], "torch": []}
    for chunk in range(CHUNKS):
        images = natural_images(CHUNK, SIZE, SIZE, seed=100 + chunk)
        clean = [(x.permute(1, 2, 0) * 255).round().byte().numpy() for x in images]
        for c in clean:
            scores["release"].append(
                psnr(release(np.ascontiguousarray(c[..., ::-1]), intensity, rng)[..., ::-1], c)
            )
        seeds = list(range(chunk * CHUNK, (chunk + 1) * CHUNK))
        for backend in ("opencv", "torch"):
            out = corrupt(images, name, level, seeds, backend=backend)
            scores[backend] += [
                psnr((o.permute(1, 2, 0) * 255).round().byte().numpy(), c) for o, c in zip(out, clean)
            ]
    return {key: float(np.mean(values)) for key, values in scores.items()}


def main() -> None:
    rows = []
    for name, release in (("graffiti", release_graffiti), ("watermark_damage", release_watermark)):
        for level, intensity in LEVELS.items():
            s = _strengths(name, release, level, intensity)
            rows.append(
                f"| {name} | {level} | {s['release']:.2f} | {s['opencv']:.2f} ({s['opencv'] - s['release']:+.2f}) "
                f"| {s['torch']:.2f} ({s['torch'] - s['release']:+.2f}) |"
            )
            print(rows[-1], flush=True)
    lines = [
        "## degrade_fidelity: graffiti and watermark_damage against the release's definition",
        "",
        machine_line(),
        f"opencv-python-headless {cv2.__version__}. Mean PSNR (dB) of the corrupted image against the "
        f"clean one over {CHUNK * CHUNKS} natural-looking {SIZE}x{SIZE} images; the release's functions "
        "transcribed with Python `random` (seeded here) as the reference. Random draws differ between "
        "the columns, so the differences include sampling noise.",
        "",
        "| corruption | level | release | clear-rl OpenCV (diff) | clear-rl torch (diff) |",
        "|---|---|---|---|---|",
        *rows,
    ]
    update_section("degrade_fidelity", "\n".join(lines))


if __name__ == "__main__":
    main()
