"""Equinox adapter tests, against eqx.nn.WeightNorm, flax.linen.WeightNorm and bare layers."""

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weightnorm import PathFilter, core
from weightnorm.adapters.equinox import WeightNorm, affine_weights, flatten, unflatten


def key(seed):
    return jax.random.key(seed)


def normal(seed, *shape):
    """Inputs from numpy: no XLA compile per shape, which dominates these tests' run time."""
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def decomposed(model):
    """`model` with scales equal to its weights' norms: it computes what its bare layer does."""
    scales = core.decompose(flatten(model.layer), model.config)
    return eqx.tree_at(lambda m: m.scales, model, scales)


def loss(model, x):
    return jnp.sum(jnp.sin(model(x)))


def assert_close(actual, desired, rtol=1e-6, atol=1e-6):
    jax.tree.map(
        lambda a, d: np.testing.assert_allclose(a, d, rtol=rtol, atol=atol), actual, desired
    )


class DropLinear(eqx.nn.Linear):
    """A Linear that needs a key: dropout on its output."""

    dropout: eqx.nn.Dropout

    def __init__(self, in_features, out_features, *, key):
        super().__init__(in_features, out_features, key=key)
        self.dropout = eqx.nn.Dropout(0.5)

    def __call__(self, x, *, key):
        return self.dropout(super().__call__(x), key=key)


class LinearBN(eqx.Module):
    """A stateful model: Linear then BatchNorm, called as `(x, state)`."""

    linear: eqx.nn.Linear
    norm: eqx.nn.BatchNorm

    def __init__(self, *, key):
        self.linear = eqx.nn.Linear(5, 4, key=key)
        self.norm = eqx.nn.BatchNorm(4, "batch", mode="batch")

    def __call__(self, x, state):
        return self.norm(self.linear(x), state)


class Mixed(eqx.Module):
    """Every affine layer kind next to layers whose weights are not normalized."""

    embed: eqx.nn.Embedding
    norm: eqx.nn.LayerNorm
    conv: eqx.nn.Conv1d
    deconv: eqx.nn.ConvTranspose2d
    heads: list

    def __init__(self, key):
        k = jax.random.split(key, 5)
        self.embed = eqx.nn.Embedding(10, 4, key=k[0])
        self.norm = eqx.nn.LayerNorm(4)
        self.conv = eqx.nn.Conv1d(4, 6, 3, key=k[1])
        self.deconv = eqx.nn.ConvTranspose2d(2, 5, 3, key=k[2])
        self.heads = [eqx.nn.Linear(6, 2, key=k[3]), DropLinear(6, 3, key=k[4])]


def linear(k):
    return eqx.nn.Linear(5, 4, key=k)


def mlp(k):
    return eqx.nn.MLP(5, 2, width_size=4, depth=2, key=k)


def shapes(make, **kwargs):
    """Scale shapes of `WeightNorm(make(key), **kwargs)`, traced abstractly (no compiles)."""
    model = eqx.filter_eval_shape(lambda k: WeightNorm(make(k), **kwargs), key(0))
    return {name: scale.shape for name, scale in model.scales.items()}


@eqx.filter_jit
def outputs_and_grads(model, x):
    return model(x), eqx.filter_grad(loss)(model, x)


@pytest.mark.parametrize(
    "make, x_shape, axis",
    [
        (linear, (5,), 0),
        (linear, (5,), None),
        (lambda k: eqx.nn.Conv2d(3, 4, kernel_size=3, key=k), (3, 6, 6), 0),
        (lambda k: eqx.nn.ConvTranspose1d(3, 2, kernel_size=3, key=k), (3, 6), 0),
    ],
    ids=["linear", "linear-axis-None", "conv2d", "conv-transpose1d"],
)
def test_matches_equinox_weightnorm(make, x_shape, axis):
    layer = make(key(1))
    theirs = eqx.nn.WeightNorm(layer, axis=axis)
    ours = WeightNorm(layer, feature_axes=axis)
    shape = ours.scales["weight/scale"].shape
    assert shape == (() if axis is None else (layer.weight.shape[0],))
    ours = eqx.tree_at(lambda m: m.scales, ours, {"weight/scale": theirs.g.reshape(shape)})
    x = normal(1, *x_shape)
    (y, grads), (their_y, their_grads) = outputs_and_grads(ours, x), outputs_and_grads(theirs, x)
    assert_close(y, their_y)
    assert_close(grads.layer.weight, their_grads.layer.weight, rtol=1e-5)
    assert_close(grads.scales["weight/scale"], their_grads.g.reshape(shape), rtol=1e-5)


