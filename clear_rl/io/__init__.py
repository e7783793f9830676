"""The ground floor: image conversions and decoding, VLMEvalKit TSV files, atomic file output.

Every other layer (degrade, models, data, eval, trainers) may import from here; nothing here
imports from them.
"""
