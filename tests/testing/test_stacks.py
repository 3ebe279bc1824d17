"""`weightnorm.testing` layer stacks: valid specs, and the same architecture in every framework."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given

from weightnorm.testing import STACK_FRAMEWORKS, LayerSpec, LayerStack, build, inputs, layer_stacks


def _output_length(stack):
    length = stack.length
    for layer in stack.layers:
        k, s, d, p = layer.kernel_size, layer.stride, layer.dilation, layer.padding
        if layer.kind == "conv":
            length = (length + 2 * p - d * (k - 1) - 1) // s + 1
        elif layer.kind == "conv_transpose":
            length = (length - 1) * s - 2 * p + k
        assert length >= 1, stack
    return length


@given(layer_stacks())
def test_stacks_are_well_formed(stack):
    assert 1 <= len(stack.layers) <= 3
    for layer, channels in zip(stack.layers, stack.channels(), strict=False):
        assert channels % layer.groups == 0 and layer.features % layer.groups == 0
    _output_length(stack)


@given(layer_stacks(weight_norm=False, kinds=("dense",), spatial=(2,), max_layers=1))
def test_stack_options_are_respected(stack):
    assert not stack.weight_norm and stack.spatial == 2
    assert [layer.kind for layer in stack.layers] == ["dense"]


STACK = LayerStack(
    in_features=2,
    length=5,
    spatial=1,
    layers=(
        LayerSpec("conv", 4, kernel_size=3, stride=2, dilation=2, groups=2, padding=2),
        LayerSpec("conv_transpose", 3, kernel_size=3, stride=2, padding=1),
        LayerSpec("dense", 2, use_bias=False),
    ),
)


@pytest.mark.parametrize("framework", STACK_FRAMEWORKS)
def test_every_framework_builds_the_same_shapes(framework):
    model, apply = build(STACK, framework, seed=3)
    x = inputs(STACK, batch=3)
    assert x.shape == (3, 5, 2)
    y = apply(model, x)
    assert y.shape == (3, _output_length(STACK), 2)
    assert np.isfinite(y).all() and np.abs(y).max() > 0


def test_bad_specs_and_frameworks_are_refused():
    with pytest.raises(ValueError, match="`kind` must be one of"):
        LayerSpec("attention", 2)
    with pytest.raises(ValueError, match="Only 'conv' layers take groups"):
        LayerSpec("dense", 2, groups=2)
    with pytest.raises(ValueError, match="`framework` must be one of"):
        build(STACK, "keras")


def test_nnx_stacks_wrap_weight_normed_layers_in_our_wrapper():
    from flax import nnx

    from weightnorm.adapters.nnx import WeightNorm

    stack = LayerStack(
        2, 5, 1, (LayerSpec("conv", 3, kernel_size=3, weight_norm=True), LayerSpec("dense", 2))
    )
    model, apply = build(stack, "nnx", seed=1)
    wrapped, plain = model.layers
    assert isinstance(wrapped, WeightNorm) and isinstance(wrapped.layer_instance, nnx.Conv)
    assert isinstance(plain, nnx.Linear)
    scale = np.asarray(wrapped.scales["kernel/scale"][...])
    assert scale.shape == (3,) and (scale >= 0.5).all()  # random, positive
    # The wrapper normalizes: its outputs are a plain stack's whose kernel is g v / ||v||.
    v = np.asarray(wrapped.layer_instance.kernel[...], np.float64)
    plain_stack = nnx.Sequential(nnx.clone(wrapped.layer_instance), nnx.clone(plain))
    plain_stack.layers[0].kernel[...] = v * scale / np.sqrt((v * v).sum(axis=(0, 1)))
    x = inputs(stack)
    np.testing.assert_allclose(apply(model, x), apply(plain_stack, x), atol=1e-5, rtol=0)
