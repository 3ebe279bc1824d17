"""The assertions pass on equal things and fail loudly, naming the leaf, on different ones."""

from __future__ import annotations

import subprocess
import sys

import flax.linen as nn
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import weightnorm
from weightnorm.testing import (
    assert_params_equal,
    assert_same_function,
    assert_trees_close,
    assert_weight_normed,
    default_tolerance,
    param_dicts,
    scale_dicts,
    weight_norm_configs,
)

X = jax.random.normal(jax.random.key(0), (4, 3))


def _linen_and_haiku_dense():
    linen = nn.Dense(2)
    variables = linen.init(jax.random.key(1), X)
    haiku = hk.without_apply_rng(hk.transform(lambda x: hk.Linear(2)(x)))
    params = {"linear": {"w": variables["params"]["kernel"], "b": variables["params"]["bias"]}}
    return linen, variables, haiku, params


def test_same_function_passes_for_one_dense_in_linen_and_haiku():
    linen, variables, haiku, params = _linen_and_haiku_dense()
    assert_same_function(lambda x: linen.apply(variables, x), lambda x: haiku.apply(params, x), X)


def test_same_function_names_the_differing_leaf_and_the_max_difference():
    linen, variables, haiku, params = _linen_and_haiku_dense()
    params["linear"]["b"] = params["linear"]["b"].at[1].add(0.5)
    with pytest.raises(
        AssertionError, match=r"leaf '1'.*max \|actual - expected\| = 0\.5 at index \(0, 1\)"
    ):
        assert_same_function(  # outputs may be pytrees: the leaf is named by its path
            lambda x: (0, linen.apply(variables, x)), lambda x: (0, haiku.apply(params, x)), X
        )


def test_tolerance_is_chosen_by_dtype():
    a = jnp.ones(3, jnp.float32)
    assert_trees_close(a.astype(jnp.float16) + 0.004, a.astype(jnp.float16))
    with pytest.raises(AssertionError, match=r"rtol=1e-05 \(float32\)"):
        assert_trees_close(a + 0.004, a)
    assert default_tolerance("float32") == 1e-5 and default_tolerance("bfloat16") > 1e-2


def test_structure_shape_and_dtype_mismatches_are_named():
    with pytest.raises(AssertionError, match=r"only in the first \['b'\]"):
        assert_trees_close({"a": 1.0, "b": 2.0}, {"a": 1.0})
    with pytest.raises(AssertionError, match=r"leaf 'a': shape \(2,\) vs \(3,\)"):
        assert_trees_close({"a": np.ones(2)}, {"a": np.ones(3)})
    with pytest.raises(AssertionError, match="leaf 'w': dtype float32 vs bfloat16"):
        assert_params_equal({"w": jnp.ones(2)}, {"w": jnp.ones(2, jnp.bfloat16)})
    with pytest.raises(TypeError, match="model_b"):
        assert_same_function(jnp.tanh, "tanh", X)


def test_params_equal_is_bitwise_and_nan_equal():
    a = {"w": jnp.array([1.0, jnp.nan])}
    assert_params_equal(a, {"w": jnp.array([1.0, jnp.nan])})
    with pytest.raises(AssertionError, match="leaf 'w'"):
        assert_params_equal(a, {"w": jnp.array([jnp.nextafter(1.0, 2.0), jnp.nan])})


@given(st.data())
def test_folded_weights_are_weight_normed(data):
    flat = data.draw(param_dicts(max_dims=2, max_side=3))
    # The norms are |scale| * ||v|| / sqrt(||v||^2 + epsilon): take epsilon negligible.
    config = data.draw(weight_norm_configs(flat)).replace(epsilon=1e-12)
    scales = data.draw(scale_dicts(flat, config, min_value=0.5, max_value=2.0))
    # Away from zero (a drawn -2.0 plus 2.0 was a zero direction, whose norm is ~0).
    directions = {path: np.abs(np.asarray(value, np.float32)) + 1.0 for path, value in flat.items()}
    folded = weightnorm.fold(directions, scales if config.use_scale else None, config)
    assert_weight_normed(folded, scales, config)


def test_weight_normed_fails_naming_the_variable():
    config = weightnorm.WeightNormConfig()
    weights = {"Dense_0/kernel": jnp.array([[3.0], [4.0]]), "Dense_0/bias": jnp.ones(1)}
    assert_weight_normed(weights, {"Dense_0/kernel/scale": jnp.array([5.0])}, config)
    with pytest.raises(AssertionError, match=r"'Dense_0/kernel'.*max"):
        assert_weight_normed(weights, {"Dense_0/kernel/scale": jnp.array([4.0])}, config)
    with pytest.raises(ValueError, match="missing"):
        assert_weight_normed(weights, {}, config)


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)


def test_package_skips_hypothesis_and_testing_without_it_names_the_extra():
    result = _run(
        "import sys, weightnorm, weightnorm.core\n"
        "print('hypothesis' in sys.modules, flush=True)\n"
        "sys.modules['hypothesis'] = None\n"
        "import weightnorm.testing"
    )
    assert result.stdout.strip() == "False"  # `import weightnorm` left hypothesis out
    assert result.returncode != 0
    assert "pip install 'weightnorm[testing]'" in result.stderr
