"""Reference results computed by the real peer libraries, for comparisons."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np


class _Kernel(nn.Module):
    """A Linen module whose output is its own parameter named `kernel`."""

    shape: tuple[int, ...]
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self) -> Any:
        return self.param("kernel", nn.initializers.zeros, self.shape, self.param_dtype)


def flax_normalized(value: Any, scale: Any = None, **weight_norm_kwargs: Any) -> Any:
    """`value` as `flax.linen.WeightNorm` normalizes it (with `scale`, if given).

    Wraps a module whose output is its parameter, so flax's own code computes
    the normalized variable.
    """
    value = jnp.asarray(value)
    use_scale = scale is not None
    model = nn.WeightNorm(
        _Kernel(value.shape, value.dtype), use_scale=use_scale, **weight_norm_kwargs
    )
    params: dict[str, Any] = {"layer_instance": {"kernel": value}}
    if use_scale:
        params["layer_instance/kernel/scale"] = jnp.asarray(scale)
    return model.apply({"params": params})


def assert_bitwise_equal(actual: Any, expected: Any) -> None:
    """Equal values and equal dtypes."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    np.testing.assert_array_equal(actual, expected)
