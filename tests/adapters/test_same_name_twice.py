"""A wrapped `conv1` at the top and another `conv1` in a submodule: every scale's weight is
read, never guessed from names, so fold, unfold, data-dependent init and the port to torch
and back are right in every framework."""

from __future__ import annotations

import equinox as eqx
import flax.linen as nn
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from weightnorm.adapters import equinox as we
from weightnorm.adapters import haiku as wh
from weightnorm.adapters import linen as wl
from weightnorm.adapters import nnx as wn
from weightnorm.port import convert
from weightnorm.testing import assert_params_equal, assert_same_function, assert_trees_close

C_IN, C, LENGTH = 2, 4, 6
X = np.random.default_rng(0).standard_normal((16, LENGTH, C_IN)).astype(np.float32)  # channels last


def _torch_model():
    wrap = torch.nn.utils.parametrizations.weight_norm

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = wrap(torch.nn.Conv1d(C, C, 3, padding=1))

        def forward(self, x):
            return self.conv1(x)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = wrap(torch.nn.Conv1d(C_IN, C, 3, padding=1))
            self.block = Block()

        def forward(self, x):
            return self.block(torch.tanh(self.conv1(x)))

    torch.manual_seed(0)
    model = Model()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.copy_(torch.randn_like(parameter) * 0.5)
            if name.endswith("original0"):
                parameter.abs_().add_(0.5)
    return model.eval()


def _torch_out(model, x=X):
    with torch.no_grad():
        return model(torch.as_tensor(x).movedim(-1, 1)).movedim(1, -1).numpy()


def _moments_are_standard(t):
    assert_trees_close(t.mean(0), jnp.zeros(t.shape[-1]), atol=1e-4)
    assert_trees_close(t.std(0), jnp.ones(t.shape[-1]), rtol=1e-4)


# --- Linen -----------------------------------------------------------------------------------


class LinenBlock(nn.Module):
    wrapped: bool = True

    @nn.compact
    def __call__(self, x):
        conv = nn.Conv(C, (3,), padding=[(1, 1)], name="conv1")
        return (wl.WeightNorm(conv) if self.wrapped else conv)(x)


class LinenModel(nn.Module):
    wrapped: bool = True

    @nn.compact
    def __call__(self, x):
        conv = nn.Conv(C, (3,), padding=[(1, 1)], name="conv1")
        x = jnp.tanh((wl.WeightNorm(conv) if self.wrapped else conv)(x))
        return LinenBlock(self.wrapped, name="block")(x)


def test_linen():
    model, plain = LinenModel(), LinenModel(wrapped=False)
    variables = model.init(jax.random.key(0), X)
    assert sorted(w.weight for w in wl.weight_norms(variables)) == [
        "block/conv1/kernel",
        "conv1/kernel",
    ]
    variables = wl.data_dependent_init(model, variables, X)
    _, state = model.apply(variables, X, capture_intermediates=True)
    _moments_are_standard(state["intermediates"]["conv1"]["__call__"][0].reshape(-1, C))
    _moments_are_standard(state["intermediates"]["block"]["conv1"]["__call__"][0].reshape(-1, C))
    folded = wl.fold(model, variables)
    assert_same_function(lambda x: plain.apply(folded, x), lambda x: model.apply(variables, x), X)
    unfolded = convert(folded, src="linen", dst="linen", like=variables)  # decomposed again
    assert_same_function(lambda x: model.apply(unfolded, x), lambda x: model.apply(variables, x), X)

    source = _torch_model()
    ported = convert(source, src="torch", dst="linen", like=model, example=X)
    np.testing.assert_allclose(model.apply(ported, X), _torch_out(source), atol=2e-5)
    back = convert(wl.trace(model, X, variables=ported), src="linen", dst="torch", like=source)
    assert_params_equal(back.state_dict(), source.state_dict())


# --- Haiku -----------------------------------------------------------------------------------


class HaikuBlock(hk.Module):
    def __call__(self, x):
        return wh.WeightNorm(hk.Conv1D(C, 3, padding=[(1, 1)], name="conv1"))(x)


def _haiku(x):
    x = jnp.tanh(wh.WeightNorm(hk.Conv1D(C, 3, padding=[(1, 1)], name="conv1"))(x))
    return HaikuBlock(name="block")(x)


class HaikuPlainBlock(hk.Module):
    def __call__(self, x):
        return hk.Conv1D(C, 3, padding=[(1, 1)], name="conv1")(x)


def _haiku_plain(x):
    x = jnp.tanh(hk.Conv1D(C, 3, padding=[(1, 1)], name="conv1")(x))
    return HaikuPlainBlock(name="block")(x)


def test_haiku():
    model = hk.without_apply_rng(hk.transform(_haiku))
    plain = hk.without_apply_rng(hk.transform(_haiku_plain))
    params = model.init(jax.random.key(0), X)
    assert sorted(w.weight for w in wh.weight_norms(params)) == ["block/conv1/w", "conv1/w"]
    params = wh.data_dependent_init(model.apply, params, X)
    folded = wh.fold(params)
    assert_same_function(lambda x: plain.apply(folded, x), lambda x: model.apply(params, x), X)
    unfolded = convert(folded, src="haiku", dst="haiku", like=params)
    assert_same_function(lambda x: model.apply(unfolded, x), lambda x: model.apply(params, x), X)
    _moments_are_standard(_conv(X, folded["conv1"]))

    source = _torch_model()
    ported = convert(source, src="torch", dst="haiku", like=model, example=X)
    np.testing.assert_allclose(model.apply(ported, X), _torch_out(source), atol=2e-5)
    back = convert(wh.trace(model, X, params=ported), src="haiku", dst="torch", like=source)
    assert_params_equal(back.state_dict(), source.state_dict())


