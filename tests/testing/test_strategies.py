"""The strategies draw what they promise, and reject bad arguments with InvalidArgument."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

import weightnorm
from weightnorm.testing import (
    float_arrays,
    float_dtypes,
    param_dicts,
    scale_dicts,
    weight_norm_configs,
)


@given(param_dicts(min_leaves=2, max_leaves=3, max_dims=3, dtypes=float_dtypes()))
def test_param_dicts_are_flat_dicts_of_finite_float_arrays(flat):
    assert 1 <= len(flat) <= 3
    assert weightnorm.flatten(weightnorm.unflatten(flat)) == flat  # plain '/' paths
    for value in flat.values():
        assert 1 <= value.ndim <= 3 and all(1 <= side <= 5 for side in value.shape)
        assert value.dtype in (np.float32, jnp.bfloat16, jnp.float16)
        assert np.isfinite(value.astype(np.float32)).all()


@given(st.data())
def test_configs_are_valid_for_their_dict_and_select_something(data):
    flat = data.draw(param_dicts(max_dims=3))
    config = data.draw(weight_norm_configs(flat))
    assert weightnorm.select(flat, config.variable_filter)
    shapes = weightnorm.scale_shapes(flat, config)  # raises for axes that do not fit
    assert len(shapes) == (len(weightnorm.select(flat, config.variable_filter)) * config.use_scale)


@given(st.data())
def test_scale_dicts_have_the_core_shapes_and_dtype(data):
    flat = data.draw(param_dicts(max_dims=3))
    config = data.draw(weight_norm_configs(flat))
    scales = data.draw(scale_dicts(flat, config))
    shapes = weightnorm.scale_shapes(flat, config)
    assert {name: scale.shape for name, scale in scales.items()} == shapes
    assert all(scale.dtype == config.param_dtype for scale in scales.values())


@given(float_arrays((2, 3), dtype=jnp.bfloat16, min_value=-1.0, max_value=1.0))
def test_float_arrays_respect_dtype_shape_and_range(array):
    assert array.shape == (2, 3) and array.dtype == jnp.bfloat16
    assert np.all(np.abs(array.astype(np.float32)) <= 1.0)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: param_dicts(min_leaves=0), "min_leaves"),
        (lambda: param_dicts(min_leaves=3, max_leaves=2), "min_leaves"),
        (lambda: param_dicts(max_dims=1.5), "max_dims"),
        (lambda: param_dicts(dtypes=[np.float32]), "dtypes"),
        (lambda: float_arrays((2,), dtype=np.int32), "dtype"),
        (lambda: float_arrays((2,), min_value=1.0, max_value=0.0), "min_value"),
        (lambda: float_arrays((2,), max_value=float("inf")), "max_value"),
        (lambda: float_arrays((-1,)), "shape"),
        (lambda: float_dtypes(half="yes"), "half"),
        (lambda: weight_norm_configs({}), "non-empty"),
        (lambda: weight_norm_configs({"a": np.float32(1.0)}), "scalar"),
        (lambda: weight_norm_configs({1: np.ones(2)}), "string paths"),
        (lambda: weight_norm_configs({"a": np.ones(2)}, use_scale=1), "use_scale"),
        (
            lambda: scale_dicts(
                {"kernel": np.ones(2)}, weightnorm.WeightNormConfig(feature_axes=3)
            ),
            "out of range",
        ),
    ],
)
def test_bad_arguments_raise_invalid_argument(make, match):
    with pytest.raises(InvalidArgument, match=match):
        make()
