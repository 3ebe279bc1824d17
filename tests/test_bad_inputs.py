"""Every public function, fed bad input, raises a clear error naming the problem.

One row per (function, bad input): the exception type and a fragment of its
message, which names the offending path, axis or shape and says what was
expected. A filter that selects nothing warns (flax silently does nothing);
empty dicts are valid and give empty results.
"""

from __future__ import annotations

import warnings

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from flax import nnx

import weightnorm as wn
from weightnorm.adapters import equinox as we
from weightnorm.adapters import haiku as wh
from weightnorm.adapters import linen as wl
from weightnorm.adapters import nnx as wx
from weightnorm.testing import assert_same_function

C = wn.WeightNormConfig()
K = {"Dense_0/kernel": jnp.ones((2, 3)), "Dense_0/bias": jnp.zeros(3)}
S = {"Dense_0/kernel/scale": jnp.ones(3)}
NAN = {"Dense_0/kernel": jnp.array([[1.0, jnp.nan]])}
LINEN = wl.WeightNorm(nn.Dense(3))
LINEAR = eqx.nn.Linear(2, 3, key=jax.random.key(0))
X = jnp.ones((1, 2))


def nnx_linear(kernel=None):
    """A fresh NNX Linear(2, 3), optionally holding `kernel`."""
    linear = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    if kernel is not None:
        linear.kernel[...] = kernel
    return linear


class NNXUnused(nnx.Module):
    """Holds a wrapper that its call does not use."""

    def __init__(self):
        self.unused = wx.WeightNorm(nnx_linear())

    def __call__(self, x):
        return x


