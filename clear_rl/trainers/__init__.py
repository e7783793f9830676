"""The three CLEAR training stages: sft.py (stage 1), bridge.py (stage 2), grpo.py (stage 3)."""
