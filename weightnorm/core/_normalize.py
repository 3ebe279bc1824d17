"""The math of weight normalization on flat dicts: scales, normalize, decompose."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._config import WeightNormConfig, resolve_feature_axes
from ._filters import matches
from ._primitive import squared_norm, weight_norm
from ._tree import check_flat

__all__ = [
    "scale_shapes",
    "normalize",
    "decompose",
    "SCALE_SUFFIX",
    "scale_path",
    "weight_path",
    "is_scale_path",
    "kept_axes",
]

SCALE_SUFFIX = "/scale"
"""Scales are keyed by the variable's path plus this suffix."""


def scale_path(path: str) -> str:
    """The key of the scale of the variable at `path`: `path + "/scale"`.

    Examples:
      >>> scale_path("Dense_0/kernel")
      'Dense_0/kernel/scale'
    """
    return path + SCALE_SUFFIX


def is_scale_path(key: str) -> bool:
    """Whether `key` names a scale (ends with `"/scale"` after a variable's path)."""
    return key.endswith(SCALE_SUFFIX) and len(key) > len(SCALE_SUFFIX)


def weight_path(key: str) -> str:
    """The path of the variable that the scale at `key` scales; the inverse of `scale_path`.

    Raises:
      ValueError: when `key` is not a scale's key.

    Examples:
      >>> weight_path("layers/0/weight/scale")
      'layers/0/weight'
    """
    if not is_scale_path(key):
        raise ValueError(
            f"{key!r} is not a scale's key: scales are keyed '<variable path>{SCALE_SUFFIX}'."
        )
    return key[: -len(SCALE_SUFFIX)]


class _Target(NamedTuple):
    """One selected variable and how it is reduced.

    `kept_axes` are its stacked and feature axes (sorted): those of the scale.
    """

    path: str
    shape: tuple[int, ...]
    kept_axes: tuple[int, ...]

    @property
    def scale_key(self) -> str:
        return scale_path(self.path)

    @property
    def scale_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[axis] for axis in self.kept_axes)

    @property
    def reduction_axes(self) -> tuple[int, ...]:
        return tuple(a for a in range(len(self.shape)) if a not in self.kept_axes)


def _check_config(config: Any) -> None:
    if not isinstance(config, WeightNormConfig):
        raise TypeError(
            f"Expected a WeightNormConfig, got {type(config).__name__}. "
            "Make one with `WeightNormConfig(...)`."
        )


def _check_inexact(path: str, leaf: Any) -> None:
    dtype = getattr(leaf, "dtype", None)
    if dtype is None:
        dtype = np.asarray(leaf).dtype
    dtype = jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.inexact):
        raise ValueError(
            f"Variable {path!r} has dtype {dtype}, but weight normalization needs "
            "a floating or complex array. Narrow `variable_filter` so that it "
            "does not select it."
        )


def kept_axes(path: str, shape: tuple[int, ...], config: WeightNormConfig) -> tuple[int, ...]:
    """The axes of a variable that keep their own norm: its stacked axes, then its feature
    axes counted within one layer's shape, as non-negative sorted ints.

    Raises:
      ValueError: naming `path` when the shape has too few axes for `stack_axes` or for
        `feature_axes`.

    Examples:
      >>> kept_axes("w", (2, 3, 4), WeightNormConfig(stack_axes=1, feature_axes=-1))
      (0, 2)
    """
    stack = config.stack_axes
    if len(shape) < stack:
        raise ValueError(
            f"Variable {path!r} with shape {shape} has fewer than `stack_axes={stack}` "
            "axes. Set `stack_axes` to the number of leading axes that index "
            "stacked layers, or narrow `variable_filter`."
        )
    layer_shape = shape[stack:]
    if stack and not layer_shape and config.feature_axes is not None:
        raise ValueError(
            f"Variable {path!r} with shape {shape} has no axes left after "
            f"`stack_axes={stack}`, so it has no feature axis {config.feature_axes!r}. "
            "Use `feature_axes=None`, or narrow `variable_filter`."
        )
    axes = resolve_feature_axes(path, layer_shape, config.feature_axes)
    return tuple(range(stack)) + tuple(stack + axis for axis in axes)


def _targets(flat: Mapping[str, Any], config: WeightNormConfig) -> list[_Target]:
    """The selected variables of `flat`, checked against the config."""
    check_flat(flat)
    _check_config(config)
    targets = []
    for path, leaf in flat.items():
        if not matches(config.variable_filter, path):
            continue
        _check_inexact(path, leaf)
        shape = tuple(np.shape(leaf))
        targets.append(_Target(path, shape, kept_axes(path, shape, config)))
    return targets


def scale_shapes(flat: Mapping[str, Any], config: WeightNormConfig) -> dict[str, tuple[int, ...]]:
    """The shape of the scale of every selected variable.

    A scale has one entry per feature: its shape is the variable's sizes at the
    feature axes, in sorted axis order. `feature_axes=None`
    gives a scalar scale `()`. With `use_scale=False` there are no scales.

    Args:
      flat: a flat `{path: array}` dict; only shapes and dtypes are read, so
        `jax.ShapeDtypeStruct`s work too.
      config: the weight-norm settings.

    Returns:
      `{"<path>/scale": shape}` for each selected variable, in `flat`'s order.

    Raises:
      ValueError: naming the path and shape when a feature axis is out of range
        for a selected variable, or a selected variable is not floating.

    Examples:
      >>> import jax.numpy as jnp
      >>> scale_shapes({"Conv_0/kernel": jnp.zeros((3, 3, 2, 8))}, WeightNormConfig())
      {'Conv_0/kernel/scale': (8,)}
    """
    targets = _targets(flat, config)
    if not config.use_scale:
        return {}
    return {t.scale_key: t.scale_shape for t in targets}


