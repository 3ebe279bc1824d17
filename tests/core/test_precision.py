"""Low-precision and complex numerics: float32 accumulation, a dtype-aware epsilon, |v|^2."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tests.peers import assert_bitwise_equal, flax_normalized
from weightnorm.core import WeightNormConfig, decompose, normalize

PATH = "layer_instance/kernel"
SCALE = PATH + "/scale"
NARROW = [jnp.float16, jnp.bfloat16]


def _ours(value, scale, **config):
    scales = None if scale is None else {SCALE: scale}
    config = WeightNormConfig(use_scale=scale is not None, **config)
    return normalize({PATH: value}, scales, config)[PATH]


@given(
    hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=2, max_dims=3, max_side=6),
        elements=st.floats(-8, 8, width=32),
    ),
    st.sampled_from(NARROW),
)
def test_narrow_floats_are_flax_on_a_float32_copy_rounded_once(value, dtype):
    narrow = jnp.asarray(value, dtype)
    scale = jnp.linspace(0.5, 2.0, value.shape[-1], dtype=dtype)
    ours = _ours(narrow, scale, param_dtype=dtype)
    epsilon = max(1e-12, float(jnp.finfo(dtype).tiny) ** 2)  # the dtype-aware epsilon
    expected = flax_normalized(
        narrow.astype(jnp.float32), scale.astype(jnp.float32), epsilon=epsilon
    )
    assert_bitwise_equal(ours, expected.astype(dtype))


def test_bfloat16_sum_of_many_squares_keeps_its_bits():
    # 4096 entries of 1 + 2^-7: a bfloat16 sum stops growing once the running sum's
    # spacing exceeds the addend, float32 accumulation does not.
    value = jnp.full((4096, 1), 1 + 2.0**-7, jnp.bfloat16)
    ours = _ours(value, None)
    exact = 1 / np.sqrt(4096)
    theirs = flax_normalized(value)
    assert ours.dtype == theirs.dtype == jnp.bfloat16
    assert np.abs(np.float32(ours[0, 0]) - exact) <= np.abs(np.float32(theirs[0, 0]) - exact)
    np.testing.assert_allclose(np.float32(ours[0, 0]), exact, rtol=2**-8)


def test_float16_over_256_does_not_overflow():
    value = jnp.array([[300.0], [-400.0]], jnp.float16)  # squares exceed float16's 65504
    ours = _ours(value, jnp.ones(1, jnp.float16), param_dtype=jnp.float16)
    np.testing.assert_allclose(np.float32(ours).ravel(), [0.6, -0.8], rtol=1e-3)
    assert (np.asarray(flax_normalized(value, jnp.ones(1, jnp.float16))) == 0).all()


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64, *NARROW])
@pytest.mark.parametrize("use_scale", [True, False])
def test_zero_weights_give_finite_values_and_gradients_with_the_default_epsilon(dtype, use_scale):
    if dtype == jnp.float64 and not jax.config.jax_enable_x64:
        dtype = jnp.float32
    value = jnp.zeros((3, 2), dtype)
    scale = jnp.array([1.0, 3.0], dtype) if use_scale else None

    # In float16 the gradient at v = 0 is upstream * scale / tiny (tiny = 6.1e-5, the
    # epsilon being tiny**2): finite while upstream * scale < 4, as here (3 * 1.0).
    def loss(value, scale):
        return jnp.sum(_ours(value, scale, param_dtype=dtype).astype(jnp.float32))

    out = _ours(value, scale, param_dtype=dtype)
    assert out.dtype == dtype and (np.asarray(out) == 0).all()
    grads = jax.grad(loss, argnums=(0, 1) if use_scale else 0)(value, scale)
    for grad in jax.tree.leaves(grads):
        assert grad.dtype == dtype
        assert np.isfinite(np.asarray(grad, np.float32)).all()
    # Gradient at v = 0 is scale / sqrt(epsilon): nonzero, so training can leave 0.
    grad_v = grads[0] if use_scale else grads
    assert (np.asarray(grad_v, np.float32) > 0).all()


def test_float16_epsilon_is_its_smallest_normal_squared():
    tiny = float(jnp.finfo(jnp.float16).tiny)
    value = jnp.zeros((4, 1), jnp.float16)
    config = WeightNormConfig(param_dtype=jnp.float16)
    (scale,) = decompose({PATH: value}, config).values()
    np.testing.assert_allclose(np.float32(scale), tiny, rtol=1e-3)
    grad = jax.grad(lambda v: jnp.sum(_ours(v, jnp.ones(1, jnp.float16), param_dtype=jnp.float16)))
    np.testing.assert_allclose(np.float32(grad(value)), 1 / tiny, rtol=1e-3)  # 16384 < 65504
    # A column of norm 0.01 is unaffected at float16's resolution.
    small = jnp.full((4, 1), 0.005, jnp.float16)
    np.testing.assert_allclose(np.float32(_ours(small, None)), 0.5, rtol=2**-11)
    # A larger epsilon than that is kept as given.
    (scale,) = decompose({PATH: value}, config.replace(epsilon=1e-2)).values()
    np.testing.assert_allclose(np.float32(scale), 0.1, rtol=1e-3)


def test_float32_epsilon_is_flax_even_when_tiny():
    value = jnp.array([[1e-20], [0.0]], jnp.float32)
    ours = _ours(value, None, epsilon=1e-45)
    assert_bitwise_equal(ours, flax_normalized(value, None, epsilon=1e-45))


@given(
    hnp.arrays(np.float32, (2, 4, 3), elements=st.floats(-4, 4, width=32)),
    st.sampled_from([-1, 0, None]),
)
def test_complex_weights_are_normalized_by_abs_squared(parts, axes):
    value = jnp.asarray(parts[0] + 1j * parts[1], jnp.complex64)
    config = WeightNormConfig(feature_axes=axes, use_scale=False)
    ours = normalize({PATH: value}, None, config)[PATH]
    wide = np.asarray(value, np.complex128)
    feature = () if axes is None else (axes % wide.ndim,)
    reduce = tuple(a for a in range(wide.ndim) if a not in feature)
    expected = wide / np.sqrt((np.abs(wide) ** 2).sum(axis=reduce, keepdims=True) + 1e-12)
    assert ours.dtype == jnp.complex64
    np.testing.assert_allclose(ours, expected, rtol=2e-5, atol=2e-6)


def test_complex_gradients_are_finite_and_match_autodiff_of_the_formula():
    value = jnp.array([[1 + 2j, 0.5j], [-1.0 + 0j, 2 - 1j]], jnp.complex64)
    zeros = jnp.zeros_like(value)

    def formula(v):
        return v / jnp.sqrt(jnp.sum(jnp.abs(v) ** 2, axis=0, keepdims=True) + 1e-12)

    def loss(fn):
        return lambda v: jnp.sum(jnp.abs(fn(v) * jnp.array([1.0, 2.0])) ** 2 + jnp.real(fn(v)))

    ours = lambda v: normalize({PATH: v}, None, WeightNormConfig(use_scale=False))[PATH]  # noqa: E731
    np.testing.assert_allclose(
        jax.grad(loss(ours))(value), jax.grad(loss(formula))(value), rtol=1e-5, atol=1e-6
    )
    assert np.isfinite(np.asarray(jax.grad(loss(ours))(zeros))).all()
