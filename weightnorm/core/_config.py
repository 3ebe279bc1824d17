"""`WeightNormConfig`: every setting of weight normalization in one hashable value."""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable, Iterable
from typing import Any

import jax.numpy as jnp
import numpy as np

from ._filters import VariableFilter, canonical_filter

__all__ = ["WeightNormConfig", "FeatureAxes", "resolve_feature_axes"]

FeatureAxes = int | tuple[int, ...] | None
"""One axis, several axes (any order, negatives allowed), or None for one norm
over the whole array."""


def _inexact_dtype(name: str, value: Any) -> np.dtype:
    try:
        dtype = jnp.dtype(value)
    except TypeError as error:
        raise TypeError(f"`{name}` must be a dtype, got {value!r}.") from error
    if not jnp.issubdtype(dtype, jnp.inexact):
        raise ValueError(f"`{name}` must be a floating or complex dtype, got {dtype}.")
    return dtype


def _is_int(value: Any) -> bool:
    """A Python or NumPy integer, or a 0-d integer array; never a bool."""
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, numbers.Integral):
        return True
    return np.ndim(value) == 0 and jnp.issubdtype(np.asarray(value).dtype, jnp.integer)


def _feature_axes(value: Any) -> FeatureAxes:
    if value is None:
        return None
    if _is_int(value):
        return int(value)
    if isinstance(value, Iterable) and not isinstance(value, (str, bytes)):
        axes = tuple(value)
        for axis in axes:
            if not _is_int(axis):
                raise TypeError(f"`feature_axes` must hold ints, got {axis!r} in {value!r}.")
        axes = tuple(int(axis) for axis in axes)
        if len(set(axes)) != len(axes):
            raise ValueError(f"`feature_axes` {value!r} names an axis twice.")
        # No feature axis means one norm over the whole array, as None does.
        return axes or None
    raise TypeError(f"`feature_axes` must be an int, a tuple of ints or None, got {value!r}.")


def _epsilon(value: Any) -> float:
    """A finite float >= 0 from a Python number or a 0-d floating array."""
    is_real = isinstance(value, numbers.Real) or (
        np.ndim(value) == 0
        and hasattr(value, "dtype")
        and jnp.issubdtype(np.asarray(value).dtype, jnp.floating)
    )
    if not is_real or isinstance(value, (bool, np.bool_)):
        raise TypeError(f"`epsilon` must be a real number, got {value!r}.")
    epsilon = float(value)
    if not (epsilon >= 0.0 and np.isfinite(epsilon)):
        raise ValueError(f"`epsilon` must be finite and >= 0, got {value!r}.")
    return epsilon


#: The scale initializations named by a string; any other `scale_init` is a callable.
SCALE_INITS = ("ones", "norm")


def _check_scale_init(value: Any) -> None:
    if isinstance(value, str):
        if value not in SCALE_INITS:
            raise ValueError(
                f"`scale_init` {value!r} is not one of {SCALE_INITS}; pass one of them "
                "or an initializer `(key, shape, dtype) -> array`."
            )
    elif not callable(value):
        raise TypeError(
            f"`scale_init` must be one of {SCALE_INITS} or an initializer "
            f"`(key, shape, dtype) -> array`, got {value!r}."
        )


