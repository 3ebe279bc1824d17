"""fold and unfold: property-tested in both directions, and fold against flax's numbers."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import weightnorm
from weightnorm import WeightNormConfig, fold, unfold
from weightnorm.testing import (
    assert_params_equal,
    assert_trees_close,
    assert_weight_normed,
    param_dicts,
    scale_dicts,
    weight_norm_configs,
)

from ..peers import flax_normalized

# Few distinct shapes keep the number of compiled kernels (and the test time) small.
SMALL = {"max_dims": 3, "max_side": 3}


def _no_zero_features(flat):
    """Every feature gets a non-zero direction: shift values away from 0."""
    return {path: np.where(value >= 0, value + 1, value - 1) for path, value in flat.items()}


@given(st.data())
def test_fold_of_unfold_gives_the_weights_back(data):
    flat = _no_zero_features(data.draw(param_dicts(**SMALL)))
    config = data.draw(weight_norm_configs(flat, use_scale=True))
    directions, scales = unfold(flat, config)
    assert_params_equal(directions, flat)  # the weight is its own direction
    assert_trees_close(fold(directions, scales, config), flat)


@given(st.data())
def test_unfold_of_fold_keeps_the_folded_weights(data):
    flat = _no_zero_features(data.draw(param_dicts(**SMALL)))
    config = data.draw(weight_norm_configs(flat, use_scale=True)).replace(epsilon=1e-12)
    scales = data.draw(scale_dicts(flat, config, min_value=0.5, max_value=2.0))
    folded = fold(flat, scales, config)
    assert set(folded) == set(flat)  # plain keys, no scales
    assert_weight_normed(folded, scales, config)
    assert_trees_close(fold(*unfold(folded, config), config), folded)


def test_fold_is_flax_weight_norm_bitwise():
    kernel = np.arange(-3.0, 9.0, dtype=np.float32).reshape(3, 4)
    scale = np.array([0.5, -2.0, 3.0, 1.0], np.float32)
    folded = fold({"kernel": kernel}, {"kernel/scale": scale}, WeightNormConfig())
    assert_params_equal(folded["kernel"], flax_normalized(kernel, scale))


def test_fold_and_unfold_refuse_nan_and_missing_scales():
    config = WeightNormConfig()
    bad = {"Dense_0/kernel": jnp.array([[1.0], [jnp.inf]])}
    with pytest.raises(ValueError, match="'Dense_0/kernel' holds NaN or inf"):
        fold(bad, {"Dense_0/kernel/scale": jnp.ones(1)}, config)
    with pytest.raises(ValueError, match="'Dense_0/kernel' holds NaN or inf"):
        unfold(bad, config)
    with pytest.raises(ValueError, match=r"missing \['Dense_0/kernel/scale'\]"):
        fold({"Dense_0/kernel": jnp.ones((2, 1))}, {}, config)
    with pytest.raises(ValueError, match="use_scale=True"):
        unfold({"Dense_0/kernel": jnp.ones((2, 1))}, config.replace(use_scale=False))
    assert weightnorm.fold is fold  # the package re-exports the core


def test_fold_refuses_nan_directions_without_scales_too():
    flat = {"kernel": jnp.array([[np.nan], [1.0]])}
    with pytest.raises(ValueError, match="'kernel' holds NaN or inf"):
        fold(flat, None, WeightNormConfig(use_scale=False))
