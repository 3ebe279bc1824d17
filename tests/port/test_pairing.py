"""How layers pair: names first, then facts only the shapes or a real order give, else refusal.

Properties over random models written as plain dicts (no framework runs here): the
expected arrays are torch's transposed by hand (a Linen `kernel` is torch's `weight.T`).
"""

from __future__ import annotations

import collections
import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from weightnorm.port import PortError, convert


@st.composite
def dense_stacks(draw, min_layers=2, max_layers=5):
    """(names, [(out, in)]): a torch MLP's layers, some of the same shape."""
    count = draw(st.integers(min_layers, max_layers))
    width = draw(st.integers(2, 4))
    shapes = [(width, width)] * count  # all square, all alike: only names can tell them apart
    names = draw(
        st.lists(
            st.from_regex(r"[a-z]{1,6}(_proj)?", fullmatch=True),
            min_size=count,
            max_size=count,
            unique=True,
        )
    )
    return names, shapes


def _torch_state(names, shapes, seed=0):
    rng = np.random.default_rng(seed)
    state = {}
    for name, (out, in_) in zip(names, shapes, strict=True):
        state[f"{name}.weight"] = rng.standard_normal((out, in_)).astype(np.float32)
        state[f"{name}.bias"] = rng.standard_normal(out).astype(np.float32)
    return state


def _linen_like(names, shapes):
    return {
        "params": {
            name: {"kernel": np.zeros((in_, out), np.float32), "bias": np.zeros(out, np.float32)}
            for name, (out, in_) in zip(names, shapes, strict=True)
        }
    }


@given(dense_stacks(), st.randoms())
def test_permuting_the_source_dicts_order_never_changes_the_port(stack, random):
    names, shapes = stack
    state = _torch_state(names, shapes)
    keys = list(state)
    random.shuffle(keys)
    shuffled = {key: state[key] for key in keys}
    like = _linen_like(names, shapes)
    a = convert(state, src="torch", dst="linen", like=like)
    b = convert(shuffled, src="torch", dst="linen", like=like)
    for name in names:
        np.testing.assert_array_equal(a["params"][name]["kernel"], b["params"][name]["kernel"])
        np.testing.assert_array_equal(a["params"][name]["kernel"], state[f"{name}.weight"].T)


@given(dense_stacks(), st.randoms())
def test_names_decide_whatever_the_destinations_order(stack, random):
    # The destination lists the same names in another order (and Linen dicts come back
    # sorted anyway): every layer gets the weights of the source layer of its name.
    names, shapes = stack
    state = _torch_state(names, shapes)
    order = list(names)
    random.shuffle(order)
    like = _linen_like(order, shapes)
    out, pairings = convert(state, src="torch", dst="linen", like=like, report=True)
    assert all(p.by == "names" and p.src == p.dst for p in pairings)
    for name in names:
        np.testing.assert_array_equal(out["params"][name]["kernel"], state[f"{name}.weight"].T)


@given(dense_stacks(min_layers=2))
def test_same_shaped_layers_that_names_and_order_do_not_decide_are_refused(stack):
    names, shapes = stack
    state = _torch_state(names, shapes)  # a plain dict: no order of its own
    other = [f"layer{chr(ord('a') + i)}" for i in range(len(names))]  # no name in common
    with pytest.raises(PortError, match="cannot tell which of the dense layers") as error:
        convert(state, src="torch", dst="linen", like=_linen_like(other, shapes))
    for name in [*names, *other]:  # every candidate is named
        assert re.search(rf"'{re.escape(name)}'", str(error.value)), name


def test_a_real_order_on_both_sides_pairs_what_names_do_not():
    names, shapes = ["fc", "hidden", "out"], [(3, 3)] * 3
    state = collections.OrderedDict(_torch_state(names, shapes))  # as `state_dict()` gives
    import equinox as eqx
    import jax

    keys = jax.random.split(jax.random.key(0), 3)
    like = [eqx.nn.Linear(3, 3, key=k) for k in keys]  # a list: Equinox's order is its own
    out, pairings = convert(state, src="torch", dst="equinox", like=like, report=True)
    assert [(p.src, p.dst, p.by) for p in pairings] == [
        ("fc", "0", "order"),
        ("hidden", "1", "order"),
        ("out", "2", "order"),
    ]
    for name, layer in zip(names, out, strict=True):
        np.testing.assert_array_equal(layer.weight, state[f"{name}.weight"])
    with pytest.raises(PortError, match="order is lost"):  # a plain dict has none
        convert(dict(state), src="torch", dst="equinox", like=like)


def test_layers_alike_but_for_their_kind_of_order_are_refused():
    # Linen numbers default-named layers as it makes them (in compact code, as it calls
    # them); torch lists them as declared. A HiFi-GAN declares its residual convolutions
    # in another order than it calls them, so the two orders never pair.
    state = collections.OrderedDict(_torch_state(["convs1", "convs2"], [(3, 3)] * 2))
    like = _linen_like(["Dense_0", "Dense_1"], [(3, 3)] * 2)
    with pytest.raises(PortError, match="declaration or index order but the destination"):
        convert(state, src="torch", dst="linen", like=like)
    mapping = {"convs1": "Dense_1", "convs2": "Dense_0"}  # what the user says, the port does
    out = convert(state, src="torch", dst="linen", like=like, mapping=mapping)
    np.testing.assert_array_equal(out["params"]["Dense_1"]["kernel"], state["convs1.weight"].T)
