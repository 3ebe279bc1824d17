"""`stack_axes`: stacked layers each keep their own norm and scale."""

from __future__ import annotations

import equinox as eqx
import flax.linen as nn
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.core.test_normalize import weights_and_axes
from weightnorm.adapters import equinox as weq
from weightnorm.adapters import haiku as whk
from weightnorm.adapters import linen as wln
from weightnorm.core import WeightNormConfig, flatten, normalize, scale_shapes, unflatten

PATH = "stack/kernel"


@given(weights_and_axes(), st.integers(1, 2))
def test_stacked_normalize_is_each_layer_normalized(weight_axes, layers):
    value, axes = weight_axes
    stack = jnp.stack([jnp.asarray(value) * (i + 1) for i in range(layers)])
    stacked = WeightNormConfig(feature_axes=axes, stack_axes=1)
    single = WeightNormConfig(feature_axes=axes)
    (shape,) = scale_shapes({PATH: stack}, stacked).values()
    (layer_shape,) = scale_shapes({PATH: value}, single).values()
    assert shape == (layers, *layer_shape)
    scales = jnp.arange(1.0, 1.0 + np.prod(shape)).reshape(shape)
    out = normalize({PATH: stack}, {PATH + "/scale": scales}, stacked)[PATH]
    for i in range(layers):
        expected = normalize({PATH: stack[i]}, {PATH + "/scale": scales[i]}, single)[PATH]
        np.testing.assert_allclose(out[i], expected, rtol=1e-6, atol=1e-6)


def test_stack_axes_errors_name_the_variable():
    with pytest.raises(ValueError, match=r"'stack/kernel' with shape \(3,\) has fewer than"):
        scale_shapes({PATH: jnp.ones(3)}, WeightNormConfig(stack_axes=2))
    with pytest.raises(ValueError, match=r"no axes left after `stack_axes=1`"):
        scale_shapes({PATH: jnp.ones(3)}, WeightNormConfig(stack_axes=1))
    assert scale_shapes({PATH: jnp.ones(3)}, WeightNormConfig(stack_axes=1, feature_axes=None)) == {
        PATH + "/scale": (3,)
    }
    with pytest.raises(ValueError, match="stack_axes"):
        WeightNormConfig(stack_axes=-1)
    with pytest.raises(TypeError, match="stack_axes"):
        WeightNormConfig(stack_axes=1.5)


def _copy_by_shape(source, like):
    """`like`'s tree filled with `source`'s leaves, matched in order by role and shape."""
    sources = list(flatten(source).values())
    filled = {}
    for path, leaf in flatten(like).items():
        match = next(i for i, s in enumerate(sources) if s.shape == leaf.shape)
        filled[path] = sources.pop(match)
    return unflatten(filled, like=like)


class _Step(nn.Module):
    weight_norm: bool = False

    @nn.compact
    def __call__(self, carry, _):
        dense = nn.Dense(4)
        if self.weight_norm:
            dense = nn.WeightNorm(dense)
        return dense(carry), None


def _scan(weight_norm):
    return nn.scan(_Step, variable_axes={"params": 0}, split_rngs={"params": True}, length=3)(
        weight_norm
    )


def test_linen_wrapping_a_scan_matches_flax_inside_the_scan():
    x = jax.random.normal(jax.random.key(1), (2, 4))
    theirs = _scan(True)
    their_vars = theirs.init(jax.random.key(0), x, None)
    their_vars = jax.tree.map(lambda a: a * 1.5 + 0.1, their_vars)  # scales != 1
    ours = wln.WeightNorm(_scan(False), stack_axes=1)
    our_vars = ours.init(jax.random.key(0), x, None)
    assert our_vars["params"]["layer_instance/Dense_0/kernel/scale"].shape == (3, 4)
    our_vars = _copy_by_shape(their_vars, our_vars)
    np.testing.assert_allclose(
        ours.apply(our_vars, x, None)[0], theirs.apply(their_vars, x, None)[0], rtol=1e-6
    )


def test_haiku_wrapping_a_layer_stack_needs_no_stack_axes():
    # `hk.layer_stack` reads each layer's parameters inside its loop, so the
    # wrapper's getter sees one layer at a time and Haiku stacks the scales.
    def inside(x):
        stack = hk.layer_stack(3)(lambda h: whk.WeightNorm(hk.Linear(4))(h))
        return stack(x)

    def outside(x):
        stack = hk.layer_stack(3)(lambda h: hk.Linear(4)(h))
        return whk.WeightNorm(stack)(x)

    x = jax.random.normal(jax.random.key(1), (2, 4))
    inside, outside = hk.transform(inside), hk.transform(outside)
    inside_params = jax.tree.map(lambda a: a * 1.5 + 0.1, inside.init(jax.random.key(0), x))
    outside_params = outside.init(jax.random.key(0), x)
    scales = [a for p, a in flatten(outside_params).items() if p.endswith("/scale")]
    assert [s.shape for s in scales] == [(3, 4)]
    outside_params = _copy_by_shape(inside_params, outside_params)
    np.testing.assert_allclose(
        outside.apply(outside_params, None, x), inside.apply(inside_params, None, x), rtol=1e-6
    )


def test_equinox_filter_vmap_stack_keeps_a_norm_per_layer():
    keys = jax.random.split(jax.random.key(0), 3)
    stack = eqx.filter_vmap(lambda key: eqx.nn.Linear(4, 5, key=key))(keys)
    wrapped = weq.WeightNorm(stack, stack_axes=1)
    assert wrapped.scales["weight/scale"].shape == (3, 5)
    normalized = wrapped.normalized_layer().weight
    norms = np.linalg.norm(np.asarray(normalized), axis=2)  # Equinox's (out, in) per layer
    np.testing.assert_allclose(norms, np.ones((3, 5)), rtol=1e-5)
    for i in range(3):
        single = weq.WeightNorm(jax.tree.map(lambda a, i=i: a[i], stack))
        np.testing.assert_allclose(normalized[i], single.normalized_layer().weight, rtol=1e-6)
