"""Tests of the Haiku adapter, checked against flax.linen.WeightNorm and plain Haiku."""

from __future__ import annotations

import flax.linen as nn
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weightnorm.adapters.haiku import WeightNorm, flatten, unflatten

KEY = jax.random.key(0)
_FLAX_TO_HAIKU = {"kernel": "w", "bias": "b"}


def shapes(tree):
    return jax.tree.map(lambda x: x.shape, tree)


def wrapped(make_module, **kwargs):
    """`hk.transform` of `WeightNorm(make_module(), **kwargs)`."""
    return hk.transform(lambda *a, **kw: WeightNorm(make_module(), **kwargs)(*a, **kw))


def normal(shape, seed=1):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def random_params(model, *args, seed=0):
    """Params of a Haiku transform with every leaf, scales included, random normal.

    Shapes come from `jax.eval_shape` and values from numpy, so nothing compiles.
    """
    like = jax.eval_shape(model.init, KEY, *args)
    leaves, treedef = jax.tree.flatten(like)
    return treedef.unflatten([normal(x.shape, seed + i) for i, x in enumerate(leaves)])


def flax_variables(flax_model, x, haiku_params, name):
    """Variables of a `flax.linen.WeightNorm` holding the Haiku model's numbers."""
    like = jax.eval_shape(flax_model.init, KEY, x)

    def haiku_key(flax_key):
        parts = flax_key.removeprefix("params/").split("/")
        key = "/".join(name if p == "layer_instance" else _FLAX_TO_HAIKU.get(p, p) for p in parts)
        return "weight_norm/" + key if key.endswith("/scale") else key

    flat = flatten(haiku_params)
    return unflatten({k: flat[haiku_key(k)] for k in flatten(like)}, like=like)


def test_params_tree_matches_spec():
    params = wrapped(lambda: hk.Linear(4)).init(KEY, jnp.ones((1, 3)))
    assert shapes(params) == {
        "linear": {"w": (3, 4), "b": (4,)},
        "weight_norm": {"linear/w/scale": (4,)},
    }


def test_plain_checkpoint_loads_into_wrapped_module():
    x = normal((2, 3))
    plain = hk.transform(lambda x: hk.Linear(4)(x)).init(KEY, x)
    model = wrapped(lambda: hk.Linear(4))
    params = model.init(KEY, x)
    assert shapes({k: v for k, v in params.items() if k != "weight_norm"}) == shapes(plain)
    loaded = {**plain, "weight_norm": params["weight_norm"]}
    flax_model = nn.WeightNorm(nn.Dense(4))
    expected = flax_model.apply(flax_variables(flax_model, x, loaded, "linear"), x)
    np.testing.assert_array_equal(model.apply(loaded, None, x), expected)


DENSE = (lambda: hk.Linear(4), lambda **kw: nn.WeightNorm(nn.Dense(4), **kw), (2, 3))


def conv(padding):
    return (
        lambda: hk.Conv2D(4, 3, padding=padding),
        lambda **kw: nn.WeightNorm(nn.Conv(4, (3, 3), padding=padding), **kw),
        (2, 6, 6, 3),
    )


def same(**kwargs):
    return kwargs, kwargs


@pytest.mark.parametrize(
    "case, kwargs",
    [
        pytest.param(DENSE, same(), id="dense"),
        pytest.param(conv("VALID"), same(), id="conv-valid"),
        pytest.param(conv("SAME"), same(), id="conv-same"),
        pytest.param(conv("SAME"), same(feature_axes=(-2, -1)), id="conv-2axes"),
        pytest.param(DENSE, same(feature_axes=None), id="axes-none"),
        pytest.param(DENSE, same(feature_axes=(-2, -1)), id="2axes"),
        pytest.param(DENSE, same(use_scale=False), id="no-scale"),
        pytest.param(DENSE, same(epsilon=0.5), id="epsilon"),
        pytest.param(DENSE, same(variable_filter=None), id="filter-none"),
        pytest.param(
            DENSE, ({"variable_filter": {"b"}}, {"variable_filter": {"bias"}}), id="filter-b"
        ),
    ],
)
def test_matches_flax_weight_norm(case, kwargs):
    (make_haiku, make_flax, x_shape), (haiku_kwargs, flax_kwargs) = case, kwargs
    x = normal(x_shape)
    model = wrapped(make_haiku, **haiku_kwargs)
    params = random_params(model, x)
    flax_model = make_flax(**flax_kwargs)
    name = next(k for k in params if k != "weight_norm")
    expected = flax_model.apply(flax_variables(flax_model, x, params, name), x)
    np.testing.assert_array_equal(model.apply(params, None, x), expected)


def test_default_filter_is_the_exact_name_w():
    params = jax.eval_shape(wrapped(lambda: hk.Linear(3, name="wide")).init, KEY, jnp.ones((1, 2)))
    assert list(params["weight_norm"]) == ["wide/w/scale"]
    assert shapes(params["wide"]) == {"w": (2, 3), "b": (3,)}


def test_default_config_is_hashable_and_equal():
    def make():
        return WeightNorm(hk.Linear(1)).config

    first, second = hk.transform(lambda: (make(), make())).apply({}, None)
    assert first == second and hash(first) == hash(second)


def test_mlp_gets_one_scale_per_linear():
    params = jax.eval_shape(wrapped(lambda: hk.nets.MLP([5, 3])).init, KEY, jnp.ones((1, 2)))
    assert shapes(params["weight_norm"]) == {
        "mlp/~/linear_0/w/scale": (5,),
        "mlp/~/linear_1/w/scale": (3,),
    }


