"""Orchestration of the RLHF pipeline: runner, config, run directory, evaluation."""
