"""Scale initialization: "ones", "norm" or a callable, and the data-dependent arithmetic."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeAlias

import jax
import jax.numpy as jnp
import numpy as np

from ._config import WeightNormConfig
from ._normalize import decompose, scale_shapes, weight_path
from ._warnings import warn_if_nothing_selected

__all__ = ["KeySource", "init_scales", "needs_key", "data_dependent_scale_bias", "check_finite"]

KeySource: TypeAlias = jax.Array | Callable[[], jax.Array] | None
"""A PRNG key, a function that draws one (`rngs.params`, `hk.next_rng_key`), or None."""

#: Initializers that take a key but never use it: they need none (frameworks
#: that re-export jax's initializers re-export these same functions).
_KEYLESS_INITIALIZERS = (jax.nn.initializers.ones, jax.nn.initializers.zeros)
#: Every `jax.nn.initializers.constant(value)` closure shares this code object.
_CONSTANT_CODE = jax.nn.initializers.constant(0.0).__code__


def needs_key(scale_init: Any) -> bool:
    """Whether a `scale_init` needs a PRNG key: the one rule of every adapter.

    `"ones"` and `"norm"` never do, nor do jax's `ones`, `zeros` and
    `constant(value)` initializers, recognised by identity; any other
    callable does. The rule is decided
    before calling, never by calling and retrying, so a deterministic
    `scale_init` leaves every random stream as it was, and a random one that
    lacks a key is refused with a message, not called.

    Examples:
      >>> needs_key("norm"), needs_key(jax.nn.initializers.constant(2.0))
      (False, False)
      >>> needs_key(jax.nn.initializers.normal(1.0))
      True
    """
    if isinstance(scale_init, str) or getattr(scale_init, "__code__", None) is _CONSTANT_CODE:
        return False
    return not any(scale_init is keyless for keyless in _KEYLESS_INITIALIZERS)


def check_finite(flat: Mapping[str, Any], paths: Any, what: str) -> None:
    """Raises ValueError naming the first of `paths` holding NaN or inf.

    Traced values (inside `jit`, `grad`, ...) cannot be inspected and are skipped.
    """
    for path in paths:
        value = flat[path]
        if isinstance(value, jax.core.Tracer):
            continue
        array = np.asarray(value)
        if jnp.issubdtype(array.dtype, jnp.inexact) and not np.isfinite(array).all():
            raise ValueError(
                f"Variable {path!r} holds NaN or inf, so {what} would be NaN. "
                "Fix or re-initialize that variable first."
            )


def init_scales(
    flat: Mapping[str, Any], config: WeightNormConfig, key: KeySource = None
) -> dict[str, jax.Array]:
    """New scales for every selected variable, as `config.scale_init` says.

    - `"ones"` (default): every scale is 1.
    - `"norm"`: every scale is its variable's norm, `sqrt(sum(|v|^2) + epsilon)`
      over the non-feature axes (as `decompose` computes it), so
      `normalize(flat, scales, config)` gives back `flat` up to rounding:
      wrapping a layer leaves its function unchanged. Needs concrete, finite variables.
    - a callable `(key, shape, dtype) -> array`: called once per scale, each
      with its own key split from `key` in `flat`'s order.

    Warns with `NoVariableSelectedWarning` when `flat` has variables but the
    filter selects none of them.

    Args:
      flat: a flat `{path: array}` dict.
      config: the weight-norm settings (`scale_init`, `param_dtype`).
      key: a PRNG key, or a function that draws one (called once, and only
        when `scale_init` needs a key, see `needs_key`); may be None when it
        needs none.

    Returns:
      `{"<path>/scale": array}` shaped as `scale_shapes` says, in
      `config.param_dtype`; empty when `use_scale=False`.

    Raises:
      ValueError: as `scale_shapes`; for `"norm"`, when a selected variable
        holds NaN or inf; for a callable, when it returns the wrong shape or
        needs a key and none is given.
      TypeError: for a `flat` or `config` of the wrong type.

    Examples:
      >>> import jax.numpy as jnp
      >>> flat = {"Dense_0/kernel": jnp.array([[3.0], [4.0]])}
      >>> init_scales(flat, WeightNormConfig())
      {'Dense_0/kernel/scale': Array([1.], dtype=float32)}
      >>> init_scales(flat, WeightNormConfig(scale_init="norm"))
      {'Dense_0/kernel/scale': Array([5.], dtype=float32)}
    """
    shapes = scale_shapes(flat, config)  # checks flat, config and the axes first
    warn_if_nothing_selected(flat, config)
    if not shapes:
        return {}
    if config.scale_init == "ones":
        return {name: jnp.ones(shape, config.param_dtype) for name, shape in shapes.items()}
    if config.scale_init == "norm":
        check_finite(flat, [weight_path(name) for name in shapes], "its norm")
        return decompose(flat, config)
    return _call_scale_init(shapes, config, key)


def _call_scale_init(
    shapes: Mapping[str, tuple[int, ...]], config: WeightNormConfig, key: KeySource
) -> dict[str, jax.Array]:
    """A callable `scale_init`'s scales: one call per scale, each with its own key."""
    if not needs_key(config.scale_init):
        keys = [None] * len(shapes)
    else:
        if callable(key):
            key = key()
        if key is None:
            raise ValueError(
                f"`scale_init` needs a PRNG key to make {next(iter(shapes))!r}: pass "
                "`key=jax.random.key(...)`, or use `scale_init='ones'` or `'norm'`."
            )
        keys = list(jax.random.split(key, len(shapes)))
    scales = {}
    for (name, shape), scale_key in zip(shapes.items(), keys, strict=True):
        scale = config.scale_init(scale_key, shape, config.param_dtype)
        if tuple(jnp.shape(scale)) != shape:
            raise ValueError(
                f"`scale_init` returned shape {tuple(jnp.shape(scale))} for {name!r}, "
                f"expected {shape}."
            )
        scales[name] = scale
    return scales