@dataclasses.dataclass(frozen=True)
class WeightNormConfig:
    """Every setting of weight normalization, with the usual defaults (docs/formula.md).

    The config is frozen and hashable, so it can be a static field of a module
    or a static argument of `jax.jit`. Values are checked and put in a canonical
    form when it is made: dtypes become `numpy.dtype`s, a list of axes a tuple,
    and `variable_filter` a frozenset of strings, None or the predicate given.

    Attributes:
      epsilon: added to the sum of squares inside the square root:
        `v * rsqrt(sum(v * v) + epsilon)`. Must be >= 0.
      dtype: dtype of the normalized variables; None means the promoted dtype
        of the variable and its scale.
      param_dtype: dtype of the scales that `init_scales` and `decompose` make.
      use_scale: whether a learnable scale multiplies each normalized variable.
      scale_init: how `init_scales` makes the scales: `"ones"` (the
        default), `"norm"` (each scale is the norm of its variable, so the
        normalized variable equals the variable and wrapping a layer leaves
        its function unchanged), or an
        initializer `(key, shape, dtype) -> array`. For data-dependent
        initialization see `data_dependent_scale_bias` and the adapters'
        `data_dependent_init`.
      feature_axes: the axes that keep their own norm and scale (an int, a
        tuple of ints in any order, negatives allowed); every other axis is
        reduced. None (or `()`) means one norm over the whole array, with a
        scalar scale.
      variable_filter: which variables to normalize: None or an empty iterable
        for every variable, a string or an iterable of strings (a variable is
        selected when one of them is a substring of its path; a
        bare string is one item), or a predicate on the '/'-joined path.
      stack_axes: how many leading axes index layers of a stack (from
        `nn.scan`/`nn.vmap`, `hk.layer_stack` or `eqx.filter_vmap`) when the
        weight norm wraps the stack from outside: they are kept out of the
        reduction, so each layer keeps its own norm and scale (the scale's
        shape starts with them), and `feature_axes` count within one layer's
        shape (so 0 is a layer's first axis). Default 0.

    Raises:
      TypeError, ValueError: for a value of the wrong type or out of range.

    Examples:
      >>> config = WeightNormConfig(feature_axes=(0, -1), variable_filter="kernel")
      >>> config.variable_filter
      frozenset({'kernel'})
      >>> hash(config) == hash(WeightNormConfig(feature_axes=[0, -1], variable_filter={"kernel"}))
      True
    """

    epsilon: float = 1e-12
    dtype: Any = None
    param_dtype: Any = jnp.float32
    use_scale: bool = True
    scale_init: str | Callable[..., Any] = "ones"
    feature_axes: FeatureAxes = -1
    variable_filter: VariableFilter = frozenset({"kernel"})
    stack_axes: int = 0

    def __post_init__(self) -> None:
        set_field = object.__setattr__
        set_field(self, "epsilon", _epsilon(self.epsilon))
        if self.dtype is not None:
            set_field(self, "dtype", _inexact_dtype("dtype", self.dtype))
        set_field(self, "param_dtype", _inexact_dtype("param_dtype", self.param_dtype))
        if not isinstance(self.use_scale, (bool, np.bool_)):
            raise TypeError(f"`use_scale` must be a bool, got {self.use_scale!r}.")
        set_field(self, "use_scale", bool(self.use_scale))
        _check_scale_init(self.scale_init)
        set_field(self, "feature_axes", _feature_axes(self.feature_axes))
        set_field(self, "variable_filter", canonical_filter(self.variable_filter))
        if not _is_int(self.stack_axes):
            raise TypeError(f"`stack_axes` must be an int, got {self.stack_axes!r}.")
        if int(self.stack_axes) < 0:
            raise ValueError(
                "`stack_axes` must be >= 0 (the number of leading axes that index "
                f"stacked layers), got {self.stack_axes!r}."
            )
        set_field(self, "stack_axes", int(self.stack_axes))

    def replace(self, **changes: Any) -> WeightNormConfig:
        """A copy with some fields changed (and checked again)."""
        return dataclasses.replace(self, **changes)


def resolve_feature_axes(
    path: str, shape: tuple[int, ...], feature_axes: FeatureAxes
) -> tuple[int, ...]:
    """The feature axes of one variable as sorted non-negative ints.

    Raises:
      ValueError: naming the variable's path and shape when an axis is out of
        range or two axes name the same dimension.
    """
    if feature_axes is None:
        return ()
    axes = (feature_axes,) if isinstance(feature_axes, int) else feature_axes
    ndim = len(shape)
    if ndim == 0:
        raise ValueError(
            f"Variable {path!r} is a scalar (shape ()), so it has no feature axis "
            f"{feature_axes!r}. Use `feature_axes=None`, or narrow `variable_filter` "
            "so that it does not select it."
        )
    resolved = []
    for axis in axes:
        if not -ndim <= axis < ndim:
            raise ValueError(
                f"Feature axis {axis} is out of range for variable {path!r} with "
                f"shape {tuple(shape)}: expected an axis in [{-ndim}, {ndim - 1}]. "
                "Choose `feature_axes` that fit every selected variable, or narrow "
                "`variable_filter`."
            )
        resolved.append(axis % ndim)
    if len(set(resolved)) != len(resolved):
        raise ValueError(
            f"`feature_axes` {feature_axes!r} names the same axis twice for "
            f"variable {path!r} with shape {tuple(shape)}."
        )
    return tuple(sorted(resolved))
