"""Scale initialization: "ones", "norm" or a callable, and the data-dependent arithmetic."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._config import WeightNormConfig
from ._normalize import SCALE_SUFFIX, decompose, scale_shapes
from ._warnings import warn_if_nothing_selected

__all__ = [
    "CallRecorder",
    "one_scale_per_layer",
    "two_scales_error",
    "init_scales",
    "data_dependent_scale_bias",
    "check_finite",
    "data_init_in_order",
]


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
    flat: Mapping[str, Any], config: WeightNormConfig, key: jax.Array | None = None
) -> dict[str, jax.Array]:
    """New scales for every selected variable, as `config.scale_init` says.

    - `"ones"` (default, flax's): every scale is 1.
    - `"norm"`: every scale is its variable's norm, `sqrt(sum(|v|^2) + epsilon)`
      over the non-feature axes (as `decompose` computes it), so
      `normalize(flat, scales, config)` gives back `flat` up to rounding:
      wrapping a layer leaves its function unchanged (torch's and equinox's
      behaviour). Needs concrete, finite variables.
    - a callable `(key, shape, dtype) -> array`: called once per scale, each
      with its own key split from `key` in `flat`'s order.

    Warns with `NoVariableSelectedWarning` when `flat` has variables but the
    filter selects none of them.

    Args:
      flat: a flat `{path: array}` dict.
      config: the weight-norm settings (`scale_init`, `param_dtype`).
      key: a PRNG key; may be None when `scale_init` needs no randomness
        (`"ones"` and `"norm"` never do).

    Returns:
      `{"<path>/scale": array}` shaped as `scale_shapes` says, in
      `config.param_dtype`; empty when `use_scale=False`.

    Raises:
      ValueError: as `scale_shapes`; for `"norm"`, when a selected variable
        holds NaN or inf; for a callable, when it returns the wrong shape or
        fails without a key.
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
        check_finite(flat, [name[: -len(SCALE_SUFFIX)] for name in shapes], "its norm")
        return decompose(flat, config)
    return _call_scale_init(shapes, config, key)


def _call_scale_init(
    shapes: Mapping[str, tuple[int, ...]], config: WeightNormConfig, key: jax.Array | None
) -> dict[str, jax.Array]:
    """A callable `scale_init`'s scales: one call per scale, each with its own key."""
    keys = [None] * len(shapes) if key is None else list(jax.random.split(key, len(shapes)))
    scales = {}
    for (name, shape), scale_key in zip(shapes.items(), keys, strict=True):
        try:
            scale = config.scale_init(scale_key, shape, config.param_dtype)
        except Exception as error:
            if key is None and _needs_key(config, shape):
                raise ValueError(
                    f"`scale_init` needs a PRNG key to make {name!r}: pass "
                    "`key=jax.random.key(...)`."
                ) from error
            raise
        if tuple(jnp.shape(scale)) != shape:
            raise ValueError(
                f"`scale_init` returned shape {tuple(jnp.shape(scale))} for {name!r}, "
                f"expected {shape}."
            )
        scales[name] = scale
    return scales


def _needs_key(config: WeightNormConfig, shape: tuple[int, ...]) -> bool:
    """Whether `scale_init` works with a key where it failed without one."""
    try:
        config.scale_init(jax.random.key(0), shape, config.param_dtype)
    except Exception:
        return False
    return True


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


def data_init_in_order(
    flat: Mapping[str, Any],
    owners: Mapping[str, str],
    bias_name: str,
    run: Callable[[dict[str, Any], set[str]], list[tuple[str, Any]]],
    *,
    feature_axis: int,
    epsilon: float,
) -> dict[str, Any]:
    """Data-dependent init of several layers, one after another (for the adapters).

    Args:
      flat: every parameter of the model, `{path: array}`.
      owners: `{layer path: path of its scale in flat}` for every wrapped layer.
      bias_name: the name of a layer's bias; `"<layer path>/<bias_name>"` in
        `flat` is the layer's bias, if there.
      run: `(flat, layer paths) -> [(layer path, output), ...]`: runs the model
        with the parameters `flat` and returns the outputs of the calls of
        those layers, in call order.
      feature_axis: the axis of the output features in those outputs.
      epsilon: added to the variance.

    Returns:
      `flat` with the scales and biases of the layers set: each layer is
      initialized on the outputs of the layers called before it, already
      initialized.

    Raises:
      ValueError: when a layer is not called, or its scale or bias is not one
        per output feature.
    """
    flat = dict(flat)
    order = list(dict.fromkeys(layer for layer, _ in run(flat, set(owners))))
    missing = sorted(set(owners) - set(order))
    if missing:
        raise ValueError(f"The wrapped layers {missing} were not called on this batch.")
    for layer in order:
        scale_path = owners[layer]
        bias_path = f"{layer}/{bias_name}" if f"{layer}/{bias_name}" in flat else None
        old_scale = jnp.asarray(flat[scale_path])
        flat[scale_path] = jnp.ones_like(old_scale)
        if bias_path is not None:
            flat[bias_path] = jnp.zeros_like(flat[bias_path])
        t = jnp.asarray(run(flat, {layer})[0][1])
        scale, bias = data_dependent_scale_bias(t, feature_axis=feature_axis, epsilon=epsilon)
        if old_scale.shape != scale.shape:
            raise ValueError(
                f"Data-dependent init needs one scale per output feature, but scale "
                f"{scale_path!r} has shape {old_scale.shape} and the layer has "
                f"{scale.shape[0]} output features. Use the layer's output-feature axis "
                "as `feature_axes` (the default)."
            )
        flat[scale_path] = scale.astype(old_scale.dtype)
        if bias_path is not None:
            old_bias = jnp.asarray(flat[bias_path])
            if old_bias.shape != bias.shape:
                raise ValueError(
                    f"Bias {bias_path!r} has shape {old_bias.shape}, expected {bias.shape} "
                    "(one per output feature) for data-dependent init."
                )
            flat[bias_path] = bias.astype(old_bias.dtype)
    return flat


class CallRecorder:
    """Calls a layer and appends `(name, output)` to `calls`.

    The Equinox and NNX `data_dependent_init`s put one in place of each wrapped
    layer of a per-call copy of the model, to collect its pre-activations in
    call order.
    """

    def __init__(self, layer: Any, name: str, calls: list[tuple[str, Any]]) -> None:
        self.layer, self.name, self.calls = layer, name, calls

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out = self.layer(*args, **kwargs)
        self.calls.append((self.name, out))
        return out


def two_scales_error(layer: str, first: str, second: str) -> ValueError:
    """The error for a layer with two normalized params, which data-dependent init refuses."""
    return ValueError(
        f"Data-dependent init sets one scale per layer, but layer {layer!r} has two "
        f"normalized params ({first!r} and {second!r}). Select only its weight (the "
        "default `variable_filter`)."
    )


def one_scale_per_layer(pairs: Any) -> dict[str, str]:
    """`{layer path: scale path}` from `(layer path, scale path)` pairs.

    Raises:
      ValueError: when a layer appears twice (two normalized params), rather
        than keeping one of its scales and silently leaving the other alone.
    """
    owners: dict[str, str] = {}
    for layer, scale in pairs:
        if layer in owners:
            raise two_scales_error(layer, owners[layer], scale)
        owners[layer] = scale
    return owners
