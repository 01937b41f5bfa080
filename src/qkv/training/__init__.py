"""Training: one loop (`loop.Trainer`) for every model kind, and a recipe per kind (`lm` for
the GPT, `translation` for the encoder-decoder) that says what differs; `run.train` runs
one, in a single process or under torchrun (`distributed`). docs/architecture.md draws it."""
