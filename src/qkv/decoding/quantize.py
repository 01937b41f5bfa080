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
- "int8": int8 weights with one scale per output row (W ~ s_n q_nk, symmetric). On a CPU
  each layer runs one of torch's integer kernels, which quantize the float32 input to 8 bits
  at every call, multiply in integers and rescale; the rest of the model stays in float32.
  On x86 that is fbgemm's `fbgemm_linear_int8_weight_fp32_activation` (`FbgemmInt8Linear`),
  with weights of 7 bits (q in [-64, 63], stored in int8), because AVX2 sums pairs of 8-bit
  products in 16 bits: 2 x 255 x 64 fits, 2 x 255 x 127 saturates. At batch 1 it costs
  20-27 us a call, where `quantized::linear_dynamic` (8-bit weights, 7-bit inputs;
  `DynamicInt8Linear`, the path on ARM's qnnpack and where the fbgemm op is missing) costs
  40-67 us for the same 384 x 1152 layer on a 2-core AVX2 EPYC: 2.0x against 2.5-3.2x
  Hugging Face's float32 decoding at 6 layers x 384 (benchmarks/RESULTS.md). torchao (PyTorch's
  quantization library) quantizes: its `Int8WeightOnlyConfig` for the 8-bit weights, its
  affine primitives for the 7-bit ones. Its own int8 tensor casts the whole weight back to
  float at every call in eager mode (it leaves fusing that to torch.compile), slower than
  float32 on a CPU; it is the path on GPUs, the model in bfloat16. Without an integer
  kernel in the torch build, `torch._weight_int8pack_mm` runs the int8 weights with
  bfloat16 activations (`Int8Linear`, slow where AVX2 emulates bfloat16).
- "int4": torchao's CPU int4 weight-only path (`PrototypeInt4WeightOnlyConfig`, asymmetric,
  a scale and zero per group of 32-128 inputs, torch's `_weight_int4pack_mm_for_cpu`). Its
  kernel takes outputs in multiples of 16, so a head of 50257 gets zero rows up to 50272 that
  `Cropped` drops again; layers whose inputs are not a multiple of 32 stay in bfloat16.

The token embedding is not quantized (a step reads one of its rows, not the matrix); a tied
output head gets its own quantized copy. Linear layers whose owner reads their weight as a
tensor (named in the owner's `weight_readers`, e.g. cross-attention's fused W_Q|W_KV, sliced
per step) are not quantized either. With the integer kernel the model's outputs are float32
logits; on the bfloat16 paths they are bfloat16, from which sampling and beam search already
work in float32.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qkv.decoding.int8_layers import DynamicInt8Linear, FbgemmInt8Linear, Int8Linear
from qkv.decoding.layout import TransposedLinear, run_as_modules
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
    integer_layer = _integer_layer(model) if mode == "int8" else None
    if integer_layer is not None:
        with _quiet():
            _int8_weights(model.eval(), integer_layer)
        return model
    model.eval()._apply(_to_bfloat16)
    with _quiet():
        if mode == "int8":
            _int8_weights(model, Int8Linear)
        elif mode == "int4":
            _int4_weights(model)
    return model


def _to_bfloat16(tensor: Tensor) -> Tensor:
    """Floating-point tensors to bfloat16; others (ids, rotary's complex table) unchanged
    (`Module.to(dtype)` would drop the imaginary part of a complex buffer)."""
    return tensor.to(torch.bfloat16) if tensor.is_floating_point() else tensor


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
    """(owner, attribute name, linear) for each linear layer run as a module (one that
    `for_decoding` stored transposed becomes an `nn.Linear` again first)."""
    for owner, name, child in run_as_modules(model, (nn.Linear, TransposedLinear)):
        if isinstance(child, TransposedLinear):
            child = child.to_linear()
            setattr(owner, name, child)
        yield owner, name, child


def _int8_weights(model: nn.Module, cpu_layer: type[nn.Module]) -> None:
    """torchao quantizes; on a CPU each layer then runs one of torch's int8 kernels
    (`cpu_layer`), elsewhere torchao's own int8 tensor (fast under torch.compile)."""
    torchao = _torchao()
    config = torchao.quantization.Int8WeightOnlyConfig()
    for owner, name, linear in _quantizable(model):
        if cpu_layer is FbgemmInt8Linear and linear.weight.device.type == "cpu":
            setattr(owner, name, FbgemmInt8Linear.from_float(linear.weight, linear.bias))
            continue
        torchao.quantization.quantize_(linear, config)  # linear.weight becomes an Int8Tensor
        weight = linear.weight
        if weight.device.type == "cpu":
            setattr(owner, name, cpu_layer(weight.qdata, weight.scale, linear.bias))


def _integer_layer(model: nn.Module) -> type[nn.Module] | None:
    """The integer int8 layer for `model`: fbgemm's where this torch build and CPU have it,
    else torch's quantized engine's; None off CPUs or without either."""
    if not all(p.device.type == "cpu" for p in model.parameters()):
        return None
    engines = set(torch.backends.quantized.supported_engines)
    if "fbgemm" in engines and hasattr(torch, "fbgemm_linear_int8_weight_fp32_activation"):
        return FbgemmInt8Linear
    if engines & {"x86", "fbgemm", "qnnpack"} and hasattr(torch.ops.quantized, "linear_dynamic"):
        return DynamicInt8Linear
    return None


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
        elif isinstance(module, (DynamicInt8Linear, FbgemmInt8Linear)):
            total += (module.in_features + 4) * module.out_features  # int8 rows, a float scale
        elif isinstance(module, nn.Linear):
            total += _tensor_bytes(module.weight)
        elif isinstance(module, TransposedLinear):
            total += _tensor_bytes(module.weight_t)
    return total


def _tensor_bytes(weight: Tensor) -> int:
    names = getattr(weight, "tensor_data_names", None)  # a torchao tensor: its packed parts
    if names is None:
        return weight.numel() * weight.element_size()
    parts = [getattr(weight, n) for n in names]
    return sum(p.numel() * p.element_size() for p in parts)
