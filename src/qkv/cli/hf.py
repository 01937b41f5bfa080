"""`qkv import-hf` and `qkv export-hf`: Hugging Face GPT-2 directories in and out."""

from __future__ import annotations

import argparse

from qkv.cli.common import add_verb

IMPORT_HELP = (
    "Convert a local Hugging Face GPT-2 directory (config.json, model.safetensors or "
    "pytorch_model.bin, and tokenizer.json or vocab.json + merges.txt) into a qkv checkpoint "
    "that qkv sample, eval and train --init-from read. Nothing is downloaded. "
)
EXPORT_HELP = (
    "Write a qkv checkpoint as config.json + model.safetensors (+ tokenizer files for a BPE "
    "tokenizer) that transformers.GPT2LMHeadModel.from_pretrained loads. The model must be one "
    "GPT-2 can express: model.positional=learned, norm=pre, layernorm, gelu or relu. "
)
NEEDS = 'Needs transformers: pip install "qkv[bench]".'


def add_hf_verbs(verbs) -> None:
    """`qkv import-hf DIR OUT` and `qkv export-hf CHECKPOINT OUT`."""
    for name, summary, description, arguments, command in CONVERSIONS:
        p = add_verb(verbs, name, help=summary, description=description + NEEDS)
        for dest, metavar, text in arguments:
            p.add_argument(dest, metavar=metavar, help=text)
        p.set_defaults(run=command)


def cmd_import_hf(args: argparse.Namespace) -> int:
    from qkv.interop.hf_checkpoint import import_hf

    imported = import_hf(args.directory, args.out)
    config = imported.model.config
    print(
        f"imported GPT-2: {imported.model.num_params() / 1e6:.2f}M parameters, "
        f"{config.n_layer} layers, context {config.block_size}, vocab {config.vocab_size}; "
        f"checkpoint in {imported.out_dir}"
    )
    return 0


def cmd_export_hf(args: argparse.Namespace) -> int:
    from qkv.checkpoint import open_checkpoint

    checkpoint = open_checkpoint(args.checkpoint)
    export_hf = checkpoint.kind.verb("export-hf", args.checkpoint)
    files = export_hf(checkpoint, args.out)
    print(f"exported {args.checkpoint} to {args.out}: {', '.join(files)}")
    return 0


# name, help, description, (source, target) arguments, command
CONVERSIONS = [
    (
        "import-hf",
        "Hugging Face GPT-2 directory -> qkv checkpoint",
        IMPORT_HELP,
        [
            ("directory", "DIR", "the Hugging Face model directory"),
            ("out", "OUT", "the qkv checkpoint directory to write"),
        ],
        cmd_import_hf,
    ),
    (
        "export-hf",
        "qkv checkpoint -> Hugging Face GPT-2 directory",
        EXPORT_HELP,
        [
            ("checkpoint", "CHECKPOINT", "a qkv checkpoint directory"),
            ("out", "OUT", "the Hugging Face directory to write"),
        ],
        cmd_export_hf,
    ),
]
