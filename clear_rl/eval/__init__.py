"""Evaluation: answer extraction and matching, the optional LLM judge, benchmark scoring, reports."""
