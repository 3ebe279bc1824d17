"""Real PyTorch models with weight norm (both APIs) ported to Linen, Haiku, Equinox and NNX."""

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

from weightnorm.adapters import equinox as we
from weightnorm.adapters import haiku as wh
from weightnorm.adapters import linen as wl
from weightnorm.adapters import nnx as wn
from weightnorm.port import convert

TOLERANCE = 2e-5
CHANNELS, UPSAMPLED, MELS, KERNEL, UP_KERNEL, DILATIONS = 8, 4, 5, 3, 4, (1, 3)


def _weight_norm(api):
    def wrap(module, **kwargs):
        if api == "parametrizations":
            return torch.nn.utils.parametrizations.weight_norm(module, **kwargs)
        with warnings.catch_warnings():  # the old API is deprecated
            warnings.simplefilter("ignore", FutureWarning)
            return torch.nn.utils.weight_norm(module, **kwargs)

    return wrap


def _randomize(module):
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            parameter.copy_(torch.randn_like(parameter) * 0.3)
            if name.endswith(("weight_g", "original0")):
                parameter.abs_().add_(0.5)
    return module


# --- a HiFi-GAN-style generator block ---------------------------------------------------


class TorchResBlock(torch.nn.Module):
    def __init__(self, wn):
        super().__init__()
        pad = lambda d: d * (KERNEL - 1) // 2  # noqa: E731
        self.convs1 = torch.nn.ModuleList(
            wn(torch.nn.Conv1d(UPSAMPLED, UPSAMPLED, KERNEL, dilation=d, padding=pad(d)))
            for d in DILATIONS
        )
        self.convs2 = torch.nn.ModuleList(
            wn(torch.nn.Conv1d(UPSAMPLED, UPSAMPLED, KERNEL, padding=pad(1))) for _ in DILATIONS
        )

    def forward(self, x):
        for c1, c2 in zip(self.convs1, self.convs2, strict=True):
            x = x + c2(
                torch.nn.functional.leaky_relu(c1(torch.nn.functional.leaky_relu(x, 0.1)), 0.1)
            )
        return x


class TorchGenerator(torch.nn.Module):
    def __init__(self, api):
        super().__init__()
        wn = _weight_norm(api)
        self.conv_pre = wn(torch.nn.Conv1d(MELS, CHANNELS, 7, padding=3))
        # torch's default dim=0 is the *input* channel of a transposed conv.
        self.ups = torch.nn.ModuleList(
            [wn(torch.nn.ConvTranspose1d(CHANNELS, UPSAMPLED, UP_KERNEL, 2, 1))]
        )
        self.resblocks = torch.nn.ModuleList([TorchResBlock(wn)])
        self.conv_post = wn(torch.nn.Conv1d(UPSAMPLED, 1, 7, padding=3))

    def forward(self, x):
        x = self.conv_pre(x)
        x = self.resblocks[0](self.ups[0](torch.nn.functional.leaky_relu(x, 0.1)))
        return torch.tanh(self.conv_post(torch.nn.functional.leaky_relu(x)))


def _lrelu(x, slope=0.01):
    return jnp.where(x >= 0, x, slope * x)