class Block(hk.Module):
    def __call__(self, x, is_training, linear=True):
        h = hk.Linear(4)(x) if linear else x
        return h, hk.BatchNorm(True, True, decay_rate=0.9)(h, is_training=is_training)


def test_state_passes_through_and_updates():
    # variable_filter=None: state read through the getter would be normalized
    # (and its int counter rejected), so equality with plain Haiku shows it is not.
    model = hk.transform_with_state(
        lambda x: WeightNorm(Block(), variable_filter=None)(x, is_training=True)
    )
    bn = hk.transform_with_state(lambda h: Block()(h, is_training=True, linear=False))
    x = normal((8, 3))
    params, state = model.init(KEY, x)
    (h, _), new_state = model.apply(params, state, None, x)
    bn_params, bn_state = bn.init(KEY, h)
    _, expected = bn.apply(bn_params, bn_state, None, h)
    assert jax.tree.structure(new_state) == jax.tree.structure(expected)
    jax.tree.map(np.testing.assert_array_equal, new_state, expected)
    assert not np.array_equal(new_state["block/batch_norm/~/mean_ema"]["average"], 0)


@pytest.mark.parametrize("zero_w", [False, True])
def test_jit_and_grad_reach_every_param(zero_w):
    model = wrapped(lambda: hk.Linear(4))
    x = normal((2, 3))
    params = random_params(model, x)
    if zero_w:
        params["linear"]["w"] = jnp.zeros((3, 4))
    loss = jax.jit(lambda p: jnp.sum(model.apply(p, None, x) ** 2))
    assert np.isfinite(loss(params))
    grads = jax.jit(jax.grad(loss))(params)
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    for path, grad in flatten(grads).items():
        assert np.isfinite(grad).all(), path
        assert zero_w or np.any(grad != 0), path


def test_module_called_twice_shares_one_scale():
    x = normal((2, 3))

    def twice(x):
        layer = WeightNorm(hk.Linear(3))
        return layer(layer(x))

    model = hk.transform(twice)
    params = random_params(model, x)
    assert list(params["weight_norm"]) == ["linear/w/scale"]
    once = wrapped(lambda: hk.Linear(3))
    expected = once.apply(params, None, once.apply(params, None, x))
    np.testing.assert_array_equal(model.apply(params, None, x), expected)


def test_feature_axis_out_of_range_names_the_path():
    with pytest.raises(ValueError, match="'linear/w'"):
        wrapped(lambda: hk.Linear(4), feature_axes=2).init(KEY, jnp.ones((1, 3)))


def test_module_must_be_callable():
    with pytest.raises(TypeError, match="must be a Haiku module"):
        hk.transform(lambda: WeightNorm("linear")).init(KEY)


def test_flatten_unflatten_round_trip():
    params = random_params(wrapped(lambda: hk.nets.MLP([5, 3])), jnp.ones((1, 2)))
    flat = flatten(params)
    assert flat["mlp/~/linear_0/w"] is params["mlp/~/linear_0"]["w"]
    assert "weight_norm/mlp/~/linear_1/w/scale" in flat
    back = unflatten(flat, like=params)
    assert jax.tree.structure(back) == jax.tree.structure(params)
    assert all(a is b for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params), strict=True))


@settings(max_examples=20, deadline=None)
@given(
    n_in=st.integers(1, 6),
    n_out=st.integers(1, 6),
    c=st.floats(1e-2, 1e2),
    seed=st.integers(0, 2**16),
)
def test_invariant_to_rescaling_w(n_in, n_out, c, seed):
    model = wrapped(lambda: hk.Linear(n_out))
    x = normal((2, n_in), seed)
    params = random_params(model, x, seed=seed)
    scaled = {**params, "linear": {**params["linear"], "w": c * params["linear"]["w"]}}
    np.testing.assert_allclose(
        model.apply(scaled, None, x), model.apply(params, None, x), rtol=1e-5, atol=1e-5
    )


def test_deterministic_scale_init_leaves_the_rng_sequence_alone():
    def body():
        return hk.Sequential([hk.Linear(4), jax.nn.relu, hk.Linear(3)])

    x = jnp.ones((1, 2))
    plain = hk.transform(lambda x: body()(x)).init(KEY, x)
    params = wrapped(body).init(KEY, x)
    assert sorted(params.pop("weight_norm")) == ["linear/w/scale", "linear_1/w/scale"]
    np.testing.assert_equal(jax.device_get(params), jax.device_get(plain))
    # No randomness needed at all: init works without a key, as plain Haiku does.
    constant = hk.initializers.Constant(0.5)
    model = wrapped(lambda: hk.Linear(3, w_init=constant))
    assert model.init(None, x)["weight_norm"]["linear/w/scale"].shape == (3,)


def test_random_scale_init_takes_a_key():
    model = wrapped(lambda: hk.Linear(3), scale_init=jax.nn.initializers.normal(1.0))
    scale = model.init(KEY, jnp.ones((1, 2)))["weight_norm"]["linear/w/scale"]
    assert np.unique(np.asarray(scale)).size == 3


def test_transposed_convolution_wants_feature_axes_minus_two():
    # Haiku's transposed convolutions store w as (kh, kw, out, in).
    x = jnp.ones((1, 4, 4, 2))
    conv = lambda: hk.Conv2DTranspose(5, 3)  # noqa: E731
    default = wrapped(conv).init(KEY, x)["weight_norm"]
    per_output = wrapped(conv, feature_axes=-2).init(KEY, x)["weight_norm"]
    assert default["conv2_d_transpose/w/scale"].shape == (2,)
    assert per_output["conv2_d_transpose/w/scale"].shape == (5,)