def test_matches_flax_linen_weightnorm():
    layer = linear(key(2))
    scale = jnp.asarray([0.5, 1.0, 2.0, 3.0])
    ours = eqx.tree_at(lambda m: m.scales, WeightNorm(layer), {"weight/scale": scale})
    params = {
        "layer_instance": {"kernel": layer.weight.T, "bias": layer.bias},
        "layer_instance/kernel/scale": scale,
    }
    x = normal(2, 7, 5)
    expected = nn.WeightNorm(nn.Dense(4)).apply({"params": params}, x)
    assert_close(jax.vmap(ours)(x), expected)


def test_default_filter_selects_affine_weights_only():
    assert shapes(lambda k: eqx.nn.MLP(3, 2, width_size=8, depth=2, key=k)) == {
        "layers/0/weight/scale": (8,),
        "layers/1/weight/scale": (8,),
        "layers/2/weight/scale": (2,),
    }
    assert shapes(Mixed) == {
        "conv/weight/scale": (6,),
        "deconv/weight/scale": (5,),
        "heads/0/weight/scale": (2,),
        "heads/1/weight/scale": (3,),
    }
    assert set(shapes(mlp, variable_filter="bias")) == {f"layers/{i}/bias/scale" for i in range(3)}
    assert shapes(mlp, variable_filter=lambda path: path.startswith("layers/2/")) == {
        "layers/2/weight/scale": (2,),
        "layers/2/bias/scale": (2,),
    }
    every = shapes(Mixed, variable_filter=None)
    assert {"embed/weight/scale", "norm/weight/scale", "conv/bias/scale"} < set(every)
    assert len(every) == 11


def test_two_identical_wrappers_are_equal_and_trace_once():
    a, b = WeightNorm(mlp(key(0))), WeightNorm(mlp(key(0)))
    assert eqx.tree_equal(a, b)
    assert a.config.variable_filter == PathFilter(frozenset(f"layers/{i}/weight" for i in range(3)))
    assert not eqx.tree_equal(eqx.nn.WeightNorm(linear(key(0))), eqx.nn.WeightNorm(linear(key(0))))

    traces = 0

    @eqx.filter_jit
    def call(model, x):
        nonlocal traces
        traces += 1
        return model(x)

    call(a, jnp.ones(5))
    call(b, jnp.ones(5))
    assert traces == 1


def test_zero_weight_gives_finite_outputs_and_gradients():
    layer = eqx.tree_at(lambda m: m.weight, linear(key(0)), jnp.zeros((4, 5)))
    x = jnp.ones(5)
    assert not np.isfinite(eqx.nn.WeightNorm(layer)(x)).all()
    y, grads = outputs_and_grads(WeightNorm(layer), x)
    assert_close(y, layer(x))
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(grads))
    assert np.abs(grads.layer.weight).sum() > 0


def test_forwards_key():
    layer = DropLinear(5, 4, key=key(3))
    x = jnp.ones(5)
    with pytest.raises(TypeError, match="key"):
        eqx.nn.WeightNorm(layer)(x, key=key(4))
    model = decomposed(WeightNorm(layer))
    assert set(model.scales) == {"weight/scale"}
    assert_close(model(x, key=key(4)), layer(x, key=key(4)))
    assert not np.allclose(model(x, key=key(4)), model(x, key=key(5)))


@pytest.mark.parametrize(
    "kwargs, normalized",
    [
        ({}, {"linear/weight"}),
        # Every float array, but not BatchNorm's initial running stats (state).
        ({"variable_filter": None}, {"linear/weight", "linear/bias", "norm/weight", "norm/bias"}),
    ],
)
def test_passes_state_through(kwargs, normalized):
    model, state = eqx.nn.make_with_state(WeightNorm)(LinearBN(key=key(6)), **kwargs)
    bare, bare_state = eqx.nn.make_with_state(LinearBN)(key=key(6))
    assert set(model.scales) == {f"{path}/scale" for path in normalized}
    model = decomposed(model)
    x = normal(6, 7, 5)

    def batched(m, s):
        return eqx.filter_vmap(m, in_axes=(0, None), out_axes=(0, None), axis_name="batch")(x, s)

    (y, new_state), (bare_y, new_bare_state) = batched(model, state), batched(bare, bare_state)
    assert_close(y, bare_y, rtol=1e-5, atol=1e-5)
    # make_with_state names the state entries after the outermost class.
    assert_close(jax.tree.leaves(new_state), jax.tree.leaves(new_bare_state), rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError):
        eqx.nn.WeightNorm(bare.norm)(x[0], bare_state)


