"""Embed, LayerNorm, GroupNorm, RMSNorm and BatchNorm ported from torch match torch's outputs."""

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

from weightnorm.port import PortError, convert

VOCAB, DIM, GROUPS, EPS = 7, 6, 2, 1e-5


class TorchNorms(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, DIM)
        self.ln = torch.nn.LayerNorm(DIM, eps=EPS)
        self.gn = torch.nn.GroupNorm(GROUPS, DIM, eps=EPS)
        self.rms = torch.nn.RMSNorm(DIM, eps=EPS)

    def forward(self, tokens):  # (batch, length) -> (batch, length, dim)
        x = self.ln(self.embed(tokens))
        x = self.gn(x.transpose(1, 2)).transpose(1, 2)
        return self.rms(x)


def _torch_model():
    torch.manual_seed(0)
    model = TorchNorms()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn_like(parameter))
    return model


class LinenNorms(nn.Module):
    @nn.compact
    def __call__(self, tokens):
        x = nn.Embed(VOCAB, DIM)(tokens)
        x = nn.LayerNorm(epsilon=EPS, use_fast_variance=False)(x)
        x = nn.GroupNorm(GROUPS, epsilon=EPS, use_fast_variance=False)(x)
        return nn.RMSNorm(epsilon=EPS)(x)


def _haiku_norms(tokens):
    x = hk.Embed(VOCAB, DIM)(tokens)
    x = hk.LayerNorm(-1, True, True, eps=EPS)(x)
    x = hk.GroupNorm(GROUPS, eps=EPS)(x)
    return hk.RMSNorm(-1, eps=EPS)(x)


class EquinoxNorms(eqx.Module):
    embed: eqx.nn.Embedding
    ln: eqx.nn.LayerNorm
    gn: eqx.nn.GroupNorm
    rms: eqx.nn.RMSNorm

    def __init__(self, key):
        self.embed = eqx.nn.Embedding(VOCAB, DIM, key=key)
        self.ln = eqx.nn.LayerNorm(DIM, eps=EPS)
        self.gn = eqx.nn.GroupNorm(GROUPS, DIM, eps=EPS)
        self.rms = eqx.nn.RMSNorm(DIM, eps=EPS, use_bias=False)

    def __call__(self, tokens):  # (length,)
        x = jax.vmap(lambda t: self.ln(self.embed(t)))(tokens)
        x = self.gn(x.T).T
        return jax.vmap(self.rms)(x)


def test_embed_and_norms_port_from_torch_to_every_framework():
    tokens = np.array([[0, 3, 6, 2], [5, 1, 1, 4]])
    source = _torch_model()
    with torch.no_grad():
        expected = source(torch.as_tensor(tokens)).numpy()
    state = {key: value.numpy() for key, value in source.state_dict().items()}

    # A state dict does not tell a LayerNorm from a GroupNorm (both `weight`,
    # `bias` of shape (C,)); the module does.
    linen = LinenNorms()
    like = linen.init(jax.random.key(0), tokens)
    with pytest.raises(PortError, match=r"cannot tell which of the .*\['gn', 'ln', 'rms'\]"):
        convert(state, src="torch", dst="linen", like=like)
    ported = convert(source, src="torch", dst="linen", like=like)
    np.testing.assert_allclose(linen.apply(ported, tokens), expected, atol=1e-5)

    haiku = hk.without_apply_rng(hk.transform(_haiku_norms))
    ported = convert(source, src="torch", dst="haiku", like=haiku.init(jax.random.key(0), tokens))
    np.testing.assert_allclose(haiku.apply(ported, tokens), expected, atol=1e-5)

    ported = convert(source, src="torch", dst="equinox", like=EquinoxNorms(jax.random.key(0)))
    np.testing.assert_allclose(jax.vmap(ported)(jnp.asarray(tokens)), expected, atol=1e-5)

    back = convert(ported, src="equinox", dst="torch", like=source).state_dict()
    for key, value in state.items():
        np.testing.assert_array_equal(back[key].numpy(), value, err_msg=key)


def test_batch_norm_statistics_port_between_torch_linen_and_nnx():
    torch.manual_seed(1)
    bn = torch.nn.BatchNorm1d(DIM)
    with torch.no_grad():
        bn(torch.randn(16, DIM) * 3 + 1)  # running statistics away from 0 and 1
        bn.weight.copy_(torch.randn(DIM))
        bn.bias.copy_(torch.randn(DIM))
    bn.eval()
    x = np.random.default_rng(0).standard_normal((4, DIM)).astype(np.float32)
    with torch.no_grad():
        expected = bn(torch.as_tensor(x)).numpy()

    linen = nn.BatchNorm(use_running_average=True, momentum=0.9, epsilon=bn.eps)
    like = linen.init(jax.random.key(0), x)
    ported, pairings = convert(bn, src="torch", dst="linen", like=like, report=True)
    np.testing.assert_allclose(linen.apply(ported, x), expected, atol=1e-5)
    np.testing.assert_array_equal(ported["batch_stats"]["mean"], bn.running_mean.numpy())
    assert pairings[0].kind == "batch_norm"

    model = nnx.BatchNorm(DIM, use_running_average=True, epsilon=bn.eps, rngs=nnx.Rngs(0))
    ported_nnx = convert(ported, src="linen", dst="nnx", like=model)
    np.testing.assert_allclose(ported_nnx(jnp.asarray(x)), expected, atol=1e-5)

    back = convert(ported_nnx, src="nnx", dst="torch", like=bn)
    np.testing.assert_array_equal(back.running_var.numpy(), bn.running_var.numpy())
    assert int(back.num_batches_tracked) == 0  # nothing in Linen or NNX holds the count
