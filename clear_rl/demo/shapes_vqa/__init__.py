"""ShapesVQA: the demo's seeded synthetic VQA set (shapes, colours and one printed symbol).

  python -m clear_rl.demo.shapes_vqa --out data/shapes_vqa --train 2000 --test 500 --seed 0

`generate.py` samples questions answer-first and writes the files, `scene.py` draws a scene,
`glyphs.py` holds the bitmap symbols.
"""

from clear_rl.demo.shapes_vqa.generate import (
    ShapesVQAConfig,
    ShapesVQAFiles,
    build_shapes_vqa,
    generate_shapes_vqa,
    records_to_dataset,
    records_to_tsv_frame,
    shapes_vqa_corpus,
)

__all__ = [
    "ShapesVQAConfig",
    "ShapesVQAFiles",
    "build_shapes_vqa",
    "generate_shapes_vqa",
    "records_to_dataset",
    "records_to_tsv_frame",
    "shapes_vqa_corpus",
]
