"""Quantized decoding: fewer bytes of weights per generated token.

At batch 1 a decoding step multiplies one vector by every weight matrix of the model once, so
it reads each weight once and does two FLOPs with it: far too little arithmetic to keep the
cores busy. Its floor is the time to stream the weights from memory (the roofline's
memory-bound side; Williams et al., 2009):

    tokens/s <= bandwidth / bytes of weights read per token,   bytes = sum over matrices of N K b

with b the bytes per weight: 4 in float32, 2 in bfloat16, 1 in int8, 1/2 in int4 (plus a
scale per row or group). Halving b is the one way past that floor at batch 1; a batch of B
rows reads the same bytes for B tokens (`qkv sample --num-samples`). gpt-fast (PyTorch's
int8/int4 weight-only decoding) and llama.cpp (quantized CPU decoding) are built on it.

`quantize(model, mode)` changes a GPT or an encoder-decoder in place and returns it:

- "bf16": every floating-point weight and activation in bfloat16.
- "int8": weight-only int8 with one scale per output row, activations in bfloat16. torchao
  (PyTorch's quantization library) quantizes each linear layer (`Int8WeightOnlyConfig`:
  symmetric, W ~ s_n q_nk with q in [-128, 127]); in eager mode its int8 tensor multiplies by
  casting the whole weight back to float at every call (it leaves fusing that to
  torch.compile), which is slower than float32 here. So the layers it quantized run torch's
  own int8 weight-only kernel, `torch._weight_int8pack_mm` (y = (x q^T) s, reading the int8
  weights once; `Int8Linear`).
- "int4": torchao's CPU int4 weight-only path (`PrototypeInt4WeightOnlyConfig`, asymmetric,
  a scale and zero per group of 32-128 inputs, torch's `_weight_int4pack_mm_for_cpu`). Its
  kernel takes outputs in multiples of 16, so a head of 50257 gets zero rows up to 50272 that
  `Cropped` drops again; layers whose inputs are not a multiple of 32 stay in bfloat16.

The token embedding stays in bfloat16 (a step reads one of its rows, not the matrix); a
tied output head gets its own quantized copy. Linear layers whose owner reads their weight
as a tensor (named in the owner's `weight_readers`, e.g. cross-attention's fused W_Q|W_KV,
sliced per step) stay in bfloat16. The model's outputs are bfloat16 logits; sampling and
beam search already work in float32 from them.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qkv.errors import QkvError

MODES = ("int8", "bf16", "int4")
INT4_GROUPS = (128, 64, 32)  # the int4 kernel's group sizes, largest first
INT4_ROWS = 16  # its outputs come in multiples of this


def quantize(model: nn.Module, mode: str) -> nn.Module:
    """Quantize `model` in place for decoding ("int8", "bf16" or "int4"); returns it, in
    eval mode. See the module docstring for what each mode stores and runs."""
    if mode not in MODES:
        raise QkvError(f"unknown quantization {mode!r}: choose one of {', '.join(MODES)}")
    if mode == "int4" and any(p.device.type != "cpu" for p in model.parameters()):
        raise QkvError("int4 runs on CPUs only (torchao's CPU int4 kernel); use int8 or bf16")
    if mode != "bf16":
        _torchao()  # before the model changes: without torchao it is left as it was
    model.eval()._apply(_to_bfloat16)
    with _quiet():
        if mode == "int8":
            _int8_weights(model)
        elif mode == "int4":
            _int4_weights(model)
    return model


def _to_bfloat16(tensor: Tensor) -> Tensor:
    """Floating-point tensors to bfloat16; others (ids, rotary's complex table) unchanged
    (`Module.to(dtype)` would drop the imaginary part of a complex buffer)."""
    return tensor.to(torch.bfloat16) if tensor.is_floating_point() else tensor


class Int8Linear(nn.Module):
    """y = (x q^T) * s + b: int8 weights q (N, K) with a scale s_n per output row.

    x may have any leading dimensions, (..., K) -> (..., N); it is computed in bfloat16, the
    dtype torch's int8 kernel is fast in on CPUs (its float32 path is not).
    """

    def __init__(self, qdata: Tensor, scale: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = qdata.shape
        self.register_buffer("qdata", qdata.contiguous())  # (N, K) int8
        self.register_buffer("scale", scale.reshape(-1).to(torch.bfloat16).contiguous())  # (N,)
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.bfloat16))

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, self.in_features).to(self.scale.dtype).contiguous()  # (M, K)
        y = torch._weight_int8pack_mm(flat, self.qdata, self.scale)  # (M, N)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """torchao logs lines about its CUDA-only libraries and a torch deprecation when it is
    imported and first used; they mean nothing to a user, so they are held back."""
    loggers = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _torchao():
    """torchao, imported quietly; missing, one line that says how to install it."""
    try:
        with _quiet():
            import torchao.quantization
    except ImportError:
        raise QkvError('quantization needs torchao: pip install "qkv[quantize]"') from None
    return torchao


def _quantizable(model: nn.Module) -> Iterator[tuple[nn.Module, str, nn.Linear]]:
    """(owner, attribute name, linear) for each linear layer run as a module."""
    for owner in list(model.modules()):
        readers = getattr(owner, "weight_readers", ())
        for name, child in list(owner.named_children()):
            if isinstance(child, nn.Linear) and name not in readers:
                yield owner, name, child


def _int8_weights(model: nn.Module) -> None:
    """torchao quantizes; on a CPU each layer then runs torch's int8 kernel (`Int8Linear`),
    elsewhere torchao's own int8 tensor (fast under torch.compile)."""
    torchao = _torchao()
    config = torchao.quantization.Int8WeightOnlyConfig()
    for owner, name, linear in _quantizable(model):
        torchao.quantization.quantize_(linear, config)  # linear.weight becomes an Int8Tensor
        weight = linear.weight
        if weight.device.type == "cpu":
            setattr(owner, name, Int8Linear(weight.qdata, weight.scale, linear.bias))


def _int4_weights(model: nn.Module) -> None:
    torchao = _torchao()
    from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig

    for owner, name, linear in _quantizable(model):
        group = next((g for g in INT4_GROUPS if linear.in_features % g == 0), None)
        if group is None:
            continue  # the kernel cannot hold this shape: it stays in bfloat16
        layer = linear if linear.out_features % INT4_ROWS == 0 else _padded(linear)
        torchao.quantization.quantize_(layer, PrototypeInt4WeightOnlyConfig(group_size=group))
        if layer is not linear:
            setattr(owner, name, Cropped(layer, linear.out_features))


class Cropped(nn.Module):
    """A layer given extra zero outputs (to suit a kernel's shapes) that drops them again."""

    def __init__(self, layer: nn.Module, out_features: int) -> None:
        super().__init__()
        self.layer, self.out_features = layer, out_features

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)[..., : self.out_features]  # (..., N)


