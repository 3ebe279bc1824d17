"""Files weightnorm writes say where they came from, and reading them uses it: nothing about
them is inferred again."""

from __future__ import annotations

import contextlib
import io

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from weightnorm.__main__ import main
from weightnorm.adapters import equinox as we
from weightnorm.adapters import linen as wl
from weightnorm.port import PortError, convert, load, load_checkpoint, save

X = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)


class Square(nn.Module):
    """A square Dense normalized per *input* feature: its (4,) scale fits either axis."""

    @nn.compact
    def __call__(self, x):
        return wl.WeightNorm(nn.Dense(4, name="fc"), feature_axes=0)(x)


def _torch_like():
    return torch.nn.utils.parametrizations.weight_norm(torch.nn.Linear(4, 4), dim=1)


def _random(variables):
    rng = np.random.default_rng(1)
    return jax.tree.map(lambda a: jnp.asarray(rng.uniform(0.5, 1.5, a.shape), a.dtype), variables)


def test_a_saved_linen_model_records_its_wrappers_axes_and_ports_exactly(tmp_path):
    model = Square()
    variables = _random(model.init(jax.random.key(0), X))
    expected = np.asarray(model.apply(variables, X))

    # The variables alone do not say the scale's axis: refused, not guessed.
    with pytest.raises(PortError, match="cannot tell the feature axes"):
        convert(variables, src="linen", dst="torch", like=_torch_like())

    # Saved with the model, the file says axis 0, and the port is exact.
    save(wl.trace(model, X, variables=variables), tmp_path / "model.st", src="linen")
    provenance = load_checkpoint(tmp_path / "model.st").provenance
    assert provenance["framework"] == "linen"
    assert [w["feature_axes"] for w in provenance["weight_norms"]] == [[0]]
    ported, pairings = load(tmp_path / "model.st", dst="torch", like=_torch_like(), report=True)
    assert "weight norm copied (feature axes (0,) -> (1,))" in pairings[0].transform
    with torch.no_grad():
        np.testing.assert_allclose(ported(torch.from_numpy(X)).numpy(), expected, atol=1e-6)
    # And back into the model, bit for bit.
    back = load(tmp_path / "model.st", dst="linen", like=model, example=X)
    for key, value in wl.flatten(variables).items():
        np.testing.assert_array_equal(wl.flatten(back)[key], value, err_msg=key)


def test_the_clis_output_loads_into_a_model_named_as_torch_in_one_call(tmp_path):
    class TorchNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.utils.parametrizations.weight_norm(torch.nn.Conv1d(2, 3, 3))
            self.head = torch.nn.Linear(3, 2, bias=False)  # 2-D, no bias: Linear or Embedding?

        def forward(self, x):
            return self.head(torch.tanh(self.conv(x)).mean(-1))

    class EquinoxNet(eqx.Module):
        conv: we.WeightNorm
        head: eqx.nn.Linear

        def __init__(self, key):
            k1, k2 = jax.random.split(key)
            self.conv = we.WeightNorm(eqx.nn.Conv1d(2, 3, 3, key=k1))
            self.head = eqx.nn.Linear(3, 2, use_bias=False, key=k2)

        def __call__(self, x):
            return self.head(jnp.tanh(self.conv(x)).mean(-1))

    torch.manual_seed(0)
    net = TorchNet().eval()
    torch.save(net.state_dict(), tmp_path / "net.pt")
    out = tmp_path / "net_equinox.safetensors"
    args = ["convert", str(tmp_path / "net.pt"), "--to", "equinox", "-o", str(out)]
    kinds = ["--kind", "conv=conv", "--kind", "head=dense"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main([*args, *kinds]) == 0
    # The file says each layer's kind and weight norm: no kinds=, no mapping=.
    ported, pairings = load(out, dst="equinox", like=EquinoxNet(jax.random.key(1)), report=True)
    assert {p.by for p in pairings} == {"names"}
    x = np.random.default_rng(2).standard_normal((5, 2, 7)).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(jax.vmap(ported)(jnp.asarray(x)), expected, atol=1e-5)
