"""Scale inits, fold/unfold and data-dependent init in every adapter, against the plain models."""

from __future__ import annotations

import warnings

import equinox as eqx
import flax.linen as nn
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from hypothesis import given
from hypothesis import strategies as st

from weightnorm import NoVariableSelectedWarning
from weightnorm.adapters import equinox as we
from weightnorm.adapters import haiku as wh
from weightnorm.adapters import linen as wl
from weightnorm.adapters import nnx as wn
from weightnorm.testing import (
    assert_params_equal,
    assert_same_function,
    assert_trees_close,
    float_arrays,
)

X = jax.random.normal(jax.random.key(0), (64, 4)) * 2.0 + 1.0
W = jax.random.normal(jax.random.key(1), (4, 3))


def _moments_are_standard(preactivations):
    assert_trees_close(preactivations.mean(0), jnp.zeros(preactivations.shape[-1]), atol=1e-4)
    assert_trees_close(preactivations.std(0), jnp.ones(preactivations.shape[-1]), rtol=1e-4)


# --- "norm": wrapping leaves the function unchanged, as in torch and equinox ---------------


def test_linen_norm_init_is_the_plain_layer_and_torch_weight_norm():
    dense = nn.Dense(3, kernel_init=lambda *_: W)
    wrapped = wl.WeightNorm(dense, scale_init="norm")
    variables = wrapped.init(jax.random.key(2), X)
    plain = dense.init(jax.random.key(2), X)
    assert_same_function(lambda x: wrapped.apply(variables, x), lambda x: dense.apply(plain, x), X)
    linear = torch.nn.Linear(4, 3)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(np.array(W.T)))
        linear.bias.zero_()
    linear = torch.nn.utils.parametrizations.weight_norm(linear)
    with torch.no_grad():
        expected = linear(torch.from_numpy(np.array(X))).numpy()
    assert_trees_close(wrapped.apply(variables, X), expected)


def test_haiku_norm_init_is_the_plain_module():
    wrapped = hk.transform(lambda x: wh.WeightNorm(hk.Linear(3), scale_init="norm")(x))
    plain = hk.transform(lambda x: hk.Linear(3)(x))
    params, plain_params = wrapped.init(jax.random.key(2), X), plain.init(jax.random.key(2), X)
    assert_trees_close(params["linear"], plain_params["linear"])  # same rng sequence
    assert_same_function(
        lambda x: wrapped.apply(params, None, x), lambda x: plain.apply(plain_params, None, x), X
    )


def test_equinox_norm_init_is_the_plain_layer_and_equinox_weight_norm():
    linear = eqx.nn.Linear(4, 3, key=jax.random.key(2))
    ours = we.WeightNorm(linear, scale_init="norm")
    assert_same_function(jax.vmap(ours), jax.vmap(linear), X)
    assert_same_function(jax.vmap(ours), jax.vmap(eqx.nn.WeightNorm(linear)), X)
    assert_trees_close(ours.scales["weight/scale"], eqx.nn.WeightNorm(linear).g.reshape(-1))


def _torch_weight_norm_of(kernel, x):
    """torch's `weight_norm` of a bias-free Linear holding `kernel` (in, out), applied to `x`."""
    linear = torch.nn.Linear(*kernel.shape, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(np.array(kernel.T)))
    linear = torch.nn.utils.parametrizations.weight_norm(linear)
    with torch.no_grad():
        return linear(torch.from_numpy(np.array(x))).numpy()


@given(float_arrays((4, 3), min_value=-2, max_value=2))
def test_nnx_norm_init_is_the_plain_layer_and_torch_weight_norm(kernel):
    kernel = jnp.asarray(kernel)  # zero columns included: their scale is sqrt(epsilon)
    make = lambda: nnx.Linear(  # noqa: E731
        4, 3, use_bias=False, kernel_init=lambda *_: kernel, rngs=nnx.Rngs(0)
    )
    ours = wn.WeightNorm(make(), scale_init="norm")
    assert_same_function(ours, make(), X)
    # torch has no epsilon: a column whose squares underflow to 0 gives NaN there (and 0,
    # the plain layer's output, here), so compare the others.
    nonzero = np.linalg.norm(np.asarray(kernel, np.float64), axis=0) > 1e-3
    assert_trees_close(ours(X)[:, nonzero], _torch_weight_norm_of(kernel, X)[:, nonzero])
    assert_params_equal(ours.layer_instance.kernel[...], kernel)  # the direction is the weight


