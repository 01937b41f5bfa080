"""The models built from qkv's blocks."""

from qkv.models.gpt import GPT

__all__ = ["GPT"]