def data_dependent_scale_bias(
    preactivations: Any, *, feature_axis: int = -1, epsilon: float = 1e-6
) -> tuple[jax.Array, jax.Array]:
    """The data-dependent initialization of Salimans & Kingma (2016), section 3.

    `preactivations` are a layer's outputs `t = x . v / ||v||` on a batch,
    computed with the normalized direction, a scale of 1 and a bias of 0.
    With `mean` and `var` their per-feature moments (over every axis but
    `feature_axis`), the layer gets `scale = 1 / sqrt(var + epsilon)` and
    `bias = -mean * scale`, so that its new outputs `scale * t + bias` have
    mean 0 and standard deviation 1 per feature on that batch. (TensorFlow
    Addons takes the moments of the outputs of the unnormalized `v` and the
    initial bias instead, which does not give unit variance.)

    Args:
      preactivations: an array with at least one axis besides the feature axis.
      feature_axis: the axis of the output features.
      epsilon: added to the variance; keeps a constant feature finite.

    Returns:
      `(scale, bias)`, each shaped `(n_features,)`, in float32 or wider.

    Raises:
      ValueError: when the feature axis is out of range, there is nothing to
        average over, or the pre-activations hold NaN or inf.

    Examples:
      >>> import jax.numpy as jnp
      >>> scale, bias = data_dependent_scale_bias(jnp.array([[1.0], [3.0]]), epsilon=0.0)
      >>> scale.tolist(), bias.tolist()
      ([1.0], [-2.0])
    """
    t = jnp.asarray(preactivations)
    if not jnp.issubdtype(t.dtype, jnp.floating):
        raise ValueError(f"Pre-activations must be a real floating array, got dtype {t.dtype}.")
    if not -t.ndim <= feature_axis < t.ndim or t.ndim < 2:
        raise ValueError(
            f"Pre-activations of shape {t.shape} need a feature axis {feature_axis} and at "
            "least one more axis (the batch) to take moments over."
        )
    if not isinstance(t, jax.core.Tracer) and not np.isfinite(np.asarray(t)).all():
        raise ValueError("Pre-activations hold NaN or inf; check the batch and the weights.")
    t = jnp.moveaxis(t, feature_axis, -1)
    t = t.reshape(-1, t.shape[-1]).astype(jnp.promote_types(t.dtype, jnp.float32))
    mean = t.mean(axis=0)
    scale = jax.lax.rsqrt(t.var(axis=0) + epsilon)
    return scale, -mean * scale
