"""The CLEAR training stages, each module beside its `training:` config (`<stage>_config.py`):
align.py (`stage: align`, the bridge's alignment before stage 1), sft.py (stage 1),
bridge_stage.py (stage 2, `stage: bridge`; models/bridge.py is the latent bridge itself), grpo.py
(stage 3)."""