def _padded(linear: nn.Linear) -> nn.Linear:
    """A copy of `linear` with zero rows added up to a multiple of INT4_ROWS outputs (a GPT-2
    head of 50257 outputs becomes 50272)."""
    rows = -linear.out_features % INT4_ROWS
    padded = nn.Linear(linear.in_features, linear.out_features + rows, linear.bias is not None)
    padded = padded.to(linear.weight.device, linear.weight.dtype)
    with torch.no_grad():
        padded.weight.copy_(F.pad(linear.weight, (0, 0, 0, rows)))  # (N + rows, K)
        if linear.bias is not None:
            padded.bias.copy_(F.pad(linear.bias, (0, rows)))
    return padded


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the weights a decoding step reads: every linear layer's weights (and scales),
    not the embedding tables, of which a step reads a row per token."""
    total = 0
    for module in model.modules():
        if isinstance(module, Int8Linear):
            total += module.qdata.numel() + 2 * module.scale.numel()
        elif isinstance(module, nn.Linear):
            total += _tensor_bytes(module.weight)
    return total


def _tensor_bytes(weight: Tensor) -> int:
    names = getattr(weight, "tensor_data_names", None)  # a torchao tensor: its packed parts
    if names is None:
        return weight.numel() * weight.element_size()
    parts = [getattr(weight, n) for n in names]
    return sum(p.numel() * p.element_size() for p in parts)
