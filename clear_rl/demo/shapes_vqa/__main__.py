"""`python -m clear_rl.demo.shapes_vqa --out DIR`: write ShapesVQA (a datasets folder and TSVs)."""

import sys

from clear_rl.demo.shapes_vqa.generate import main

sys.exit(main())
