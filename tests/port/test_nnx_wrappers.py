"""NNX models holding weightnorm's NNX `WeightNorm` as port source and destination."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from weightnorm.adapters import linen as wl
from weightnorm.adapters import nnx as wn
from weightnorm.port import PortError, convert

TOLERANCE = 2e-5
X = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)


def _torch_out(module, x=X):
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


def _random_wrapper(**kwargs):
    """A wrapped square Linear with random direction and positive random scales."""
    model = wn.WeightNorm(nnx.Linear(4, 4, rngs=nnx.Rngs(0)), **kwargs)
    rng = np.random.default_rng(1)
    model.scales["kernel/scale"][...] = jnp.asarray(rng.uniform(0.5, 2.0, 4), jnp.float32)
    return model


def test_feature_axes_are_read_from_the_wrapper_and_copied_exactly():
    # A (4,) scale on a (4, 4) kernel fits either axis: only the wrapper says axis 0
    # (the input feature), torch's dim=1 on its (out, in) weight.
    model = _random_wrapper(feature_axes=0)
    like = torch.nn.utils.parametrizations.weight_norm(torch.nn.Linear(4, 4), dim=1)
    ported, pairings = convert(model, src="nnx", dst="torch", like=like, report=True)
    assert "weight norm copied (feature axes (0,) -> (1,))" in pairings[0].transform
    np.testing.assert_allclose(_torch_out(ported), model(jnp.asarray(X)), atol=TOLERANCE, rtol=0)
    weight = ported.parametrizations.weight
    np.testing.assert_array_equal(weight.original1.detach().numpy().T, model.layer_instance.kernel)
    np.testing.assert_array_equal(
        weight.original0.detach().numpy()[0], model.scales["kernel/scale"][...]
    )

    back = convert(ported, src="torch", dst="nnx", like=_random_wrapper(feature_axes=0))
    got, want = wn.flatten(back), wn.flatten(model)
    assert list(got) == list(want)
    for key, value in want.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)


@pytest.mark.parametrize("epsilon", [1e-12, 0.5])
def test_the_wrappers_epsilon_is_used_to_fold_and_to_decompose(epsilon):
    # A large epsilon changes the function: folding with the default would be wrong.
    model = _random_wrapper(epsilon=epsilon)
    plain = convert(model, src="nnx", dst="torch", like=torch.nn.Linear(4, 4))
    np.testing.assert_allclose(_torch_out(plain), model(jnp.asarray(X)), atol=TOLERANCE, rtol=0)

    decomposed, pairings = convert(
        plain, src="torch", dst="nnx", like=_random_wrapper(epsilon=epsilon), report=True
    )
    assert "weight norm decomposed" in pairings[0].transform
    np.testing.assert_allclose(
        decomposed(jnp.asarray(X)), _torch_out(plain), atol=TOLERANCE, rtol=0
    )


def test_nnx_wrappers_refold_into_linen_wrappers_on_other_axes():
    model = _random_wrapper(feature_axes=0)

    class Dense(nn.Module):
        @nn.compact
        def __call__(self, x):
            return wl.WeightNorm(nn.Dense(4))(x)

    # The Linen params alone do not say which axis of the square kernel their (4,)
    # scale is on, and the source's (0,) fits too: refused, not guessed.
    like = Dense().init(jax.random.key(0), X)
    with pytest.raises(PortError, match=r"feature axes .* the other side normalizes over \(0,\)"):
        convert(model, src="nnx", dst="linen", like=like)
    # The model itself says it: its wrapper's default axis, the last.
    ported, pairings = convert(model, src="nnx", dst="linen", like=Dense(), example=X, report=True)
    assert "weight norm refolded (feature axes (0,) -> (1,))" in pairings[0].transform
    np.testing.assert_allclose(
        Dense().apply(ported, X), model(jnp.asarray(X)), atol=TOLERANCE, rtol=0
    )


def test_a_wrapper_around_several_layers_and_a_bare_state_port():
    # One wrapper normalizing both kernels of a Sequential: scales `layers/i/kernel/scale`.
    model = wn.WeightNorm(
        nnx.Sequential(nnx.Linear(4, 3, rngs=nnx.Rngs(0)), nnx.Linear(3, 2, rngs=nnx.Rngs(1)))
    )
    model.scales["layers/1/kernel/scale"][...] = jnp.asarray([0.5, 2.0])
    wrap = torch.nn.utils.parametrizations.weight_norm
    like = torch.nn.Sequential(wrap(torch.nn.Linear(4, 3)), wrap(torch.nn.Linear(3, 2)))
    expected = np.asarray(model(jnp.asarray(X)))
    for source in (model, nnx.state(model, nnx.Param)):  # a state: default axes, read by name
        ported, pairings = convert(source, src="nnx", dst="torch", like=like, report=True)
        assert [p.src for p in pairings] == ["layer_instance/layers/0", "layer_instance/layers/1"]
        assert all("weight norm copied" in p.transform for p in pairings)
        np.testing.assert_allclose(_torch_out(ported), expected, atol=TOLERANCE, rtol=0)


def test_flax_nnx_weight_norm_is_refused_with_the_reason_and_the_fix():
    flax_wrapped = nnx.Sequential(
        nnx.WeightNorm(nnx.Linear(4, 4, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(0))
    )
    message = r"'layers/0' is a flax\.nnx\.WeightNorm.*overwrites.*weightnorm\.adapters\.nnx"
    with pytest.raises(PortError, match=message):
        convert(flax_wrapped, src="nnx", dst="torch", like=torch.nn.Linear(4, 4))
    with pytest.raises(PortError, match=message):
        convert(torch.nn.Linear(4, 4), src="torch", dst="nnx", like=flax_wrapped)


def test_a_wrapper_without_scales_is_refused_as_no_port_keeps_its_function():
    scaleless = nnx.Sequential(wn.WeightNorm(nnx.Linear(4, 4, rngs=nnx.Rngs(0)), use_scale=False))
    message = r"'layers/0' is a weightnorm NNX WeightNorm with use_scale=False.*\['kernel'\]"
    with pytest.raises(PortError, match=message):
        convert(torch.nn.Linear(4, 4), src="torch", dst="nnx", like=scaleless)
    with pytest.raises(PortError, match=message):
        convert(scaleless, src="nnx", dst="torch", like=torch.nn.Linear(4, 4))


def test_an_nnx_endpoint_must_be_a_module_or_a_state():
    with pytest.raises(TypeError, match=r"nnx\.Module or an nnx\.State, got dict"):
        convert({"kernel": np.zeros((2, 2))}, src="nnx", dst="torch", like=torch.nn.Linear(2, 2))
