"""Where the shipped organism lives."""

from pathlib import Path

__all__ = ["WEIGHTS_DIR"]

WEIGHTS_DIR: Path = Path(__file__).resolve().parent / "weights"
"""Folder of the shipped checkpoint: config.json, model.safetensors, tokenizer files, organism_split.json."""
