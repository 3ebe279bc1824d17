"""One weight-normed Dense, the same numbers in Linen, Haiku, Equinox and flax itself."""

from __future__ import annotations

import equinox as eqx
import flax.linen as nn
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tests.peers import assert_bitwise_equal
from weightnorm.adapters import equinox as weq
from weightnorm.adapters import haiku as whk
from weightnorm.adapters import linen as wl

IN, OUT = 3, 4
_floats = st.floats(-4, 4, width=32)


def outputs(direction, scale, bias, x):
    """The Dense(3 -> 4) outputs of flax's WeightNorm and of our three adapters."""
    linen_vars = {
        "params": {
            "layer_instance": {"kernel": direction, "bias": bias},
            "layer_instance/kernel/scale": scale,
        }
    }
    haiku_params = {"linear": {"w": direction, "b": bias}, "weight_norm": {"linear/w/scale": scale}}
    haiku_model = hk.without_apply_rng(hk.transform(lambda x: whk.WeightNorm(hk.Linear(OUT))(x)))
    linear = eqx.nn.Linear(IN, OUT, key=jax.random.key(0))
    linear = eqx.tree_at(lambda m: (m.weight, m.bias), linear, (direction.T, bias))
    eqx_model = eqx.tree_at(lambda m: m.scales, weq.WeightNorm(linear), {"weight/scale": scale})
    return {
        "flax": nn.WeightNorm(nn.Dense(OUT)).apply(linen_vars, x),
        "linen": wl.WeightNorm(nn.Dense(OUT)).apply(linen_vars, x),
        "haiku": haiku_model.apply(haiku_params, x),
        "equinox": jax.vmap(eqx_model)(x),  # equinox stores the weight transposed
    }


@given(
    direction=hnp.arrays(np.float32, (IN, OUT), elements=_floats),
    scale=hnp.arrays(np.float32, (OUT,), elements=_floats),
    bias=hnp.arrays(np.float32, (OUT,), elements=_floats),
    x=hnp.arrays(np.float32, (5, IN), elements=_floats),
)
def test_same_dense_in_every_framework(direction, scale, bias, x):
    out = outputs(jnp.asarray(direction), jnp.asarray(scale), jnp.asarray(bias), jnp.asarray(x))
    assert_bitwise_equal(out["linen"], out["flax"])
    assert_bitwise_equal(out["haiku"], out["flax"])
    # Equinox multiplies weight @ x rather than x @ kernel: other rounding, same function.
    np.testing.assert_allclose(out["equinox"], out["flax"], rtol=1e-5, atol=1e-5)
    assert np.all(np.isfinite(out["equinox"]))