class LinenGenerator(nn.Module):
    """Layers named as torch names them, so the port pairs them by name."""

    @nn.compact
    def __call__(self, x):  # (batch, length, mels)
        pre = wl.WeightNorm(nn.Conv(CHANNELS, (7,), padding=[(3, 3)], name="conv_pre"))
        # feature_axes=-2: the input channel of (k, in, out), as torch's dim=0.
        up = wl.WeightNorm(
            nn.ConvTranspose(UPSAMPLED, (UP_KERNEL,), (2,), padding=[(2, 2)], name="ups_0"),
            feature_axes=-2,
        )
        pad = lambda d: [(d * (KERNEL - 1) // 2,) * 2]  # noqa: E731
        convs1 = [
            wl.WeightNorm(
                nn.Conv(
                    UPSAMPLED,
                    (KERNEL,),
                    padding=pad(d),
                    kernel_dilation=(d,),
                    name=f"resblocks_0_convs1_{i}",
                )
            )
            for i, d in enumerate(DILATIONS)
        ]
        convs2 = [
            wl.WeightNorm(
                nn.Conv(UPSAMPLED, (KERNEL,), padding=pad(1), name=f"resblocks_0_convs2_{i}")
            )
            for i in range(len(DILATIONS))
        ]
        post = wl.WeightNorm(nn.Conv(1, (7,), padding=[(3, 3)], name="conv_post"))
        x = up(_lrelu(pre(x), 0.1))
        for c1, c2 in zip(convs1, convs2, strict=True):
            x = x + c2(_lrelu(c1(_lrelu(x, 0.1)), 0.1))
        return jnp.tanh(post(_lrelu(x)))


class HaikuGenerator(hk.Module):
    """Modules named as torch names them (Haiku joins nested names with `/~/`)."""

    def __init__(self):
        super().__init__()
        pad = lambda d: [(d * (KERNEL - 1) // 2,) * 2]  # noqa: E731
        self.pre = wh.WeightNorm(hk.Conv1D(CHANNELS, 7, padding=[(3, 3)], name="conv_pre"))
        # Haiku's transposed kernel is (k, out, in): the default -1 is the input channel.
        self.up = wh.WeightNorm(
            hk.Conv1DTranspose(UPSAMPLED, UP_KERNEL, 2, padding=[(2, 2)], name="ups_0")
        )
        self.convs1 = [
            wh.WeightNorm(
                hk.Conv1D(UPSAMPLED, KERNEL, rate=d, padding=pad(d), name=f"resblocks_0_convs1_{i}")
            )
            for i, d in enumerate(DILATIONS)
        ]
        self.convs2 = [
            wh.WeightNorm(
                hk.Conv1D(UPSAMPLED, KERNEL, padding=pad(1), name=f"resblocks_0_convs2_{i}")
            )
            for i in range(len(DILATIONS))
        ]
        self.post = wh.WeightNorm(hk.Conv1D(1, 7, padding=[(3, 3)], name="conv_post"))

    def __call__(self, x):
        x = self.up(_lrelu(self.pre(x), 0.1))
        for c1, c2 in zip(self.convs1, self.convs2, strict=True):
            x = x + c2(_lrelu(c1(_lrelu(x, 0.1)), 0.1))
        return jnp.tanh(self.post(_lrelu(x)))


class EquinoxResBlock(eqx.Module):
    convs1: list
    convs2: list

    def __init__(self, key):
        keys = jax.random.split(key, 4)
        pad = lambda d: d * (KERNEL - 1) // 2  # noqa: E731
        self.convs1 = [
            we.WeightNorm(
                eqx.nn.Conv1d(UPSAMPLED, UPSAMPLED, KERNEL, dilation=d, padding=pad(d), key=k)
            )
            for d, k in zip(DILATIONS, keys[:2], strict=True)
        ]
        self.convs2 = [
            we.WeightNorm(eqx.nn.Conv1d(UPSAMPLED, UPSAMPLED, KERNEL, padding=pad(1), key=k))
            for k in keys[2:]
        ]

    def __call__(self, x):
        for c1, c2 in zip(self.convs1, self.convs2, strict=True):
            x = x + c2(_lrelu(c1(_lrelu(x, 0.1)), 0.1))
        return x


class EquinoxGenerator(eqx.Module):
    conv_pre: we.WeightNorm
    ups: list
    resblocks: list
    conv_post: we.WeightNorm

    def __init__(self, key):
        k1, k2, k3, k4 = jax.random.split(key, 4)
        self.conv_pre = we.WeightNorm(eqx.nn.Conv1d(MELS, CHANNELS, 7, padding=3, key=k1))
        # Equinox's default axis 0 is the *output* channel: the port refolds.
        self.ups = [
            we.WeightNorm(
                eqx.nn.ConvTranspose1d(CHANNELS, UPSAMPLED, UP_KERNEL, 2, padding=1, key=k2)
            )
        ]
        self.resblocks = [EquinoxResBlock(k3)]
        self.conv_post = we.WeightNorm(eqx.nn.Conv1d(UPSAMPLED, 1, 7, padding=3, key=k4))

    def __call__(self, x):  # (mels, length)
        x = self.resblocks[0](self.ups[0](_lrelu(self.conv_pre(x), 0.1)))
        return jnp.tanh(self.conv_post(_lrelu(x)))


class NNXGenerator(nnx.Module):
    """The convolutions in one list in torch's order: NNX's graph order sorts attribute names."""

    def __init__(self, rngs):
        pad = lambda d: [(d * (KERNEL - 1) // 2,) * 2]  # noqa: E731

        def conv(c_in, c_out, size, padding, dilation=1):
            layer = nnx.Conv(
                c_in, c_out, (size,), padding=padding, kernel_dilation=(dilation,), rngs=rngs
            )
            return wn.WeightNorm(layer)

        self.convs = nnx.List(
            [
                conv(MELS, CHANNELS, 7, [(3, 3)]),
                *[conv(UPSAMPLED, UPSAMPLED, KERNEL, pad(d), d) for d in DILATIONS],
                *[conv(UPSAMPLED, UPSAMPLED, KERNEL, pad(1)) for _ in DILATIONS],
                conv(UPSAMPLED, 1, 7, [(3, 3)]),
            ]
        )
        # feature_axes=-2: the input channel of (k, in, out), as torch's dim=0.
        self.up = wn.WeightNorm(
            nnx.ConvTranspose(CHANNELS, UPSAMPLED, (UP_KERNEL,), (2,), padding=[(2, 2)], rngs=rngs),
            feature_axes=-2,
        )

    def __call__(self, x):  # (batch, length, mels)
        pre, *middle, post = self.convs
        convs1, convs2 = middle[: len(DILATIONS)], middle[len(DILATIONS) :]
        x = self.up(_lrelu(pre(x), 0.1))
        for c1, c2 in zip(convs1, convs2, strict=True):
            x = x + c2(_lrelu(c1(_lrelu(x, 0.1)), 0.1))
        return jnp.tanh(post(_lrelu(x)))


def _assert_same_state(model, like):
    for key, value in like.state_dict().items():
        np.testing.assert_array_equal(model.state_dict()[key].numpy(), value.numpy(), err_msg=key)


def _torch_output(model, x):
    with torch.no_grad():
        return model(torch.as_tensor(np.moveaxis(x, -1, 1))).numpy()


@pytest.mark.parametrize("api", ["weight_norm", "parametrizations"])
def test_hifigan_block_ports_to_linen_haiku_and_equinox(api):
    x = np.random.default_rng(0).standard_normal((2, 9, MELS)).astype(np.float32)
    source = _randomize(TorchGenerator(api))
    expected = np.moveaxis(_torch_output(source, x), 1, -1)

    linen = LinenGenerator()
    like = linen.init(jax.random.key(1), x)
    ported, pairings = convert(source, src="torch", dst="linen", like=like, report=True)
    np.testing.assert_allclose(linen.apply(ported, x), expected, atol=TOLERANCE, rtol=0)
    assert [p.src for p in pairings][:2] == ["conv_pre", "ups.0"]
    assert "weight norm copied" in pairings[1].transform  # the same (input-channel) axis

    haiku = hk.without_apply_rng(hk.transform(lambda x: HaikuGenerator()(x)))
    like = haiku.init(jax.random.key(1), x)
    ported = convert(source, src="torch", dst="haiku", like=like)
    np.testing.assert_allclose(haiku.apply(ported, x), expected, atol=TOLERANCE, rtol=0)

    like = EquinoxGenerator(jax.random.key(1))
    ported, pairings = convert(source, src="torch", dst="equinox", like=like, report=True)
    outputs = jax.vmap(ported)(jnp.moveaxis(x, -1, 1))
    np.testing.assert_allclose(np.moveaxis(outputs, 1, -1), expected, atol=TOLERANCE, rtol=0)
    assert "weight norm refolded" in pairings[1].transform


@pytest.mark.parametrize("api", ["weight_norm", "parametrizations"])
def test_hifigan_block_ports_to_nnx_wrappers_and_back_exactly(api):
    x = np.random.default_rng(0).standard_normal((2, 9, MELS)).astype(np.float32)
    source = _randomize(TorchGenerator(api))
    expected = np.moveaxis(_torch_output(source, x), 1, -1)

    like = NNXGenerator(nnx.Rngs(1))
    ported, pairings = convert(source, src="torch", dst="nnx", like=like, report=True)
    np.testing.assert_allclose(ported(jnp.asarray(x)), expected, atol=TOLERANCE, rtol=0)
    assert [p.dst for p in pairings][:2] == ["convs/0/layer_instance", "up/layer_instance"]
    assert all("weight norm copied" in p.transform for p in pairings)
    up = pairings[1].transform
    assert "weight norm copied (feature axes (0,) -> (1,))" in up  # the wrapper's -2, read from it
    # The direction itself, not only the outputs: torch's (in, out, k) as (k, in, out), flipped.
    v = np.flip(_torch_direction(source.ups[0], api).transpose(2, 0, 1), 0)
    np.testing.assert_array_equal(ported.up.layer_instance.kernel[...], v)

    back = convert(ported, src="nnx", dst="torch", like=source)
    _assert_same_state(back, source)


def _torch_direction(module, api):
    if api == "parametrizations":
        return module.parametrizations.weight.original1.detach().numpy()
    return module.weight_v.detach().numpy()


# --- a Linear/Conv2d classifier ---------------------------------------------------------


class TorchClassifier(torch.nn.Module):
    def __init__(self, api):
        super().__init__()
        wn = _weight_norm(api)
        self.conv1 = wn(torch.nn.Conv2d(3, 8, 3, padding=1))
        self.conv2 = wn(torch.nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2))
        self.fc = wn(torch.nn.Linear(8, 10))

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(x.mean(dim=(2, 3)))


class LinenClassifier(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(wl.WeightNorm(nn.Conv(8, (3, 3), padding=[(1, 1)] * 2))(x))
        conv2 = nn.Conv(8, (3, 3), (2, 2), padding=[(1, 1)] * 2, feature_group_count=2)
        x = nn.relu(wl.WeightNorm(conv2)(x))
        return wl.WeightNorm(nn.Dense(10))(x.mean(axis=(1, 2)))


def _haiku_classifier(x):
    x = jax.nn.relu(wh.WeightNorm(hk.Conv2D(8, 3, padding=[(1, 1)] * 2))(x))
    conv2 = hk.Conv2D(8, 3, 2, padding=[(1, 1)] * 2, feature_group_count=2)
    x = jax.nn.relu(wh.WeightNorm(conv2)(x))
    return wh.WeightNorm(hk.Linear(10))(x.mean(axis=(1, 2)))


class EquinoxClassifier(eqx.Module):
    conv1: we.WeightNorm
    conv2: we.WeightNorm
    fc: we.WeightNorm

    def __init__(self, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.conv1 = we.WeightNorm(eqx.nn.Conv2d(3, 8, 3, padding=1, key=k1))
        self.conv2 = we.WeightNorm(eqx.nn.Conv2d(8, 8, 3, 2, padding=1, groups=2, key=k2))
        self.fc = we.WeightNorm(eqx.nn.Linear(8, 10, key=k3))

    def __call__(self, x):  # (channels, height, width)
        x = jax.nn.relu(self.conv2(jax.nn.relu(self.conv1(x))))
        return self.fc(x.mean(axis=(1, 2)))


@pytest.mark.parametrize("api", ["weight_norm", "parametrizations"])
def test_classifier_ports_to_linen_haiku_and_equinox(api):
    x = np.random.default_rng(1).standard_normal((2, 8, 8, 3)).astype(np.float32)
    source = _randomize(TorchClassifier(api))
    with torch.no_grad():
        expected = source(torch.as_tensor(np.moveaxis(x, -1, 1))).numpy()
    state = {key: value.numpy() for key, value in source.state_dict().items()}

    linen = LinenClassifier()
    ported = convert(state, src="torch", dst="linen", like=linen.init(jax.random.key(1), x))
    np.testing.assert_allclose(linen.apply(ported, x), expected, atol=TOLERANCE, rtol=0)

    haiku = hk.without_apply_rng(hk.transform(_haiku_classifier))
    ported = convert(state, src="torch", dst="haiku", like=haiku.init(jax.random.key(1), x))
    np.testing.assert_allclose(haiku.apply(ported, x), expected, atol=TOLERANCE, rtol=0)

    like = EquinoxClassifier(jax.random.key(1))
    ported = convert(state, src="torch", dst="equinox", like=like)
    outputs = jax.vmap(ported)(jnp.moveaxis(x, -1, 1))
    np.testing.assert_allclose(outputs, expected, atol=TOLERANCE, rtol=0)

    # And back: the torch model gets its own parameters again, bit for bit.
    back = convert(ported, src="equinox", dst="torch", like=source)
    for key, value in source.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[key].numpy(), value.numpy(), err_msg=key)