def _check_scales(
    scales: Mapping[str, Any] | None, targets: list[_Target], config: WeightNormConfig
) -> None:
    given = {} if scales is None else scales
    if not isinstance(given, Mapping):
        raise TypeError(
            f"`scales` must be a dict {{'<path>/scale': array}}, got {type(scales).__name__}."
        )
    if not config.use_scale:
        if given:
            raise ValueError(
                f"`use_scale=False` takes no scales, but got {sorted(given)}. "
                "Pass `scales=None` or set `use_scale=True`."
            )
        return
    wanted = {t.scale_key: t.scale_shape for t in targets}
    missing = [name for name in wanted if name not in given]
    extra = sorted(set(given) - set(wanted))
    if missing or extra:
        raise ValueError(
            f"The scales do not match the selected variables: missing {missing}, "
            f"unexpected {extra}. Make them with `init_scales(flat, config, key)` "
            "or `decompose(flat, config)`."
        )
    for name, shape in wanted.items():
        got = tuple(np.shape(given[name]))
        if got != shape:
            raise ValueError(
                f"Scale {name!r} has shape {got}, expected {shape} (the sizes of "
                f"the feature axes of {weight_path(name)!r})."
            )


def _result_dtype(config: WeightNormConfig, *arrays: jax.Array) -> Any:
    """The given dtype, else the promoted inexact one of the arrays."""
    if config.dtype is not None:
        return config.dtype
    return jnp.result_type(*arrays)


def _normalize_leaf(target: _Target, value: Any, scale: Any, config: WeightNormConfig) -> jax.Array:
    value = jnp.asarray(value)
    if scale is None:
        out_dtype = _result_dtype(config, value)
    else:
        scale = jnp.asarray(scale)
        out_dtype = _result_dtype(config, value, scale)
    return weight_norm(value, scale, target.reduction_axes, config.epsilon, out_dtype)


def normalize(
    flat: Mapping[str, Any],
    scales: Mapping[str, Any] | None,
    config: WeightNormConfig,
) -> dict[str, jax.Array]:
    """Weight-normalizes the selected variables of a flat dict.

    Each selected variable `v` becomes
    `scale * v * rsqrt(sum(|v|^2 over the non-feature axes) + epsilon)`
    (without `scale` when `use_scale=False`), cast to `config.dtype` or, when
    that is None, to the promoted dtype of `v` and its scale. For real arrays
    the operations and their order are the reference ones (docs/formula.md
    says which libraries that makes it bitwise equal to). Other variables are
    returned untouched.

    Args:
      flat: a flat `{path: array}` dict: the directions `v`.
      scales: `{"<path>/scale": array}` for every selected variable, shaped as
        `scale_shapes` says; None or empty when `use_scale=False`.
      config: the weight-norm settings.

    Returns:
      A dict with the same keys, in the same order, as `flat`.

    Raises:
      ValueError: naming the path when a scale is missing, unexpected or of the
        wrong shape, or a feature axis does not fit a selected variable.
      TypeError: for a `flat`, `scales` or `config` of the wrong type.

    Examples:
      >>> import jax.numpy as jnp
      >>> flat = {"Dense_0/kernel": jnp.array([[3.0], [4.0]]), "Dense_0/bias": jnp.ones(1)}
      >>> out = normalize(flat, {"Dense_0/kernel/scale": jnp.array([10.0])}, WeightNormConfig())
      >>> out["Dense_0/kernel"].ravel().tolist(), out["Dense_0/bias"].tolist()
      ([6.0, 8.0], [1.0])
    """
    targets = _targets(flat, config)
    _check_scales(scales, targets, config)
    out = dict(flat)
    for target in targets:
        scale = scales[target.scale_key] if config.use_scale else None
        out[target.path] = _normalize_leaf(target, flat[target.path], scale, config)
    return out


def decompose(flat: Mapping[str, Any], config: WeightNormConfig) -> dict[str, jax.Array]:
    """Scales that make `normalize` give back `flat` itself.

    For every selected variable `w` the scale is its norm over the non-feature
    axes, epsilon included: `g = sqrt(sum(|w|^2) + epsilon)`, so that
    `normalize(flat, decompose(flat, config), config)` equals `flat` up to
    rounding. This turns a plain trained model into a weight-normed one whose
    outputs are unchanged (`w` itself serves as the direction `v`).

    Args:
      flat: a flat `{path: array}` dict of plain weights.
      config: the weight-norm settings; `use_scale` must be True.

    Returns:
      `{"<path>/scale": array}` in `config.param_dtype`.

    Raises:
      ValueError: when `use_scale=False` (a unit-norm parametrisation cannot
        hold an arbitrary weight), and as `scale_shapes`.

    Examples:
      >>> import jax.numpy as jnp
      >>> decompose({"Dense_0/kernel": jnp.array([[3.0], [4.0]])}, WeightNormConfig())
      {'Dense_0/kernel/scale': Array([5.], dtype=float32)}
    """
    _check_config(config)
    if not config.use_scale:
        raise ValueError(
            "`decompose` needs `use_scale=True`: with `use_scale=False` every "
            "normalized variable has unit norm, so there is no scale to hold the "
            "weights' norms."
        )
    scales = {}
    for target in _targets(flat, config):
        value = jnp.asarray(flat[target.path])
        _, norms = squared_norm(value, target.reduction_axes, config.epsilon)
        norm = jnp.sqrt(norms).reshape(target.scale_shape)
        scales[target.scale_key] = jnp.asarray(norm, config.param_dtype)
    return scales
