"""normalize / scale_shapes / init_scales / decompose against flax and by invariants."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tests.peers import assert_bitwise_equal, flax_normalized
from weightnorm.core import (
    WeightNormConfig,
    decompose,
    init_scales,
    normalize,
    scale_shapes,
    select,
)
from weightnorm.testing import assert_weight_normed

PATH = "layer_instance/kernel"  # flax's name for a top-level WeightNorm's kernel


@st.composite
def weights_and_axes(draw, dtypes=(np.float32,), allow_zero=True):
    """A weight array and valid feature axes for it: None, an int or a tuple in any order."""
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, max_side=5))
    ndim = len(shape)
    dtype = draw(st.sampled_from(dtypes))
    elements = st.floats(-8, 8, width=32, allow_subnormal=False)
    if not allow_zero:
        elements = elements.filter(lambda x: abs(x) > 1e-2)
    value = draw(hnp.arrays(np.float32, shape, elements=elements)).astype(dtype)
    kind = draw(st.sampled_from(["none", "int", "tuple"]))
    if kind == "none":
        axes = None
    elif kind == "int":
        axes = draw(st.integers(-ndim, ndim - 1))
    else:
        chosen = draw(st.lists(st.integers(0, ndim - 1), unique=True, max_size=ndim))
        axes = tuple(draw(st.sampled_from([a, a - ndim])) for a in chosen)
    return value, axes


def _positive_scale(draw, shape):
    return draw(hnp.arrays(np.float32, shape, elements=st.floats(0.125, 4, width=32)))


@given(weights_and_axes(), st.data())
def test_normalize_is_bitwise_flax(weight_axes, data):
    value, axes = weight_axes
    config = WeightNormConfig(feature_axes=axes)
    flat = {PATH: jnp.asarray(value)}
    (scale_shape,) = scale_shapes(flat, config).values()
    scale = _positive_scale(data.draw, scale_shape)
    ours = normalize(flat, {PATH + "/scale": scale}, config)[PATH]
    assert_bitwise_equal(ours, flax_normalized(value, scale, feature_axes=axes))


@given(weights_and_axes())
def test_normalize_without_scale_is_bitwise_flax(weight_axes):
    value, axes = weight_axes
    config = WeightNormConfig(feature_axes=axes, use_scale=False)
    ours = normalize({PATH: value}, None, config)[PATH]
    assert_bitwise_equal(ours, flax_normalized(value, None, feature_axes=axes))


@pytest.mark.parametrize("dtype", [None, jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize("param_dtype", [jnp.float32, jnp.bfloat16])
def test_result_dtype_follows_flax(dtype, param_dtype):
    # bfloat16 is accumulated in float32 (tests/core/test_precision.py), so the
    # dtype is flax's and the values are flax's on the float32 copy, rounded.
    value = jnp.linspace(-1, 1, 12, dtype=jnp.bfloat16).reshape(3, 4)
    scale = jnp.arange(1, 5, dtype=param_dtype)
    config = WeightNormConfig(dtype=dtype, param_dtype=param_dtype)
    ours = normalize({PATH: value}, {PATH + "/scale": scale}, config)[PATH]
    theirs = flax_normalized(value, scale, dtype=dtype, param_dtype=param_dtype)
    assert ours.dtype == theirs.dtype
    wide = flax_normalized(value.astype(jnp.float32), scale.astype(jnp.float32))
    assert_bitwise_equal(ours, wide.astype(theirs.dtype))


def _norms(value, axes):
    value = np.asarray(value).astype(np.complex128)
    feature = () if axes is None else tuple(a % value.ndim for a in np.atleast_1d(axes))
    reduce = tuple(a for a in range(value.ndim) if a not in feature)
    return np.sqrt((np.abs(value) ** 2).sum(axis=reduce))


@given(weights_and_axes(allow_zero=False), st.data())
def test_feature_norms_equal_abs_scale(weight_axes, data):
    value, axes = weight_axes
    config = WeightNormConfig(feature_axes=axes)
    flat = {PATH: value}
    (shape,) = scale_shapes(flat, config).values()
    scale = data.draw(hnp.arrays(np.float32, shape, elements=st.floats(-4, 4, width=32)))
    scales = {PATH + "/scale": scale}
    assert_weight_normed(normalize(flat, scales, config), scales, config)


# Factors from 0.1: below, a column of entries near 1e-2 sums to squares near 1e-8, where
# epsilon (1e-12) moves the result by more than float32 rounding (it is not scale-free).
@given(weights_and_axes(allow_zero=False), st.floats(1e-1, 1e3))
def test_invariant_to_positive_rescaling(weight_axes, factor):
    value, axes = weight_axes
    config = WeightNormConfig(feature_axes=axes, use_scale=False)
    a = normalize({PATH: value}, None, config)[PATH]
    b = normalize({PATH: value * np.float32(factor)}, None, config)[PATH]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@given(weights_and_axes(allow_zero=False))
def test_decompose_round_trips(weight_axes):
    value, axes = weight_axes
    config = WeightNormConfig(feature_axes=axes)
    flat = {PATH: value, "layer_instance/bias": np.ones(3, np.float32)}
    scales = decompose(flat, config)
    assert {k: s.shape for k, s in scales.items()} == scale_shapes(flat, config)
    out = normalize(flat, scales, config)
    np.testing.assert_allclose(out[PATH], value, rtol=1e-5, atol=1e-6)
    assert out["layer_instance/bias"] is flat["layer_instance/bias"]


def test_decompose_includes_epsilon():
    config = WeightNormConfig(epsilon=1.0)
    scales = decompose({PATH: jnp.array([[3.0], [4.0]])}, config)
    np.testing.assert_allclose(scales[PATH + "/scale"], [np.sqrt(26.0)])


def test_decompose_needs_scales():
    with pytest.raises(ValueError, match="use_scale=True"):
        decompose({PATH: jnp.ones((2, 2))}, WeightNormConfig(use_scale=False))


def test_complex_weights_use_squared_modulus():
    # flax uses v * v, so its complex "norms" are wrong; ours are |v|.
    value = jnp.array([[1 + 1j, 2j], [3.0, 1 - 2j]], jnp.complex64)
    config = WeightNormConfig(use_scale=False)
    out = normalize({PATH: value}, None, config)[PATH]
    np.testing.assert_allclose(_norms(out, -1), [1.0, 1.0], rtol=1e-6)
    flax_out = flax_normalized(value, None)
    assert not np.allclose(_norms(flax_out, -1), 1.0)


def test_zero_weights_give_finite_values_and_gradients():
    config = WeightNormConfig()
    flat = {PATH: jnp.zeros((3, 4))}
    scales = {PATH + "/scale": jnp.ones(4)}

    def loss(flat, scales):
        return jnp.sum(normalize(flat, scales, config)[PATH] * jnp.arange(12.0).reshape(3, 4))

    value = normalize(flat, scales, config)[PATH]
    grads = jax.grad(loss, argnums=(0, 1))(flat, scales)
    assert np.all(np.isfinite(value))
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    # flax gives the same (huge but finite) gradient: 1 / sqrt(epsilon) per unit.
    np.testing.assert_allclose(grads[0][PATH], 1e6 * np.arange(12.0).reshape(3, 4), rtol=1e-6)


def test_unselected_variables_are_untouched_and_order_kept():
    flat = {"a/bias": jnp.ones(2), "a/kernel": jnp.ones((2, 2)), "b/kernel": jnp.ones((2, 2))}
    config = WeightNormConfig()
    out = normalize(flat, init_scales(flat, config), config)
    assert list(out) == list(flat)
    assert out["a/bias"] is flat["a/bias"]


def test_scale_shapes_sorted_axis_order_and_scalar_for_none():
    flat = {"Conv_0/kernel": jnp.zeros((3, 3, 2, 5)), "Conv_0/bias": jnp.zeros(5)}
    assert scale_shapes(flat, WeightNormConfig(feature_axes=(-1, -2))) == {
        "Conv_0/kernel/scale": (2, 5)
    }
    assert scale_shapes(flat, WeightNormConfig(feature_axes=(-1, 0))) == {
        "Conv_0/kernel/scale": (3, 5)
    }
    assert scale_shapes(flat, WeightNormConfig(feature_axes=None, variable_filter=None)) == {
        "Conv_0/bias/scale": (),
        "Conv_0/kernel/scale": (),
    }
    assert scale_shapes(flat, WeightNormConfig(use_scale=False)) == {}


def test_scale_shapes_accept_shape_dtype_structs():
    flat = {"Dense_0/kernel": jax.ShapeDtypeStruct((4, 7), jnp.float32)}
    assert scale_shapes(flat, WeightNormConfig()) == {"Dense_0/kernel/scale": (7,)}


def test_init_scales_uses_scale_init_param_dtype_and_distinct_keys():
    flat = {"a/kernel": jnp.zeros((2, 3)), "b/kernel": jnp.zeros((2, 3))}
    config = WeightNormConfig(scale_init=jax.nn.initializers.normal(1.0), param_dtype=jnp.bfloat16)
    scales = init_scales(flat, config, jax.random.key(0))
    assert {k: (v.shape, v.dtype) for k, v in scales.items()} == {
        "a/kernel/scale": ((3,), jnp.bfloat16),
        "b/kernel/scale": ((3,), jnp.bfloat16),
    }
    assert not np.array_equal(scales["a/kernel/scale"], scales["b/kernel/scale"])
    assert init_scales(flat, config.replace(use_scale=False), jax.random.key(0)) == {}


def test_init_scales_without_key_for_a_random_init_says_to_pass_one():
    config = WeightNormConfig(scale_init=jax.nn.initializers.normal(1.0))
    with pytest.raises(ValueError, match=r"needs a PRNG key to make 'a/kernel/scale'"):
        init_scales({"a/kernel": jnp.zeros((2, 3))}, config)


def test_init_scales_rejects_wrong_shape_from_scale_init():
    config = WeightNormConfig(scale_init=lambda key, shape, dtype: jnp.ones((1,), dtype))
    with pytest.raises(
        ValueError, match=r"returned shape \(1,\) for 'a/kernel/scale', expected \(3,\)"
    ):
        init_scales({"a/kernel": jnp.zeros((2, 3))}, config, jax.random.key(0))


def test_whether_scale_init_gets_a_key_is_decided_once_never_by_retrying():
    calls = []

    def deterministic(key, shape, dtype):  # a callable that needs no key still gets one
        calls.append(key)
        return jnp.full(shape, 2.0, dtype)

    config = WeightNormConfig(scale_init=deterministic)
    with pytest.raises(ValueError, match=r"needs a PRNG key to make 'a/kernel/scale'"):
        init_scales({"a/kernel": jnp.zeros((2, 3))}, config)
    assert calls == []  # refused before calling, not called and retried
    drawn = []
    init_scales(
        {"a/kernel": jnp.zeros((2, 3))},
        config,
        lambda: drawn.append(1) or jax.random.key(0),  # a key source is drawn from once
    )
    assert len(calls) == 1 and calls[0] is not None and drawn == [1]
    ones = WeightNormConfig(scale_init=jax.nn.initializers.ones)
    never = lambda: pytest.fail("a keyless initializer drew a key")  # noqa: E731
    assert init_scales({"a/kernel": jnp.zeros((2, 3))}, ones, never)["a/kernel/scale"].shape == (3,)


@pytest.mark.parametrize(
    ("flat", "scales", "config", "error", "pattern"),
    [
        (
            {"Dense_0/kernel": jnp.ones((2, 3))},
            {},
            WeightNormConfig(),
            ValueError,
            r"missing \['Dense_0/kernel/scale'\]",
        ),
        (
            {"Dense_0/kernel": jnp.ones((2, 3))},
            {"Dense_0/kernel/scale": jnp.ones(3), "Dense_9/kernel/scale": jnp.ones(3)},
            WeightNormConfig(),
            ValueError,
            r"unexpected \['Dense_9/kernel/scale'\]",
        ),
        (
            {"Dense_0/kernel": jnp.ones((2, 3))},
            {"Dense_0/kernel/scale": jnp.ones(2)},
            WeightNormConfig(),
            ValueError,
            r"'Dense_0/kernel/scale' has shape \(2,\), expected \(3,\)",
        ),
        (
            {"Dense_0/kernel": jnp.ones((2, 3))},
            {"Dense_0/kernel/scale": jnp.ones(3)},
            WeightNormConfig(use_scale=False),
            ValueError,
            "use_scale=False` takes no scales",
        ),
        (
            {"Dense_0/kernel": jnp.ones((2, 3))},
            {},
            WeightNormConfig(feature_axes=2),
            ValueError,
            r"axis 2 is out of range for variable 'Dense_0/kernel' with shape \(2, 3\)",
        ),
        (
            {"Dense_0/kernel": jnp.ones((2, 3))},
            {},
            WeightNormConfig(feature_axes=(1, -1)),
            ValueError,
            r"same axis twice for variable 'Dense_0/kernel'",
        ),
        (
            {"Embed_0/kernel": jnp.ones((2, 3), jnp.int32)},
            {},
            WeightNormConfig(),
            ValueError,
            "'Embed_0/kernel' has dtype int32",
        ),
        ({"a/kernel": jnp.ones((2, 3))}, [1.0], WeightNormConfig(), TypeError, "scales"),
        ({"a/kernel": jnp.ones((2, 3))}, {}, {"epsilon": 1e-12}, TypeError, "WeightNormConfig"),
        ([jnp.ones(3)], {}, WeightNormConfig(), TypeError, "flat dict"),
    ],
)
def test_bad_input_raises_clear_errors(flat, scales, config, error, pattern):
    with pytest.raises(error, match=pattern):
        normalize(flat, scales, config)


def test_init_scales_keeps_errors_unrelated_to_the_key():
    config = WeightNormConfig(scale_init=lambda key, shape, dtype: 1 / 0)
    with pytest.raises(ZeroDivisionError):  # not masked as a missing key, nor retried
        init_scales({"a/kernel": jnp.zeros((2, 3))}, config, jax.random.key(0))


def test_scalar_variable_needs_feature_axes_none():
    with pytest.raises(ValueError, match=r"'a/kernel' is a scalar.*feature_axes=None"):
        scale_shapes({"a/kernel": jnp.float32(2.0)}, WeightNormConfig())
    assert scale_shapes({"a/kernel": jnp.float32(2.0)}, WeightNormConfig(feature_axes=None)) == {
        "a/kernel/scale": ()
    }


def test_float16_is_accumulated_in_float32_where_flax_breaks():
    # In float16 flax's epsilon rounds to 0 (NaN for zero weights) and squares of
    # |v| > 256 overflow (the weight becomes 0). We normalize in float32 and cast back.
    value = jnp.array([[0.0, 300.0], [0.0, -400.0]], jnp.float16)
    scale = jnp.array([1.0, 2.0], jnp.float16)
    config = WeightNormConfig(param_dtype=jnp.float16)
    ours = normalize({PATH: value}, {PATH + "/scale": scale}, config)[PATH]
    assert ours.dtype == jnp.float16
    expected = flax_normalized(value.astype(jnp.float32), scale.astype(jnp.float32))
    np.testing.assert_allclose(ours, np.asarray(expected, np.float16), rtol=1e-3)
    theirs = flax_normalized(value, scale, param_dtype=jnp.float16)
    assert np.isnan(theirs[:, 0]).all() and (theirs[:, 1] == 0).all()

    # The epsilon is at least float16's smallest normal, squared (tests/core/test_precision.py).
    np.testing.assert_allclose(
        decompose({PATH: value}, config)[PATH + "/scale"],
        np.float16([np.finfo(np.float16).tiny, 500.0]),
        rtol=1e-3,
    )


@st.composite
def flat_dicts_and_filters(draw):
    """Several variables under random paths, and a filter made of path fragments."""
    names = draw(
        st.lists(
            st.sampled_from(["kernel", "bias", "w", "scale_x"]), min_size=1, max_size=4, unique=True
        )
    )
    modules = draw(
        st.lists(
            st.sampled_from(["Dense_0", "Conv_1", "kernel_proj"]),
            min_size=1,
            max_size=2,
            unique=True,
        )
    )
    flat = {}
    for module in modules:
        for name in names:
            shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, max_side=4))
            flat[f"{module}/{name}"] = draw(
                hnp.arrays(np.float32, shape, elements=st.floats(0.5, 4, width=32))
            )
    fragments = st.sampled_from(["kernel", "bias", "Dense", "_", "proj", "w"])
    variable_filter = draw(st.none() | st.sets(fragments, max_size=3))
    return flat, variable_filter


@given(flat_dicts_and_filters(), st.data())
def test_selected_variables_are_normalized_and_the_rest_untouched(flat_and_filter, data):
    flat, variable_filter = flat_and_filter
    config = WeightNormConfig(feature_axes=None, variable_filter=variable_filter)
    shapes = scale_shapes(flat, config)
    assert [name.removesuffix("/scale") for name in shapes] == select(flat, variable_filter)
    scales = {name: data.draw(st.floats(0.25, 4, width=32)) for name in shapes}
    out = normalize(flat, {k: np.float32(v) for k, v in scales.items()}, config)
    for path, value in flat.items():
        if path + "/scale" in scales:
            np.testing.assert_allclose(_norms(out[path], None), scales[path + "/scale"], rtol=1e-5)
        else:
            assert out[path] is value