def _conv(x, params):
    """The first layer's pre-activations, flattened over batch and length."""
    out = hk.without_apply_rng(
        hk.transform(lambda x: hk.Conv1D(C, 3, padding=[(1, 1)], name="conv1")(x))
    ).apply({"conv1": params}, x)
    return out.reshape(-1, C)


# --- Equinox ---------------------------------------------------------------------------------


class EquinoxBlock(eqx.Module):
    conv1: eqx.Module

    def __init__(self, key, wrap=True):
        conv = eqx.nn.Conv1d(C, C, 3, padding=1, key=key)
        self.conv1 = we.WeightNorm(conv) if wrap else conv

    def __call__(self, x):
        return self.conv1(x)


class EquinoxModel(eqx.Module):
    conv1: eqx.Module
    block: EquinoxBlock

    def __init__(self, key, wrap=True):
        k1, k2 = jax.random.split(key)
        conv = eqx.nn.Conv1d(C_IN, C, 3, padding=1, key=k1)
        self.conv1 = we.WeightNorm(conv) if wrap else conv
        self.block = EquinoxBlock(k2, wrap)

    def __call__(self, x):  # (channels, length)
        return self.block(jnp.tanh(self.conv1(x)))


def test_equinox():
    model = EquinoxModel(jax.random.key(0))
    xs = jnp.asarray(X).transpose(0, 2, 1)
    assert sorted(w.weight for w in we.weight_norms(model)) == [
        "block/conv1/layer/weight",
        "conv1/layer/weight",
    ]
    model = we.data_dependent_init(model, xs)
    first = jax.vmap(model.conv1)(xs)  # (batch, channels, length)
    _moments_are_standard(first.transpose(0, 2, 1).reshape(-1, C))
    folded = we.fold(model)
    assert not we.weight_norms(folded)
    assert_same_function(jax.vmap(folded), jax.vmap(model), xs)
    unfolded = eqx.tree_at(lambda m: (m.conv1, m.block.conv1), folded, replace_fn=we.unfold)
    assert_same_function(jax.vmap(unfolded), jax.vmap(model), xs)

    source = _torch_model()
    ported = convert(source, src="torch", dst="equinox", like=model)
    out = jax.vmap(ported)(xs).transpose(0, 2, 1)
    np.testing.assert_allclose(out, _torch_out(source), atol=2e-5)
    back = convert(ported, src="equinox", dst="torch", like=source)
    assert_params_equal(back.state_dict(), source.state_dict())


# --- NNX -------------------------------------------------------------------------------------


class NNXBlock(nnx.Module):
    def __init__(self, rngs):
        self.conv1 = wn.WeightNorm(nnx.Conv(C, C, (3,), padding=[(1, 1)], rngs=rngs))

    def __call__(self, x):
        return self.conv1(x)


class NNXModel(nnx.Module):
    def __init__(self, rngs):
        self.conv1 = wn.WeightNorm(nnx.Conv(C_IN, C, (3,), padding=[(1, 1)], rngs=rngs))
        self.block = NNXBlock(rngs)

    def __call__(self, x):
        return self.block(jnp.tanh(self.conv1(x)))


def test_nnx():
    model = NNXModel(nnx.Rngs(0))
    assert sorted(w.weight for w in wn.weight_norms(model)) == [
        "block/conv1/layer_instance/kernel",
        "conv1/layer_instance/kernel",
    ]
    model = wn.data_dependent_init(model, jnp.asarray(X))
    _moments_are_standard(model.conv1(jnp.asarray(X)).reshape(-1, C))
    folded = wn.fold(model)
    assert not wn.weight_norms(folded)
    assert_same_function(folded, model, jnp.asarray(X))
    unfolded = nnx.clone(folded)
    unfolded.conv1 = wn.unfold(unfolded.conv1)
    unfolded.block.conv1 = wn.unfold(unfolded.block.conv1)
    assert_same_function(unfolded, model, jnp.asarray(X))

    source = _torch_model()
    ported = convert(source, src="torch", dst="nnx", like=model)
    np.testing.assert_allclose(ported(jnp.asarray(X)), _torch_out(source), atol=2e-5)
    back = convert(ported, src="nnx", dst="torch", like=source)
    assert_params_equal(back.state_dict(), source.state_dict())


@pytest.mark.parametrize("framework", ["linen", "haiku", "equinox", "nnx"])
def test_the_two_conv1_pair_by_their_full_names(framework):
    # Both are named `conv1`: each pairs by its full name, the nested one included.
    source = _torch_model()
    likes = {
        "linen": lambda: {"like": LinenModel(), "example": X},
        "haiku": lambda: {"like": hk.without_apply_rng(hk.transform(_haiku)), "example": X},
        "equinox": lambda: {"like": EquinoxModel(jax.random.key(1))},
        "nnx": lambda: {"like": NNXModel(nnx.Rngs(1))},
    }
    _, pairings = convert(source, src="torch", dst=framework, report=True, **likes[framework]())
    assert {p.src: p.by for p in pairings} == {"conv1": "names", "block.conv1": "names"}
