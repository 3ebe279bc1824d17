"""Folding for inference: bake `scale * v / ||v||` into plain weights, and back."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax

from ._config import WeightNormConfig
from ._filters import select
from ._init import check_finite
from ._normalize import decompose, normalize, scale_shapes, weight_path
from ._warnings import warn_if_nothing_selected

__all__ = ["fold", "unfold"]


def fold(
    flat: Mapping[str, Any], scales: Mapping[str, Any] | None, config: WeightNormConfig
) -> dict[str, jax.Array]:
    """Plain weights for inference: each selected `v` becomes `scale * v / ||v||`.

    The result holds no scales and has exactly `flat`'s keys, so it loads into
    the plain (unwrapped) model, which then computes what the weight-normed
    model computes. It is `normalize` under the name of its use; `unfold` is
    the way back.

    Args:
      flat: the directions `v` (and every other variable), `{path: array}`.
      scales: `{"<path>/scale": array}`; None when `use_scale=False`.
      config: the weight-norm settings the model was trained with.

    Returns:
      `{path: array}` with the same keys and order as `flat`.

    Raises:
      ValueError, TypeError: as `normalize`; also when a selected direction
        holds NaN or inf (checked when the values are concrete).

    Examples:
      >>> import jax.numpy as jnp
      >>> from weightnorm import WeightNormConfig
      >>> flat = {"kernel": jnp.array([[3.0], [4.0]]), "bias": jnp.zeros(1)}
      >>> fold(flat, {"kernel/scale": jnp.array([10.0])}, WeightNormConfig())["kernel"].ravel()
      Array([6., 8.], dtype=float32)
    """
    scale_shapes(flat, config)  # checks `flat` and `config` first, naming the problem
    # Every selected direction, with or without a scale (`scale_shapes` is empty for
    # use_scale=False, so it cannot list them).
    check_finite(flat, select(flat, config.variable_filter), "the folded weight")
    return normalize(flat, scales, config)


def unfold(
    flat: Mapping[str, Any], config: WeightNormConfig
) -> tuple[dict[str, Any], dict[str, jax.Array]]:
    """Directions and scales whose `fold` gives back the plain weights `flat`.

    Each selected weight `w` is kept as its own direction and gets the scale
    `sqrt(sum(|w|^2) + epsilon)` (`decompose`), so
    `fold(*unfold(flat, config), config)` equals `flat` up to rounding: a plain
    (e.g. pretrained) model becomes a weight-normed one with the same outputs.

    Args:
      flat: plain weights `{path: array}`.
      config: the weight-norm settings; `use_scale` must be True.

    Returns:
      `(directions, scales)`: a copy of `flat`, and `{"<path>/scale": array}`.

    Raises:
      ValueError: when `use_scale=False`, a selected weight holds NaN or inf,
        or as `scale_shapes`.

    Examples:
      >>> import jax.numpy as jnp
      >>> from weightnorm import WeightNormConfig
      >>> directions, scales = unfold({"kernel": jnp.array([[3.0], [4.0]])}, WeightNormConfig())
      >>> scales
      {'kernel/scale': Array([5.], dtype=float32)}
    """
    scales = decompose(flat, config)
    warn_if_nothing_selected(flat, config)
    check_finite(flat, [weight_path(name) for name in scales], "its scale")
    return dict(flat), scales
