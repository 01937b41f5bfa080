"""The int8 linear layers `qkv.quantize` puts in place of `nn.Linear` on CPUs, one per
kernel: fbgemm's integer product with 7-bit weights (`FbgemmInt8Linear`, x86), torch's
quantized engine (`DynamicInt8Linear`, ARM, or x86 where the fbgemm op is missing), and
int8 weights with bfloat16 activations (`Int8Linear`, where neither integer kernel is in the
torch build). Each stores q (N, K) int8 and a scale s_n per output row, W ~ s_n q_nk; see
`qkv.decoding.quantize` for what each costs.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn


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


class DynamicInt8Linear(nn.Module):
    """y = s_x s_n (x_q q^T) + b: int8 weights q (N, K) with a scale s_n per output row, and
    the float32 input x (..., K) quantized as it comes, x ~ s_x (x_q - z) with one scale and
    zero per call, 7-bit on x86 (`reduce_range`: AVX2's 8-bit multiply-adds saturate in 16
    bits otherwise). Integer products summed in int32 by torch's `quantized::linear_dynamic`
    (fbgemm on x86, qnnpack on ARM; Jacob et al., 2018), (..., K) -> (..., N), float32 out.
    """

    def __init__(self, qdata: Tensor, scale: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = qdata.shape
        scales = scale.reshape(-1).double()  # (N,)
        zeros = torch.zeros(self.out_features, dtype=torch.long)  # symmetric: no zero point
        make = torch._make_per_channel_quantized_tensor  # quantized dtypes: deprecated too
        weight = _deprecated(make, qdata.cpu(), scales, zeros, 0)
        bias = None if bias is None else bias.detach().float()
        self.packed = torch.ops.quantized.linear_prepack(weight, bias)
        self.reduce_range = torch.backends.quantized.engine in ("x86", "fbgemm")
        self.input_levels = 127 if self.reduce_range else 255  # x_q in [0, input_levels]

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, self.in_features)  # (M, K), float32 as the model is
        # .default: the overload named up front, not looked up at each call (~5 us a layer)
        y = torch.ops.quantized.linear_dynamic.default(flat, self.packed, self.reduce_range)
        return y.view(*x.shape[:-1], self.out_features)  # (..., N)

    def dequantized(self) -> tuple[Tensor, Tensor | None]:
        """The int8 weights as float, q s (N, K), and the bias: what the kernel multiplies by."""
        weight, bias = torch.ops.quantized.linear_unpack(self.packed)
        return weight.dequantize(), bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 x int8"


class FbgemmInt8Linear(nn.Module):
    """y = s_n (s_x (x_q - z) q^T) + b: 7-bit weights q (N, K) in [-64, 63] with a scale s_n
    per output row, and the float32 input x (..., K) quantized as it comes to 8 bits,
    x ~ s_x (x_q - z), x_q in [0, 255], one scale and zero per call (chosen from x's range,
    widened to hold 0). fbgemm multiplies in integers, sums in int32 and applies s_x
    (`torch.fbgemm_linear_int8_weight_fp32_activation`; Jacob et al., 2018); the row
    scales s_n and the bias follow in one op. (..., K) -> (..., N), float32 out.

    Why 7 bits: AVX2's `vpmaddubsw` adds two products of an unsigned and a signed byte in a
    16-bit register; 2 x 255 x 64 = 32,640 fits in 32,767, 2 x 255 x 127 does not. fbgemm's
    packed matrix is a C++ object behind a tensor that cannot be copied, so it is packed on
    first use and dropped when the module is copied or pickled.
    """

    input_levels = 255  # x_q in [0, 255]
    weight_range = (-64, 63)

    def __init__(self, qdata: Tensor, scale: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = qdata.shape
        self.register_buffer("qdata", qdata.contiguous())  # (N, K) int8, 7-bit values
        self.register_buffer("scale", scale.reshape(-1).float().contiguous())  # (N,)
        bias = torch.zeros(self.out_features) if bias is None else bias.detach().float()
        self.register_buffer("bias", bias)  # (N,)
        self._kernel: tuple | None = None  # what each call passes fbgemm, made on first use

    @classmethod
    def from_float(cls, weight: Tensor, bias: Tensor | None) -> FbgemmInt8Linear:
        """Quantize a float weight (N, K) to 7-bit rows with torchao's affine primitives."""
        from torchao.quantization import quant_primitives as qp

        low, high = cls.weight_range
        rows, weight = (1, weight.size(1)), weight.detach().float()
        scale, zero = qp.choose_qparams_affine(
            weight, qp.MappingType.SYMMETRIC, rows, torch.int8, low, high
        )
        qdata = qp.quantize_affine(weight, rows, scale, zero, torch.int8, low, high)
        return cls(qdata, scale, bias)

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, self.in_features)  # (M, K), float32 as the model is
        if self._kernel is None:  # first use: pack, and take torch's warnings once
            self._kernel = _deprecated(self._pack)
        # the tensors are held in one tuple: a call reads no module attributes (~10 us less)
        qdata, packed, col_sums, zeros, bias, scale = self._kernel
        y = torch.fbgemm_linear_int8_weight_fp32_activation(
            flat, qdata, packed, col_sums, 1.0, 0, zeros
        )  # (M, N): s_x (x_q - z) q^T, in fbgemm's integers
        return torch.addcmul(bias, y, scale).view(*x.shape[:-1], self.out_features)

    def _pack(self) -> tuple:
        """fbgemm's packed copy of q, the sums of q's rows (the input zero's term, z sum_k q),
        zeros for fbgemm's own bias, and the tensors the rescale reads."""
        packed = torch.fbgemm_pack_quantized_matrix(self.qdata)
        col_sums = self.qdata.sum(1, dtype=torch.int32)  # (N,)
        zeros = torch.zeros_like(self.bias)
        one_row = torch.zeros(1, self.in_features)  # a first call: its warning is held back here
        torch.fbgemm_linear_int8_weight_fp32_activation(
            one_row, self.qdata, packed, col_sums, 1.0, 0, zeros
        )
        return self.qdata, packed, col_sums, zeros, self.bias, self.scale

    def _apply(self, fn, recurse: bool = True):
        self._kernel = None  # .to() and the like replace the buffers: pack them again
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self._kernel = None  # new weights: pack them again
        super()._load_from_state_dict(*args, **kwargs)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_kernel": None}  # copies and pickles repack on first use

    def dequantized(self) -> tuple[Tensor, Tensor]:
        """The weights as float, q s (N, K), and the bias: what the kernel multiplies by."""
        return self.qdata.float() * self.scale[:, None], self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int7 x int8"


def _deprecated(function, *args):
    """Call one of torch's quantization functions without its deprecation warning (torch
    marks them for removal; `_integer_layer` falls back when the fbgemm ones are gone)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return function(*args)
