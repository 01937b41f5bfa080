"""Hugging Face GPT-2 in and out: the weight mapping (`gpt2`) and the directories
(`hf_checkpoint`, behind `qkv import-hf` and `qkv export-hf`). `transformers` is imported
only inside the functions that need it."""

from qkv.interop.gpt2 import (
    check_representable,
    from_hf,
    gpt_config,
    hf_config,
    hf_to_qkv_state,
    nearest_gpt2,
    qkv_to_hf_state,
    require_transformers,
    to_hf,
)

__all__ = [
    "check_representable",
    "from_hf",
    "gpt_config",
    "hf_config",
    "hf_to_qkv_state",
    "nearest_gpt2",
    "qkv_to_hf_state",
    "require_transformers",
    "to_hf",
]
