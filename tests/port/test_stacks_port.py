"""Random layer stacks built in one framework and ported to any other compute the same function."""

from __future__ import annotations

import dataclasses

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from weightnorm.port import convert, read_model
from weightnorm.testing import STACK_FRAMEWORKS, build, inputs, layer_stacks

TOLERANCE = 2e-5  # float32 outputs of small stacks; rounding only


@st.composite
def ports(draw, **stack_options):
    stack = draw(layer_stacks(**stack_options))
    src, dst = draw(st.permutations(STACK_FRAMEWORKS))[:2]
    return stack, src, dst


def _flat(model, framework):
    return {key: np.asarray(value) for key, value in read_model(model, framework, "x").flat.items()}


@given(ports())
def test_port_keeps_outputs_and_round_trips_exactly(case):
    stack, src, dst = case
    x = inputs(stack)
    source, apply_src = build(stack, src, seed=1)
    like, apply_dst = build(stack, dst, seed=2)
    ported, there = convert(source, src=src, dst=dst, like=like, report=True)
    np.testing.assert_allclose(apply_dst(ported, x), apply_src(source, x), atol=TOLERANCE, rtol=0)

    back, back_again = convert(ported, src=dst, dst=src, like=source, report=True)
    np.testing.assert_allclose(apply_src(back, x), apply_src(source, x), atol=TOLERANCE, rtol=0)
    original, returned = _flat(source, src), _flat(back, src)
    assert list(returned) == list(original)
    # Exact unless a Linen/Haiku scale's shape fits several axes (a layer with
    # channel and kernel sizes alike), where the port refolds (within rounding).
    if not any("refolded" in p.transform for p in [*there, *back_again]):
        for key, value in original.items():
            np.testing.assert_array_equal(returned[key], value, err_msg=key)


@given(layer_stacks(max_layers=2, spatial=(1,), weight_norm=True), st.data())
def test_weight_norm_folds_into_and_decomposes_out_of_plain_layers(stack, data):
    # The destination has the same layers with weight norm on some and off others.
    flags = data.draw(
        st.lists(st.booleans(), min_size=len(stack.layers), max_size=len(stack.layers))
    )
    other = dataclasses.replace(
        stack,
        layers=tuple(
            dataclasses.replace(layer, weight_norm=flag)
            for layer, flag in zip(stack.layers, flags, strict=True)
        ),
    )
    src = data.draw(st.sampled_from(STACK_FRAMEWORKS))
    dst = data.draw(st.sampled_from(STACK_FRAMEWORKS))
    x = inputs(stack)
    source, apply_src = build(stack, src, seed=1)
    like, apply_dst = build(other, dst, seed=2)
    ported, pairings = convert(source, src=src, dst=dst, like=like, report=True)
    np.testing.assert_allclose(apply_dst(ported, x), apply_src(source, x), atol=TOLERANCE, rtol=0)
    folded = sum("weight norm folded" in pairing.transform for pairing in pairings)
    assert folded == flags.count(False)


def test_port_report_names_every_layer_and_transform():
    from weightnorm.testing import LayerSpec, LayerStack

    stack = LayerStack(
        2,
        5,
        1,
        (
            LayerSpec("conv", 4, kernel_size=3, padding=1, weight_norm=True),
            LayerSpec("conv_transpose", 3, kernel_size=2, stride=2, weight_norm=True),
            LayerSpec("dense", 2),
        ),
    )
    source, _ = build(stack, "torch")
    like, _ = build(stack, "linen")
    _, pairings = convert(source, src="torch", dst="linen", like=like, report=True)
    assert [(p.src, p.dst, p.kind, p.by) for p in pairings] == [
        ("0", "layers_0", "conv", "names"),
        ("1", "layers_1", "conv_transpose", "names"),
        ("2", "layers_2", "dense", "names"),
    ]
    assert (
        "weight: O I * -> * I O, weight norm copied (feature axes (0,) -> (2,))"
        in pairings[0].transform
    )
    assert "weight: I O * -> ~* I O" in pairings[1].transform