def test_transforms_and_serialisation(tmp_path):
    bare = mlp(key(7))
    model = decomposed(WeightNorm(bare))
    xs = normal(7, 6, 5)
    assert_close(eqx.filter_jit(model)(xs[0]), bare(xs[0]), rtol=1e-5)
    assert_close(eqx.filter_vmap(model)(xs), jax.vmap(bare)(xs), rtol=1e-5)

    grads = eqx.filter_jit(eqx.filter_grad(lambda m: jnp.sum(jax.vmap(m)(xs) ** 2)))(model)
    assert set(grads.scales) == set(model.scales)
    for leaf in [*grads.scales.values(), *(layer.weight for layer in grads.layer.layers)]:
        assert np.isfinite(leaf).all() and np.abs(leaf).sum() > 0

    path = tmp_path / "model.eqx"
    eqx.tree_serialise_leaves(path, model)
    assert eqx.tree_equal(eqx.tree_deserialise_leaves(path, WeightNorm(mlp(key(8)))), model)


def test_flatten_unflatten_round_trip():
    a, b = mlp(key(9)), mlp(key(10))
    flat = flatten(a)
    assert list(flat) == [f"layers/{i}/{name}" for i in range(3) for name in ("weight", "bias")]
    assert eqx.tree_equal(unflatten(flat, like=b), a)
    wrapped_a, wrapped_b = decomposed(WeightNorm(a)), WeightNorm(b)
    flat = flatten(wrapped_a)
    assert "scales/layers/0/weight/scale" in flat
    assert eqx.tree_equal(unflatten(flat, like=wrapped_b), wrapped_a)
    del flat["layer/layers/0/bias"]
    with pytest.raises(ValueError, match="layer/layers/0/bias"):
        unflatten(flat, like=wrapped_b)


def test_feature_axes_out_of_range_names_path_and_shape():
    with pytest.raises(ValueError, match=r"'weight' with shape \(4, 5\)"):
        WeightNorm(linear(key(0)), feature_axes=2)


def test_affine_weights_of_a_bare_layer():
    conv = eqx.filter_eval_shape(eqx.nn.Conv2d, 1, 2, 3, key=key(0))
    assert (
        affine_weights(conv) == affine_weights(linear(key(0))) == PathFilter(frozenset({"weight"}))
    )


@eqx.filter_jit
def rescaled_and_bare_outputs(layer, factor, x):
    model = decomposed(WeightNorm(layer))
    rescaled = eqx.tree_at(lambda m: m.layer.weight, model, layer.weight * factor)
    return rescaled(x), layer(x)


@settings(max_examples=20, deadline=None)
@given(
    in_size=st.integers(1, 6),
    out_size=st.integers(1, 6),
    log_factor=st.floats(-4.0, 4.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_positive_rescaling_of_the_weight_leaves_outputs_unchanged(
    in_size, out_size, log_factor, seed
):
    # Weights from numpy into an abstract Linear: no XLA compile of the initializer per shape.
    layer = eqx.filter_eval_shape(eqx.nn.Linear, in_size, out_size, key=key(0))
    weight, bias = normal(seed, out_size, in_size), normal(seed + 1, out_size)
    layer = eqx.tree_at(lambda m: (m.weight, m.bias), layer, (weight, bias))
    factor = jnp.exp(log_factor + np.random.default_rng(seed).uniform(-1, 1, size=(out_size, 1)))
    y, bare_y = rescaled_and_bare_outputs(layer, factor, normal(seed + 2, in_size))
    assert_close(y, bare_y, rtol=1e-5)


def test_wrappers_built_with_fresh_initializer_closures_are_equal():
    def build():
        return WeightNorm(linear(key(0)), scale_init=jax.nn.initializers.normal(1.0), key=key(1))

    a, b = build(), build()
    assert eqx.tree_equal(a, b)
    assert hash(a.config) == hash(b.config)
    with pytest.raises(RuntimeError, match="made its scales at construction"):
        core.init_scales(flatten(a.layer), a.config, key(2))


def test_several_feature_axes_where_equinox_takes_one():
    conv = eqx.nn.Conv2d(2, 3, kernel_size=3, key=key(0))
    with pytest.raises(ValueError):
        eqx.nn.WeightNorm(conv, axis=(0, 1))
    model = WeightNorm(conv, feature_axes=(0, 1))
    assert model.scales["weight/scale"].shape == (3, 2)
    weight = model.normalized_layer().weight
    np.testing.assert_allclose(
        jnp.sqrt(jnp.sum(weight**2, axis=(2, 3))), jnp.ones((3, 2)), rtol=1e-5
    )
