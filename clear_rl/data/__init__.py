"""Data: image conversions, VLMEvalKit TSV io, sample builders and the synthetic ShapesVQA set."""
