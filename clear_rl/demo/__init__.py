"""The embedded default: the whole CLEAR pipeline on a tiny model and ShapesVQA (`make demo`)."""
