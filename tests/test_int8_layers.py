"""qkv's int8 linear layers: each is its equation, its weights keep their range, and the
packed copy survives copies, pickles and loaded weights."""

import copy
import io

import pytest
import torch
from torch import nn

from qkv.decoding.quantize import DynamicInt8Linear, FbgemmInt8Linear, Int8Linear, quantize
from test_quantize import CONFIG, gpt, relative_error

INTEGER_LAYERS = [FbgemmInt8Linear, DynamicInt8Linear]


def one_layer(kind: type[nn.Module] = FbgemmInt8Linear, linear: nn.Linear | None = None):
    """A 64 -> 48 linear layer quantized to int8 as `kind`, and a float32 copy from before.
    Its rows span 100x in size, so that each row's own scale matters."""
    torch.manual_seed(0)
    if linear is None:
        linear = nn.Linear(64, 48)
        with torch.no_grad():
            linear.weight.mul_(torch.logspace(-1, 1, 48)[:, None])  # (N, K), rows 0.1x-10x
    reference = copy.deepcopy(linear)
    model = nn.Sequential(linear)
    with pytest.MonkeyPatch.context() as patch:
        integer = None if kind is Int8Linear else kind  # Int8Linear: no integer kernel
        patch.setattr("qkv.decoding.quantize._integer_layer", lambda model: integer)
        quantize(model, "int8")
    assert type(model[0]) is kind
    return model[0], reference


@pytest.mark.parametrize(("kind", "levels"), [(FbgemmInt8Linear, 63.5), (DynamicInt8Linear, 127)])
def test_int8_weights_are_within_half_a_step_of_float32(kind, levels):
    # fbgemm's weights have 7 bits (q in [-64, 63]: step amax / 63.5), the engine's 8
    layer, reference = one_layer(kind)
    weight, bias = layer.dequantized()  # q s: (N, K)
    step = reference.weight.detach().abs().amax(dim=1) / levels  # one step of each row
    assert ((weight - reference.weight.detach()).abs() <= step[:, None] / 2 + 1e-7).all()
    assert torch.equal(bias, reference.bias.detach())


def integer_equation(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """y = s_x (x_q - z) (q s)^T + b in float64, x quantized with its own range (held to
    include 0) to `layer.input_levels` + 1 levels, as the integer kernels do per call."""
    weight, bias = layer.dequantized()
    levels = layer.input_levels
    low, high = min(x.min().item(), 0.0), max(x.max().item(), 0.0)
    scale = (high - low) / levels
    zero = round(-low / scale)
    x_q = (torch.round(x.double() / scale) + zero).clamp(0, levels)
    return ((x_q - zero) * scale) @ weight.double().T + bias.double()


@pytest.mark.parametrize("kind", INTEGER_LAYERS)
def test_int8_linear_is_its_equation(kind):
    layer, reference = one_layer(kind)
    x = torch.randn(3, 5, 64)
    assert relative_error(layer(x), integer_equation(layer, x)) < 1e-3
    assert layer(x).dtype == torch.float32 and layer(x).shape == (3, 5, 48)
    assert relative_error(layer(x), reference(x)) < 2e-2


def test_fbgemms_sums_do_not_saturate_at_the_extremes():
    # AVX2 adds pairs of u8 x s8 products in 16 bits: with every input at the top of its
    # range (x_q = 255) and every weight at the end of its own, 8-bit weights would sum
    # 2 x 255 x 127 > 32,767 and clip; 7-bit ones (2 x 255 x 64) stay exact. CPUs with
    # AVX-512 VNNI sum in 32 bits and would not clip, so the 7-bit range is checked directly.
    linear = nn.Linear(64, 48)
    with torch.no_grad():
        signs = torch.where(torch.arange(48) % 2 == 0, 1.0, -1.0)
        linear.weight.copy_(signs[:, None].expand(48, 64))  # rows of +1 and of -1
    layer, _ = one_layer(FbgemmInt8Linear, linear)
    x = torch.ones(2, 64)
    x[:, 0] = -1.0  # the range holds 0: every other input quantizes to 255
    assert relative_error(layer(x), integer_equation(layer, x)) < 1e-3
    assert (layer.qdata.min().item(), layer.qdata.max().item()) == (-64, 63)  # 7 bits


def test_a_quantized_model_survives_copy_and_pickle():
    # fbgemm's packed matrix cannot be copied: copies repack from the int8 weights
    model = quantize(gpt(), "int8")
    ids = torch.randint(0, CONFIG.vocab_size, (2, 9), generator=torch.Generator().manual_seed(2))
    expected, _ = model(ids)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    for twin in (copy.deepcopy(model), torch.load(buffer, weights_only=False)):
        assert torch.equal(twin(ids)[0], expected)


def test_fbgemms_layer_repacks_weights_loaded_into_it():
    # the packed copy is made on first use: loading new weights must not leave it stale
    layer, _ = one_layer(FbgemmInt8Linear)
    other, _ = one_layer(FbgemmInt8Linear, nn.Linear(64, 48))
    x = torch.randn(3, 64)
    layer(x)  # packs the first weights
    layer.load_state_dict(other.state_dict())
    assert torch.equal(layer(x), other(x))


def test_the_bfloat16_int8_layer_is_its_equation():
    # The fallback without the integer kernel: y = (x q^T) s + b with x in bfloat16.
    layer, reference = one_layer(Int8Linear)
    q, s = layer.qdata.float(), layer.scale.float()  # (N, K), (N,)
    step = reference.weight.detach().abs().amax(dim=1) / 127  # one int8 step of each row
    assert ((q * s[:, None] - reference.weight.detach()).abs() <= step[:, None]).all()
    x = torch.randn(3, 5, 64)
    expected = (x.bfloat16().float() @ (q * s[:, None]).T) + layer.bias.float()
    assert relative_error(layer(x), expected) < 1e-2  # bfloat16 output rounding
    assert relative_error(layer(x), reference(x)) < 2e-2
