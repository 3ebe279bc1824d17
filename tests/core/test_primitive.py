"""The custom derivative: flax's gradients to rounding, forward mode, and less memory."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax.linen.normalization import _l2_normalize
from hypothesis import given
from hypothesis import strategies as st

from tests.core.test_normalize import weights_and_axes
from tests.peers import assert_bitwise_equal, flax_normalized
from weightnorm.core import WeightNormConfig, normalize, scale_shapes
from weightnorm.core._config import resolve_feature_axes

PATH = "layer_instance/kernel"
SCALE = PATH + "/scale"


def _ours(value, scale, axes):
    config = WeightNormConfig(feature_axes=axes, use_scale=scale is not None)
    scales = None if scale is None else {SCALE: scale}
    return normalize({PATH: value}, scales, config)[PATH]


def _flax(value, scale, axes):
    """flax's own math: the function `flax.linen.WeightNorm` normalizes with.

    Calling it directly (rather than through a Linen module, as
    `tests.peers.flax_normalized` does) keeps hundreds of eager gradients fast;
    `test_flax_function_is_the_module` pins that they are the same.
    """
    config = WeightNormConfig(feature_axes=axes)
    (target,) = _reduction_axes(value, config)
    normalized = _l2_normalize(value, axis=target)
    if scale is None:
        return normalized
    return normalized * jax.lax.expand_dims(scale, target)


def _reduction_axes(value, config):
    feature = resolve_feature_axes(PATH, value.shape, config.feature_axes)
    return (tuple(a for a in range(value.ndim) if a not in feature),)


def test_flax_function_is_the_module():
    value = jax.random.normal(jax.random.key(0), (3, 2, 4))
    scale = jnp.arange(1.0, 5.0)
    assert_bitwise_equal(_flax(value, scale, -1), flax_normalized(value, scale))
    assert_bitwise_equal(_flax(value, None, None), flax_normalized(value, None, feature_axes=None))


def _loss(fn, axes, weights):
    return lambda value, scale: jnp.sum(jnp.sin(fn(value, scale, axes)) * weights)


def _close(actual, expected, gain=1.0):
    """Equal to float32 rounding of terms as large as `gain` (which may cancel to ~0)."""
    expected = np.asarray(expected)
    atol = 1e-6 * max(1.0, np.abs(expected).max(), gain)
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=atol)


def _gain(value, axes, scale):
    """The largest |scale| / ||v|| per feature: the size of the gradient's terms.

    d(v/||v||)/dv is (I - u u^T) / ||v||: where its two terms cancel (a single-element
    feature, whose direction cannot change) the exact gradient is 0 and autodiff's is
    rounding of terms this large.
    """
    value = np.asarray(value, np.float64)
    kept = resolve_feature_axes("v", value.shape, axes)
    reduced = tuple(a for a in range(value.ndim) if a not in kept)
    norms = np.sqrt((value**2).sum(axis=reduced))
    largest = 1.0 if scale is None else float(np.abs(np.asarray(scale)).max())
    return largest / max(float(norms.min()), 1e-30)


@given(weights_and_axes(), st.booleans(), st.data())
def test_gradients_match_autodiff_of_flax(weight_axes, use_scale, data):
    value, axes = weight_axes
    value = jnp.asarray(value)
    (shape,) = scale_shapes({PATH: value}, WeightNormConfig(feature_axes=axes)).values()
    scale = jnp.linspace(-2.0, 3.0, int(np.prod(shape))).reshape(shape) if use_scale else None
    weights = jnp.cos(jnp.arange(value.size, dtype=jnp.float32)).reshape(value.shape)
    argnums = (0, 1) if use_scale else 0
    ours = jax.grad(_loss(_ours, axes, weights), argnums)(value, scale)
    theirs = jax.grad(_loss(_flax, axes, weights), argnums)(value, scale)
    gain = _gain(value, axes, scale)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        assert a.dtype == b.dtype
        _close(a, b, gain)


def test_forward_mode_hessian_and_vmap_match_flax():
    # A JVP rule, not only a VJP: forward mode and Hessians work.
    value = jax.random.normal(jax.random.key(0), (4, 3))
    scale = jnp.array([1.0, -2.0, 0.5])
    ours = jax.hessian(lambda v: jnp.sum(jnp.tanh(_ours(v, scale, -1))))(value)
    theirs = jax.hessian(lambda v: jnp.sum(jnp.tanh(_flax(v, scale, -1))))(value)
    _close(ours, theirs)
    stacked = jnp.stack([value, -2 * value])
    batched = jax.vmap(jax.grad(lambda v: jnp.sum(_ours(v, None, -1) ** 3)))(stacked)
    for i in range(2):
        _close(batched[i], jax.grad(lambda v: jnp.sum(_flax(v, None, -1) ** 3))(stacked[i]))


def _mlp_step(weight):
    def loss(params, x):
        for v, g in params:
            x = jnp.tanh(x @ weight(v, g))
        return jnp.sum(x**2)

    return jax.grad(loss)


def test_train_step_keeps_at_most_one_weight_copy_in_temp_memory():
    # Hand-written weight norm keeps v / ||v|| and more for the backward pass; ours
    # keeps v (a parameter anyway) and per-feature norms. Temp bytes of the
    # compiled gradient are deterministic for a given XLA, so they can be compared.
    depth, width = 16, 64
    params = [(jnp.ones((width, width)), jnp.ones(width)) for _ in range(depth)]
    x = jnp.ones((8, width))

    def hand(v, g):
        return g * v * jax.lax.rsqrt(jnp.sum(v * v, axis=0, keepdims=True) + 1e-12)

    def temp_bytes(weight):
        compiled = jax.jit(_mlp_step(weight)).lower(params, x).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    plain = temp_bytes(lambda v, g: v)
    ours = temp_bytes(lambda v, g: _ours(v, g, -1))
    weights = depth * width * width * 4
    assert ours <= plain + weights
    assert ours < temp_bytes(hand)
