"""Scale inits "ones" and "norm" against flax, torch and equinox; the data-dependent arithmetic."""

from __future__ import annotations

import warnings

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import weightnorm
from weightnorm import NoVariableSelectedWarning, WeightNormConfig, init_scales
from weightnorm.testing import assert_trees_close, float_arrays

from ..peers import _Kernel


def test_ones_is_flax_default_init():
    kernel = jax.random.normal(jax.random.key(0), (3, 4))
    variables = nn.WeightNorm(_Kernel((3, 4))).init(jax.random.key(1))
    ours = init_scales({"layer_instance/kernel": kernel}, WeightNormConfig(scale_init="ones"))
    assert_trees_close(ours, {k: v for k, v in variables["params"].items() if "scale" in k})
    assert ours["layer_instance/kernel/scale"].dtype == jnp.float32


@pytest.mark.parametrize("shape", [(4, 3), (5, 2, 3, 3)])
def test_norm_is_torch_weight_g_and_equinox_g(shape):
    weight = np.array(jax.random.normal(jax.random.key(0), shape))  # a writable copy
    config = WeightNormConfig(scale_init="norm", feature_axes=0, variable_filter="weight")
    ours = init_scales({"weight": weight}, config)["weight/scale"]
    layer = torch.nn.Linear(3, 4) if len(shape) == 2 else torch.nn.Conv2d(2, 5, 3)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(weight))
    layer = torch.nn.utils.parametrizations.weight_norm(layer)
    torch_g = layer.parametrizations.weight.original0.detach().numpy()
    assert_trees_close(ours, torch_g.reshape(-1))
    if len(shape) == 2:
        linear = eqx.nn.Linear(3, 4, key=jax.random.key(0))
        linear = eqx.tree_at(lambda m: m.weight, linear, jnp.asarray(weight))
        assert_trees_close(ours, eqx.nn.WeightNorm(linear).g.reshape(-1))


@given(float_arrays((3, 2), min_value=-3, max_value=3))
def test_norm_leaves_the_weight_unchanged(kernel):
    kernel = kernel + np.array([[4.0, -4.0], [0, 0], [0, 0]], np.float32)  # no zero column
    config = WeightNormConfig(scale_init="norm")
    flat = {"Dense_0/kernel": kernel}
    assert_trees_close(weightnorm.normalize(flat, init_scales(flat, config), config), flat)


def test_norm_works_under_jit_and_refuses_nan():
    config = WeightNormConfig(scale_init="norm")
    scales = jax.jit(lambda k: init_scales({"kernel": k}, config))(jnp.array([[3.0], [4.0]]))
    assert_trees_close(scales, {"kernel/scale": jnp.array([5.0])})
    with pytest.raises(ValueError, match="'Dense_0/kernel' holds NaN or inf"):
        init_scales({"Dense_0/kernel": jnp.array([[jnp.nan], [1.0]])}, config)


def test_unknown_scale_init_name_lists_the_choices():
    with pytest.raises(ValueError, match=r"'zeros' is not one of \('ones', 'norm'\)"):
        WeightNormConfig(scale_init="zeros")


def test_filter_matching_nothing_warns_once_per_init():
    flat = {"Dense_0/kernel": jnp.ones((2, 3)), "Dense_0/bias": jnp.ones(3)}
    with pytest.warns(NoVariableSelectedWarning, match=r"'kernal'.*Dense_0/bias") as record:
        assert init_scales(flat, WeightNormConfig(variable_filter="kernal")) == {}
    assert len(record) == 1 and issubclass(NoVariableSelectedWarning, UserWarning)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        init_scales(flat, WeightNormConfig())  # selects the kernel: no warning
        init_scales({}, WeightNormConfig())  # nothing to select: no warning
        weightnorm.normalize(flat, {}, WeightNormConfig(variable_filter="kernal"))  # hot path


@given(st.data())
def test_data_dependent_init_gives_zero_mean_unit_std(data):
    t = data.draw(float_arrays((16, 3), min_value=-5, max_value=5))
    t = t + np.linspace(-3.0, 3.0, 16, dtype=np.float32)[:, None]  # spread every feature
    scale, bias = weightnorm.data_dependent_scale_bias(t, epsilon=0.0)
    y = t * np.asarray(scale) + np.asarray(bias)
    assert_trees_close(y.mean(axis=0), np.zeros(3), atol=1e-5)
    assert_trees_close(y.std(axis=0), np.ones(3), rtol=1e-4)
    # The paper's formulas, in float64 NumPy.
    mean, std = t.astype(np.float64).mean(0), t.astype(np.float64).std(0)
    assert_trees_close((scale, bias), (1 / std, -mean / std), rtol=1e-5)


def test_data_dependent_init_takes_the_feature_axis_and_keeps_constant_features_finite():
    t = jnp.stack([jnp.arange(8.0), jnp.full(8, 2.0)])  # features on axis 0, one constant
    scale, bias = weightnorm.data_dependent_scale_bias(t, feature_axis=0)
    assert scale.shape == bias.shape == (2,) and bool(jnp.isfinite(scale).all())
    assert_trees_close(bias[1] / scale[1], jnp.float32(-2.0))


@pytest.mark.parametrize(
    ("t", "kwargs", "match"),
    [
        (jnp.ones(4), {}, "at least one more axis"),
        (jnp.ones((4, 2)), {"feature_axis": 2}, "feature axis 2"),
        (jnp.ones((4, 2), jnp.int32), {}, "real floating"),
        (jnp.full((4, 2), jnp.nan), {}, "NaN or inf"),
    ],
)
def test_data_dependent_init_rejects_bad_preactivations(t, kwargs, match):
    with pytest.raises(ValueError, match=match):
        weightnorm.data_dependent_scale_bias(t, **kwargs)