CASES = {
    # wrong types
    "flatten/sep": (lambda: wn.flatten(K, sep=""), ValueError, "`sep` must be a non-empty"),
    "unflatten/list": (lambda: wn.unflatten([1]), TypeError, "Expected a flat dict"),
    "normalize/config": (lambda: wn.normalize(K, S, {"epsilon": 1}), TypeError, "WeightNormConfig"),
    "normalize/scales": (lambda: wn.normalize(K, [1], C), TypeError, "`scales` must be a dict"),
    "init/list": (lambda: wn.init_scales([K], C), TypeError, "Expected a flat dict"),
    "config/epsilon": (lambda: wn.WeightNormConfig(epsilon="1"), TypeError, "`epsilon`"),
    "config/axes": (lambda: wn.WeightNormConfig(feature_axes=1.0), TypeError, "`feature_axes`"),
    "config/scale_init": (lambda: wn.WeightNormConfig(scale_init=1), TypeError, "scale_init"),
    "config/filter": (lambda: wn.WeightNormConfig(variable_filter=[1]), TypeError, "strings"),
    "ddi/dtype": (lambda: wn.data_dependent_scale_bias(jnp.ones((2, 2), int)), ValueError, "real"),
    "linen/fold-model": (lambda: wl.fold("Dense", {}), TypeError, "Expected a Linen module"),
    "linen/unfold-model": (lambda: wl.unfold(nn.Dense(3), {}), TypeError, "linen.WeightNorm"),
    "linen/fold-unwrapped": (
        lambda: wl.fold(nn.Dense(3), {"params": {"kernel": jnp.ones((2, 3))}}),
        ValueError,
        "hold no weightnorm `WeightNorm` scales",
    ),
    "linen/fold-vars": (lambda: wl.fold(LINEN, [1]), TypeError, "'params' collection"),
    "linen/unfold-vars": (lambda: wl.unfold(LINEN, {}), TypeError, "'params' collection"),
    "haiku/fold": (lambda: wh.fold({"linear": 1}), TypeError, "Haiku params"),
    "haiku/ddi-unwrapped": (
        lambda: wh.data_dependent_init(lambda p, x: x, {"linear": {"w": jnp.ones((2, 2))}}, 1),
        ValueError,
        "no weightnorm `WeightNorm` scales",
    ),
    "linen/ddi-vars": (lambda: wl.data_dependent_init(LINEN, [1], X), TypeError, "'params'"),
    "haiku/unfold": (lambda: wh.unfold([1]), TypeError, "Haiku params"),
    "core/path-filter": (lambda: wn.PathFilter(frozenset({1})), TypeError, "strings"),
    "testing/model": (lambda: assert_same_function(1, abs, X), TypeError, "`model_a`"),
    "nnx/wrap": (lambda: wx.WeightNorm(abs), TypeError, r"must be an nnx\.Module"),
    "nnx/fold-state": (
        lambda: wx.fold(nnx.state(nnx_linear())),
        TypeError,
        r"`model` must be an nnx\.Module, got State",
    ),
    "nnx/unfold-layer": (lambda: wx.unfold({}), TypeError, r"`layer` must be an nnx\.Module"),
    "nnx/ddi-model": (lambda: wx.data_dependent_init([1], X), TypeError, "nnx.Module"),
    "nnx/unfold-no-scale": (
        lambda: wx.unfold(nnx_linear(), use_scale=False),
        ValueError,
        "needs `use_scale=True`",
    ),
    "nnx/unfold-scale-init": (
        lambda: wx.unfold(nnx_linear(), scale_init="ones"),
        ValueError,
        "sets `scale_init='norm'`",
    ),
    "nnx/ddi-unwrapped": (
        lambda: wx.data_dependent_init(nnx_linear(), X),
        ValueError,
        "holds no weightnorm `WeightNorm` with scales",
    ),
    "nnx/ddi-not-called": (
        lambda: wx.data_dependent_init(NNXUnused(), X),
        ValueError,
        r"\['unused/layer_instance'\] were not called",
    ),
    "nnx/ddi-two-scales": (
        lambda: wx.data_dependent_init(wx.WeightNorm(nnx_linear(), variable_filter=None), X),
        ValueError,
        "layer 'layer_instance' has two normalized params",
    ),
    "nnx/ddi-axes": (
        lambda: wx.data_dependent_init(wx.WeightNorm(nnx_linear(), feature_axes=None), X),
        ValueError,
        "one scale per output feature",
    ),
    # non-string keys
    "flat/int-key": (lambda: wn.normalize({1: jnp.ones(2)}, {}, C), TypeError, "keys must be"),
    "select/int-key": (lambda: wn.select({("a",): 1}, None), TypeError, "keys must be strings"),
    # missing and unexpected keys
    "normalize/missing": (lambda: wn.normalize(K, {}, C), ValueError, r"missing \['Dense_0/kernel"),
    "normalize/extra": (lambda: wn.normalize(K, {**S, "x/scale": 1}, C), ValueError, "x/scale"),
    "linen/unflatten": (lambda: wl.unflatten({"a": 1}, like={}), ValueError, "unexpected keys"),
    "haiku/unflatten": (lambda: wh.unflatten({}, like={"m": {"w": 0}}), ValueError, "m/w"),
    "equinox/unflatten": (lambda: we.unflatten({}, like=LINEAR), ValueError, "'weight'"),
    "nnx/unflatten": (lambda: wx.unflatten({}, like=nnx_linear()), ValueError, "'kernel'"),
    "unflatten/like": (lambda: wn.unflatten({"a": 1}, like={"b": 0}), ValueError, "missing keys"),
    "haiku/unfold-name": (
        lambda: wh.unfold({"weight_norm": {"w": jnp.ones((2, 2))}}),
        ValueError,
        "already have a bundle 'weight_norm'",
    ),
    "linen/fold-two": (
        lambda: wl.fold(LINEN, {"params": {"a": {}, "b": {}}}),
        ValueError,
        r"subtrees \['a', 'b'\]",
    ),
    # mismatched shapes
    "normalize/shape": (
        lambda: wn.normalize(K, {"Dense_0/kernel/scale": jnp.ones(2)}, C),
        ValueError,
        r"'Dense_0/kernel/scale' has shape \(2,\), expected \(3,\)",
    ),
    "init/callable-shape": (
        lambda: wn.init_scales(
            K, C.replace(scale_init=lambda k, s, d: jnp.ones(1)), jax.random.key(0)
        ),
        ValueError,
        r"returned shape \(1,\)",
    ),
    # axes out of range
    "normalize/axis": (
        lambda: wn.scale_shapes(K, C.replace(feature_axes=2)),
        ValueError,
        r"Feature axis 2 is out of range for variable 'Dense_0/kernel' with shape \(2, 3\)",
    ),
    "normalize/scalar": (
        lambda: wn.init_scales({"kernel": jnp.float32(1)}, C),
        ValueError,
        "'kernel' is a scalar",
    ),
    "config/axis-twice": (lambda: wn.WeightNormConfig(feature_axes=(1, 1)), ValueError, "twice"),
    "ddi/axis": (
        lambda: wn.data_dependent_scale_bias(jnp.ones((2, 2)), feature_axis=3),
        ValueError,
        "feature axis 3",
    ),
    "nnx/axis": (
        lambda: wx.WeightNorm(nnx_linear(), feature_axes=2),
        ValueError,
        r"axis 2 is out of range for variable 'kernel' with shape \(2, 3\)",
    ),
    "equinox/axis": (
        lambda: we.WeightNorm(LINEAR, feature_axes=2),
        ValueError,
        "'weight' with shape",
    ),
    # NaN and inf
    "init/norm-nan": (
        lambda: wn.init_scales(NAN, C.replace(scale_init="norm")),
        ValueError,
        "'Dense_0/kernel' holds NaN or inf",
    ),
    "fold/nan": (lambda: wn.fold(NAN, {"Dense_0/kernel/scale": jnp.ones(2)}, C), ValueError, "NaN"),
    "unfold/nan": (lambda: wn.unfold(NAN, C), ValueError, "'Dense_0/kernel' holds NaN"),
    "ddi/nan": (lambda: wn.data_dependent_scale_bias(jnp.full((2, 2), jnp.inf)), ValueError, "NaN"),
    "nnx/norm-nan": (
        lambda: wx.WeightNorm(nnx_linear(jnp.nan), scale_init="norm"),
        ValueError,
        "'kernel' holds NaN",
    ),
    "nnx/unfold-nan": (lambda: wx.unfold(nnx_linear(jnp.inf)), ValueError, "'kernel' holds NaN"),
    "nnx/fold-nan": (
        lambda: wx.fold(wx.WeightNorm(nnx_linear(jnp.nan))),
        ValueError,
        "'kernel' holds NaN or inf, so the folded weight",
    ),
    "equinox/unfold-nan": (
        lambda: we.unfold(eqx.tree_at(lambda m: m.weight, LINEAR, jnp.full((3, 2), jnp.nan))),
        ValueError,
        "'weight' holds NaN",
    ),
    # wrong dtype and values
    "normalize/int": (
        lambda: wn.scale_shapes({"kernel": jnp.ones((2, 2), int)}, C),
        ValueError,
        "'kernel' has dtype int",
    ),
    "config/negative-epsilon": (lambda: wn.WeightNormConfig(epsilon=-1.0), ValueError, ">= 0"),
    "decompose/no-scale": (
        lambda: wn.decompose(K, C.replace(use_scale=False)),
        ValueError,
        "use_scale=True",
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_raises_a_clear_error(name):
    call, error, match = CASES[name]
    with pytest.raises(error, match=match):
        call()


NOTHING = wn.WeightNormConfig(variable_filter="kernal")


@pytest.mark.parametrize(
    "call",
    [
        lambda: wn.init_scales(K, NOTHING),
        lambda: wn.unfold(K, NOTHING),
        lambda: we.WeightNorm(LINEAR, variable_filter="Weight"),
        lambda: wl.WeightNorm(nn.Dense(3), variable_filter="kernal").init(
            jax.random.key(0), jnp.ones((1, 2))
        ),
        lambda: wx.WeightNorm(nnx_linear(), variable_filter="kernal"),
        lambda: wx.WeightNorm(nnx_linear(), variable_filter=nnx.PathContains("kern")),
    ],
    ids=["init_scales", "unfold", "equinox", "linen", "nnx", "nnx-filter"],
)
def test_a_filter_that_selects_nothing_warns(call):
    with pytest.warns(wn.NoVariableSelectedWarning, match="selects none of the variables"):
        call()


def test_empty_dicts_are_valid_and_give_empty_results():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to select is not a filter mistake
        assert wn.normalize({}, None, C) == {} and wn.init_scales({}, C) == {}
        assert wn.fold({}, {}, C) == {} and wn.unfold({}, C) == ({}, {})
        assert wn.flatten({}) == {} and wn.unflatten({}) == {} and wh.fold({}) == {}
