"""The Transformer's parts, each idea of the notes in one place.

`attention` (scores, scaling, softmax, masks, multi-head and cross-attention, the KV cache),
`positional` (learned, sinusoidal and rotary positions), `blocks` (the feed-forward network,
residual connections with the norm before or after, the Transformer and decoder blocks).
"""
