"""Equinox wrappers as port sources: their own feature axes and epsilon are read, not guessed."""

from __future__ import annotations

import equinox as eqx
import jax
import numpy as np
import pytest

from weightnorm import port
from weightnorm.adapters import equinox as we


@pytest.mark.parametrize(
    ("settings", "transform"),
    [
        ({"feature_axes": 1}, "weight norm refolded"),  # a square layer: the shape can't tell
        ({"epsilon": 1.0}, "weight norm refolded"),  # same axes, a different epsilon
        ({}, "weight norm copied"),
    ],
)
def test_wrapper_settings_travel_with_the_port(settings, transform):
    source = we.WeightNorm(eqx.nn.Linear(4, 4, key=jax.random.key(0)), **settings)
    like = we.WeightNorm(eqx.nn.Linear(4, 4, key=jax.random.key(1)))
    ported, pairs = port.convert(source, src="equinox", dst="equinox", like=like, report=True)
    assert transform in pairs[0].transform
    x = np.random.default_rng(0).standard_normal((4,)).astype(np.float32)
    np.testing.assert_allclose(ported(x), source(x), rtol=1e-5, atol=1e-6)