def test_nnx_default_and_ones_are_flax_nnx_default():
    theirs = nnx.WeightNorm(nnx.Linear(4, 3, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(0))
    for scale_init in ({}, {"scale_init": "ones"}):
        ours = wn.WeightNorm(nnx.Linear(4, 3, rngs=nnx.Rngs(0)), **scale_init)
        assert_trees_close(ours.scales["kernel/scale"][...], theirs.scales[("kernel",)])
        assert_same_function(ours, theirs, X)  # flax's first call is right


# --- fold and unfold against the plain models ---------------------------------------------

LINEN_LAYERS = {
    "dense": (lambda: nn.Dense(3), X),
    "conv": (lambda: nn.Conv(3, (2,)), X.reshape(8, 8, 4)[:2]),
}


@given(st.sampled_from(sorted(LINEN_LAYERS)), float_arrays(3, min_value=-2, max_value=2))
def test_linen_fold_gives_plain_variables_and_unfold_goes_back(name, scale):
    make, x = LINEN_LAYERS[name]
    model = wl.WeightNorm(make())
    variables = model.init(jax.random.key(3), x)
    variables["params"]["layer_instance/kernel/scale"] = jnp.asarray(scale)
    plain = wl.fold(model, variables)
    assert sorted(plain["params"]) == ["bias", "kernel"]
    assert_same_function(lambda x: model.apply(variables, x), lambda x: make().apply(plain, x), x)
    assert_same_function(
        lambda x: model.apply(wl.unfold(model, plain), x), lambda x: make().apply(plain, x), x
    )


def test_linen_fold_carries_other_collections():
    class Block(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.BatchNorm(use_running_average=True)(nn.Dense(3)(x))

    model = wl.WeightNorm(Block())
    variables = model.init(jax.random.key(0), X)
    plain = wl.fold(model, variables)
    assert set(plain) == {"params", "batch_stats"}
    assert_same_function(lambda x: model.apply(variables, x), lambda x: Block().apply(plain, x), X)


@given(float_arrays(3, min_value=-2, max_value=2))
def test_haiku_fold_gives_plain_params_and_unfold_goes_back(scale):
    wrapped = hk.transform(lambda x: wh.WeightNorm(hk.nets.MLP([5, 3]))(x))
    plain = hk.transform(lambda x: hk.nets.MLP([5, 3])(x))
    params = wrapped.init(jax.random.key(3), X)
    params["weight_norm"]["mlp/~/linear_1/w/scale"] = jnp.asarray(scale)
    folded = wh.fold(params)
    assert_trees_close(
        jax.tree.map(jnp.shape, folded), jax.tree.map(jnp.shape, plain.init(jax.random.key(0), X))
    )
    assert_same_function(
        lambda x: wrapped.apply(params, None, x), lambda x: plain.apply(folded, None, x), X
    )
    assert_same_function(
        lambda x: wrapped.apply(wh.unfold(folded), None, x),
        lambda x: plain.apply(folded, None, x),
        X,
    )


@given(float_arrays(5, min_value=-2, max_value=2))
def test_equinox_fold_gives_plain_modules_and_unfold_goes_back(scale):
    mlp = eqx.nn.MLP(4, 3, width_size=5, depth=1, key=jax.random.key(3))

    class Head(eqx.Module):  # wrappers inside a bigger model fold too
        body: we.WeightNorm
        out: eqx.nn.Linear

        def __call__(self, x):
            return self.out(self.body(x))

    model = Head(we.WeightNorm(mlp), eqx.nn.Linear(3, 2, key=jax.random.key(4)))
    model = eqx.tree_at(lambda m: m.body.scales["layers/0/weight/scale"], model, jnp.asarray(scale))
    plain = we.fold(model)
    assert isinstance(plain.body, eqx.nn.MLP)
    assert_same_function(jax.vmap(model), jax.vmap(plain), X)
    assert_same_function(jax.vmap(we.unfold(plain.body)), jax.vmap(plain.body), X)
    assert_trees_close(we.fold(model.body), model.body.normalized_layer())


class _NNXHead(nnx.Module):
    """A wrapped MLP, a wrapper in an nnx.List, and a plain layer: wrappers inside a model."""

    def __init__(self, body, blocks, out):
        self.body, self.blocks, self.out = body, nnx.List(blocks), out

    def __call__(self, x):
        for block in self.blocks:
            x = block(x)
        return self.out(jax.nn.relu(self.body(x)))


def _nnx_head(wrap):
    mlp = nnx.Sequential(
        nnx.Linear(4, 5, rngs=nnx.Rngs(1)), nnx.relu, nnx.Linear(5, 3, rngs=nnx.Rngs(2))
    )
    block = nnx.Conv(4, 4, (1,), rngs=nnx.Rngs(3))
    return _NNXHead(wrap(mlp), [wrap(block)], nnx.Linear(3, 2, rngs=nnx.Rngs(4)))


@given(float_arrays(5, min_value=-2, max_value=2), float_arrays(4, min_value=-2, max_value=2))
def test_nnx_fold_gives_plain_modules_and_unfold_goes_back(scale, block_scale):
    model = _nnx_head(wn.WeightNorm)
    model.body.scales["layers/0/kernel/scale"][...] = jnp.asarray(scale)
    model.blocks[0].scales["kernel/scale"][...] = jnp.asarray(block_scale)
    before = wn.flatten(model)
    plain = wn.fold(model)
    assert_params_equal(wn.flatten(model), before)  # the input is not changed
    # The plain model is the same model written without wrappers, holding the folded weights.
    expected = _nnx_head(lambda layer: layer)
    assert jax.tree.map(jnp.shape, wn.flatten(plain)) == jax.tree.map(
        jnp.shape, wn.flatten(expected)
    )
    assert_same_function(model, plain, X)
    assert_same_function(wn.unfold(plain.body), plain.body, X)
    assert_params_equal(wn.flatten(wn.fold(model.body)), wn.flatten(model.body.normalized_layer()))


def test_nnx_fold_is_the_weight_flax_nnx_writes_into_its_layer():
    x, scale_init = X[:5], nnx.initializers.constant(2.5)
    theirs = nnx.WeightNorm(
        nnx.Linear(4, 3, rngs=nnx.Rngs(0)), scale_init=scale_init, rngs=nnx.Rngs(0)
    )
    theirs(x)  # flax stores scale * v / ||v|| in the layer at its first call
    ours = wn.WeightNorm(nnx.Linear(4, 3, rngs=nnx.Rngs(0)), scale_init=scale_init)
    assert_trees_close(wn.flatten(wn.fold(ours)), wn.flatten(theirs.layer_instance))


def test_nnx_fold_replaces_a_shared_wrapper_once_and_leaves_models_without_wrappers_alone():
    class Twice(nnx.Module):
        def __init__(self):
            self.first = wn.WeightNorm(nnx.Linear(4, 4, rngs=nnx.Rngs(0)))
            self.second = self.first

        def __call__(self, x):
            return self.second(self.first(x))

    model = Twice()
    plain = wn.fold(model)
    assert plain.first is plain.second and type(plain.first) is nnx.Linear
    assert_same_function(model, plain, X)
    linear = nnx.Linear(4, 3, rngs=nnx.Rngs(0))
    copy = wn.fold(linear)
    assert copy is not linear
    assert_params_equal(wn.flatten(copy), wn.flatten(linear))


# --- data-dependent init: mean 0 and std 1 for every wrapped layer, in order ---------------


class _MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(2)(nn.relu(nn.Dense(3)(x)))  # Dense_1 runs before Dense_0


class _Model(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(2)(wl.WeightNorm(_MLP())(x))


class _PlainModel(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(2)(_MLP()(x))


def test_linen_fold_of_a_model_holding_wrappers_gives_the_plain_models_variables():
    model = _Model()
    variables = wl.data_dependent_init(model, model.init(jax.random.key(0), X), X)
    plain = wl.fold(model, variables)
    expected = _PlainModel().init(jax.random.key(0), X)
    assert jax.tree.map(jnp.shape, plain) == jax.tree.map(jnp.shape, expected)
    assert_same_function(
        lambda x: model.apply(variables, x), lambda x: _PlainModel().apply(plain, x), X
    )


def test_linen_data_dependent_init_standardizes_each_wrapped_layer():
    model = _Model()
    variables = wl.data_dependent_init(model, model.init(jax.random.key(0), X), X)
    _, state = model.apply(variables, X, capture_intermediates=True)
    for name in ("Dense_0", "Dense_1"):
        _moments_are_standard(state["intermediates"]["_MLP_0"][name]["__call__"][0])


def test_haiku_data_dependent_init_standardizes_each_wrapped_layer():
    model = hk.transform(lambda x: wh.WeightNorm(hk.nets.MLP([5, 3]))(x))
    params = wh.data_dependent_init(model.apply, model.init(jax.random.key(0), X), None, X)
    plain = wh.fold(params)
    hidden = X @ plain["mlp/~/linear_0"]["w"] + plain["mlp/~/linear_0"]["b"]
    _moments_are_standard(hidden)
    _moments_are_standard(model.apply(params, None, X))  # the last layer has no activation


def test_equinox_data_dependent_init_standardizes_each_wrapped_layer():
    mlp = eqx.nn.MLP(4, 3, width_size=5, depth=2, key=jax.random.key(0))
    # The stored directions are far from unit norm and the biases non-zero, so
    # moments of `x . v + b0` (TensorFlow Addons) would not standardize.
    assert not np.allclose(jnp.linalg.norm(mlp.layers[0].weight, axis=1), 1.0, atol=0.1)
    plain = we.fold(we.data_dependent_init(we.WeightNorm(mlp), X))
    h = X
    for layer in plain.layers:
        h = jax.vmap(layer)(h)
        _moments_are_standard(h)
        h = jax.nn.relu(h)


def test_nnx_data_dependent_init_standardizes_each_wrapped_layer():
    model = _nnx_head(wn.WeightNorm)
    before = wn.flatten(model)
    initialized = wn.data_dependent_init(model, X)
    assert_params_equal(wn.flatten(model), before)  # a new model; the input is not changed
    plain = wn.fold(initialized)
    h = plain.blocks[0](X)  # the block runs first, the body's layers next, in call order
    _moments_are_standard(h)
    for layer in (plain.body.layers[0], plain.body.layers[2]):
        h = layer(h)
        _moments_are_standard(h)
        h = jax.nn.relu(h)
    # The unwrapped `out` layer is left as it was.
    assert_params_equal(wn.flatten(plain.out), wn.flatten(model.out))


def test_data_dependent_init_needs_wrapped_layers_and_per_feature_scales():
    with pytest.raises(ValueError, match="no weightnorm `WeightNorm`"):
        wl.data_dependent_init(nn.Dense(3), nn.Dense(3).init(jax.random.key(0), X), X)
    model = wl.WeightNorm(nn.Dense(3), feature_axes=None)
    with pytest.raises(ValueError, match="one scale per output feature"):
        wl.data_dependent_init(model, model.init(jax.random.key(0), X), X)
    with pytest.raises(ValueError, match="holds no weightnorm"):
        we.data_dependent_init(eqx.nn.Linear(4, 3, key=jax.random.key(0)), X)
    with pytest.raises(ValueError, match="holds no weightnorm"):
        wn.data_dependent_init(nnx.Linear(4, 3, rngs=nnx.Rngs(0)), X)
    with pytest.raises(ValueError, match="one scale per output feature"):
        wn.data_dependent_init(wn.WeightNorm(nnx.Linear(4, 3, rngs=nnx.Rngs(0)), feature_axes=0), X)


# --- a filter that selects nothing warns once, at init --------------------------------------


def test_filters_matching_nothing_warn_at_init_only():
    linen = wl.WeightNorm(nn.Dense(3), variable_filter="kernal")
    with pytest.warns(NoVariableSelectedWarning, match="kernal"):
        variables = linen.init(jax.random.key(0), X)
    haiku = hk.transform(lambda x: wh.WeightNorm(hk.Linear(3), variable_filter="W")(x))
    with pytest.warns(NoVariableSelectedWarning, match="'W'"):
        params = haiku.init(jax.random.key(0), X)
    with pytest.warns(NoVariableSelectedWarning, match="weights"):
        we.WeightNorm(eqx.nn.Linear(4, 3, key=jax.random.key(0)), variable_filter="weights")
    with pytest.warns(NoVariableSelectedWarning, match="kernal"):
        nnx_model = wn.WeightNorm(nnx.Linear(4, 3, rngs=nnx.Rngs(0)), variable_filter="kernal")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        linen.apply(variables, X)
        haiku.apply(params, None, X)
        nnx_model(X)


def test_data_dependent_init_refuses_a_layer_with_two_normalized_params():
    # One scale per layer is what the paper's init sets; a second (here the bias's) would
    # otherwise be left alone while the first is fitted, silently.
    x = jnp.ones((8, 3))
    message = "one scale per layer, but layer .* has two normalized params"

    linen = wl.WeightNorm(nn.Dense(2), variable_filter=None)
    with pytest.raises(ValueError, match=message):
        wl.data_dependent_init(linen, linen.init(jax.random.key(0), x), x)

    haiku = hk.transform(lambda x: wh.WeightNorm(hk.Linear(2), variable_filter=None)(x))
    with pytest.raises(ValueError, match=message):
        wh.data_dependent_init(haiku.apply, haiku.init(jax.random.key(0), x), None, x)

    equinox = we.WeightNorm(eqx.nn.Linear(3, 2, key=jax.random.key(0)), variable_filter=None)
    with pytest.raises(ValueError, match=message):
        we.data_dependent_init(equinox, x)


# --- data-dependent init keeps no state of its own ------------------------------------------


class _EquinoxConvs(eqx.Module):
    """Channels-first convolutions, whose biases are (out, 1): a vocoder's building block."""

    layers: tuple

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        self.layers = (
            we.WeightNorm(eqx.nn.Conv1d(2, 5, 3, padding=1, key=k1)),
            we.WeightNorm(eqx.nn.Conv1d(5, 3, 3, padding=1, key=k2)),
        )

    def __call__(self, x):  # (channels, length)
        return self.layers[1](jnp.tanh(self.layers[0](x)))


def test_equinox_data_dependent_init_of_convolutions_standardizes_each_channel():
    # Equinox conv biases are (out, 1, ...): this raised "Bias ... has shape (5, 1),
    # expected (5,)" before.
    batch = jax.random.normal(jax.random.key(3), (32, 2, 10)) * 2.0 + 1.0
    model = we.data_dependent_init(_EquinoxConvs(jax.random.key(0)), batch)
    assert model.layers[0].layer.bias.shape == (5, 1)
    first = jax.vmap(model.layers[0])(batch)  # (batch, channels, length)
    _moments_are_standard(first.transpose(0, 2, 1).reshape(-1, 5))
    second = jax.vmap(model)(batch)
    _moments_are_standard(second.transpose(0, 2, 1).reshape(-1, 3))


def test_data_dependent_init_runs_in_several_threads_at_once():
    # NNX's and Equinox's data inits recorded calls through a module-level list that every
    # forward call read; two threads at once sometimes failed. Now each records on its own
    # copy of the model.
    import concurrent.futures

    def nnx_init(seed):
        model = wn.WeightNorm(nnx.Linear(4, 3, rngs=nnx.Rngs(seed)))
        return np.asarray(wn.data_dependent_init(model, X).scales["kernel/scale"][...])

    def equinox_init(seed):
        model = we.WeightNorm(eqx.nn.Linear(4, 3, key=jax.random.key(seed)))
        return np.asarray(we.data_dependent_init(model, X).scales["weight/scale"])

    for init in (nnx_init, equinox_init):
        alone = [init(seed) for seed in range(8)]
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            together = list(pool.map(init, range(8)))
        for a, b in zip(alone, together, strict=True):
            np.testing.assert_array_equal(a, b)
