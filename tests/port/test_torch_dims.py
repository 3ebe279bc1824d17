"""torch's `dim` choices: whole-tensor norms, per-tap norms (wav2vec2), grouped transposed convs."""

from __future__ import annotations

import equinox as eqx
import flax.linen as nn
import jax
import numpy as np
import pytest
import torch

from weightnorm.adapters import equinox as we
from weightnorm.adapters import linen as wl
from weightnorm.port import PortError, convert, format_report


def _random(module):
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn_like(parameter).abs() + 0.1)
    return module


def test_whole_tensor_norm_dim_none():
    linear = _random(torch.nn.utils.parametrizations.weight_norm(torch.nn.Linear(3, 4), dim=None))
    assert linear.parametrizations.weight.original0.shape == ()
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    with torch.no_grad():
        expected = linear(torch.as_tensor(x)).numpy()

    model = wl.WeightNorm(nn.Dense(4), feature_axes=None)
    ported, pairing = convert(
        linear, src="torch", dst="linen", like=model.init(jax.random.key(0), x), report=True
    )
    assert "weight norm copied (feature axes () -> ())" in pairing[0].transform
    np.testing.assert_allclose(model.apply(ported, x), expected, atol=1e-6)

    # Equinox normalizes per output row by default: the port refolds.
    like = we.WeightNorm(eqx.nn.Linear(3, 4, key=jax.random.key(0)))
    ported, pairing = convert(linear, src="torch", dst="equinox", like=like, report=True)
    assert "refolded (feature axes () -> (0,))" in pairing[0].transform
    np.testing.assert_allclose(jax.vmap(ported)(x), expected, atol=1e-6)


def test_wav2vec2_positional_conv_normalized_per_kernel_tap():
    # wav2vec2's pos_conv: a grouped Conv1d weight-normed over dim=2, the kernel axis.
    conv = torch.nn.Conv1d(4, 4, 5, padding=2, groups=2)
    conv = _random(torch.nn.utils.parametrizations.weight_norm(conv, name="weight", dim=2))
    assert conv.parametrizations.weight.original0.shape == (1, 1, 5)
    x = np.random.default_rng(1).standard_normal((2, 7, 4)).astype(np.float32)
    with torch.no_grad():
        expected = conv(torch.as_tensor(x.transpose(0, 2, 1))).numpy().transpose(0, 2, 1)

    layer = nn.Conv(4, (5,), padding=[(2, 2)], feature_group_count=2)
    model = wl.WeightNorm(layer, feature_axes=0)  # (k, in/g, out): axis 0 is the tap
    ported, pairing = convert(
        conv, src="torch", dst="linen", like=model.init(jax.random.key(0), x), report=True
    )
    assert "weight norm copied (feature axes (2,) -> (0,))" in pairing[0].transform
    np.testing.assert_allclose(model.apply(ported, x), expected, atol=1e-5)


def test_grouped_transposed_convolutions_are_refused():
    conv = torch.nn.ConvTranspose1d(4, 4, 3, groups=2)
    message = r"^The top-level module is a grouped transposed convolution \(groups=2\)"
    with pytest.raises(PortError, match=message):
        convert(conv, src="torch", dst="linen", like={})
    nested = torch.nn.Sequential(torch.nn.Linear(2, 4), conv)
    with pytest.raises(PortError, match=r"^'1' is a grouped transposed convolution"):
        convert(nested, src="torch", dst="linen", like={})


def test_a_top_level_module_is_named_in_the_report():
    linear = torch.nn.Linear(3, 2)
    like = {"params": {"Dense_0": {"kernel": np.zeros((3, 2), np.float32), "bias": np.zeros(2)}}}
    _, pairing = convert(linear, src="torch", dst="linen", like=like, report=True)
    assert pairing[0].src == ""  # the path itself, as mapping rules match it
    assert format_report(pairing).splitlines()[1].startswith("(top level)  Dense_0 ")


def test_non_default_linen_feature_axes_need_to_be_named():
    # A square kernel normalized per *input* row (feature_axes=0): its (4,) scale
    # fits both axes, and Linen params do not record which one.
    model = wl.WeightNorm(nn.Dense(4), feature_axes=0)
    x = np.random.default_rng(2).standard_normal((3, 4)).astype(np.float32)
    variables = model.init(jax.random.key(0), x)
    scale = variables["params"]["layer_instance/kernel/scale"]
    variables["params"]["layer_instance/kernel/scale"] = scale + np.arange(4, dtype=np.float32)
    expected = model.apply(variables, x)
    linear = torch.nn.Linear(4, 4)

    def torch_outputs(ported):
        with torch.no_grad():
            return ported(torch.as_tensor(x)).numpy()

    assumed = convert(variables, src="linen", dst="torch", like=linear)  # the default, -1
    assert np.abs(torch_outputs(assumed) - expected).max() > 1e-2
    named = convert(
        variables,
        src="linen",
        dst="torch",
        like=linear,
        feature_axes={"params/layer_instance/kernel": 0},
    )
    np.testing.assert_allclose(torch_outputs(named), expected, atol=1e-5)
    with pytest.raises(PortError, match=r"rule 'nothing' matches no weight-normed variable"):
        convert(variables, src="linen", dst="torch", like=linear, feature_axes={"nothing": 0})
