"""Hypothesis strategies for weight-norm tests: dtypes, arrays, param dicts, configs, scales."""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax.numpy as jnp
import numpy as np
from hypothesis.errors import InvalidArgument

from ..core import WeightNormConfig, scale_shapes, select

__all__ = [
    "float_dtypes",
    "float_arrays",
    "param_dicts",
    "weight_norm_configs",
    "scale_dicts",
]

#: The dtypes `float_dtypes` draws from, most precise first.
FLOAT_DTYPES = (np.dtype(jnp.float32), np.dtype(jnp.bfloat16), np.dtype(jnp.float16))

_NAMES = ("kernel", "bias", "w", "b", "weight", "embedding")


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidArgument(f"Expected an int for `{name}`, got {name}={value!r}.")
    if value < low:
        raise InvalidArgument(f"Expected `{name}` >= {low}, got {name}={value!r}.")
    return int(value)


def _check_range(low_name: str, low: int, high_name: str, high: int) -> None:
    if low > high:
        raise InvalidArgument(
            f"Expected `{low_name}` <= `{high_name}`, got "
            f"{low_name}={low!r} > {high_name}={high!r}."
        )


def _float_dtype(dtype: Any) -> np.dtype:
    try:
        dtype = np.dtype(dtype)
    except TypeError as error:
        raise InvalidArgument(f"Expected a floating dtype, got dtype={dtype!r}.") from error
    if dtype not in (*FLOAT_DTYPES, np.dtype(np.float64)):
        raise InvalidArgument(
            f"Expected one of float64, float32, bfloat16, float16, got dtype={dtype}."
        )
    return dtype


def float_dtypes(*, half: bool = True) -> st.SearchStrategy[np.dtype]:
    """The floating dtypes weight norm is used with: float32, and bfloat16, float16 if `half`.

    float64 is left out because jax computes in float32 unless x64 is enabled.

    Examples:
      >>> from hypothesis import find
      >>> find(float_dtypes(), lambda dtype: dtype.itemsize == 2)
      dtype(bfloat16)
    """
    if not isinstance(half, bool):
        raise InvalidArgument(f"Expected a bool for `half`, got half={half!r}.")
    return st.sampled_from(FLOAT_DTYPES if half else FLOAT_DTYPES[:1])


def float_arrays(
    shape: int | Sequence[int] | st.SearchStrategy[tuple[int, ...]],
    *,
    dtype: Any = np.float32,
    min_value: float = -4.0,
    max_value: float = 4.0,
) -> st.SearchStrategy[np.ndarray]:
    """Finite NumPy arrays of a floating dtype (bfloat16 included), built on `hnp.arrays`.

    Elements are drawn in float32 between `min_value` and `max_value` (so
    zeros, tiny values, repeated values and all-zero rows show up) and then
    cast to `dtype`.

    Args:
      shape: a shape, or a strategy of shapes (e.g. `hnp.array_shapes()`).
      dtype: float64, float32, bfloat16 or float16.
      min_value: the smallest element (finite).
      max_value: the largest element (finite).

    Raises:
      InvalidArgument: for another dtype, a bad shape or range.

    Examples:
      >>> from hypothesis import find
      >>> find(float_arrays((2, 3), dtype="bfloat16"), lambda a: True).dtype
      dtype(bfloat16)
    """
    dtype = _float_dtype(dtype)
    for name, value in (("min_value", min_value), ("max_value", max_value)):
        if not isinstance(value, numbers.Real) or not np.isfinite(value):
            raise InvalidArgument(f"Expected a finite number for `{name}`, got {value!r}.")
    _check_range("min_value", min_value, "max_value", max_value)
    if not isinstance(shape, st.SearchStrategy):
        shape = (shape,) if isinstance(shape, numbers.Integral) else tuple(shape)
        for side in shape:
            _check_int("shape", side, 0)
    base = np.float64 if dtype == np.float64 else np.float32
    elements = st.floats(min_value, max_value, width=64 if base == np.float64 else 32)
    return hnp.arrays(base, shape, elements=elements).map(lambda array: array.astype(dtype))


@st.composite
def _param_dicts(
    draw: Any,
    min_leaves: int,
    max_leaves: int,
    min_dims: int,
    max_dims: int,
    max_side: int,
    dtypes: st.SearchStrategy[np.dtype],
) -> dict[str, np.ndarray]:
    count = draw(st.integers(min_leaves, max_leaves))
    layers = draw(st.lists(st.integers(0, 20), min_size=count, max_size=count))
    names = draw(st.lists(st.sampled_from(_NAMES), min_size=count, max_size=count))
    flat: dict[str, np.ndarray] = {}
    for layer, name in zip(layers, names, strict=True):
        path = f"Layer_{layer}/{name}"
        if path in flat:
            continue
        shape = draw(hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, max_side=max_side))
        flat[path] = draw(float_arrays(shape, dtype=draw(dtypes)))
    return flat


def param_dicts(
    *,
    min_leaves: int = 1,
    max_leaves: int = 4,
    min_dims: int = 1,
    max_dims: int = 4,
    max_side: int = 5,
    dtypes: st.SearchStrategy[np.dtype] | None = None,
) -> st.SearchStrategy[dict[str, np.ndarray]]:
    """Flat `{path: array}` dicts like the ones `weightnorm.flatten` makes.

    Paths are `"Layer_<n>/<name>"` with names Linen, Haiku and Equinox use
    (`kernel`, `bias`, `w`, `b`, `weight`, `embedding`); shapes have between
    `min_dims` and `max_dims` axes of 1 to `max_side` entries (every axis is
    non-empty); values are finite, zeros included.

    Args:
      min_leaves: the fewest variables (at least 1).
      max_leaves: the most variables.
      min_dims: the fewest axes of a variable (at least 1; scalars have no
        feature axis).
      max_dims: the most axes of a variable.
      max_side: the largest size of an axis.
      dtypes: a strategy of dtypes (default: float32 only; pass
        `float_dtypes()` for half precision too).

    Raises:
      InvalidArgument: for counts that are not ints, out of range or crossed.

    Examples:
      >>> from hypothesis import find
      >>> flat = find(param_dicts(), lambda flat: len(flat) == 2)
      >>> {path: value.shape for path, value in flat.items()}
      {'Layer_0/kernel': (1,), 'Layer_0/bias': (1,)}
    """
    min_leaves = _check_int("min_leaves", min_leaves, 1)
    max_leaves = _check_int("max_leaves", max_leaves, 1)
    _check_range("min_leaves", min_leaves, "max_leaves", max_leaves)
    min_dims = _check_int("min_dims", min_dims, 1)
    max_dims = _check_int("max_dims", max_dims, 1)
    _check_range("min_dims", min_dims, "max_dims", max_dims)
    max_side = _check_int("max_side", max_side, 1)
    if dtypes is None:
        dtypes = float_dtypes(half=False)
    elif not isinstance(dtypes, st.SearchStrategy):
        raise InvalidArgument(f"Expected a strategy of dtypes for `dtypes`, got {dtypes!r}.")
    return _param_dicts(min_leaves, max_leaves, min_dims, max_dims, max_side, dtypes)


def _check_flat(flat: Any) -> dict[str, tuple[int, ...]]:
    if not isinstance(flat, Mapping) or not flat:
        raise InvalidArgument(f"Expected a non-empty flat dict {{path: array}}, got {flat!r}.")
    shapes = {}
    for path, value in flat.items():
        if not isinstance(path, str):
            raise InvalidArgument(f"Expected string paths in `flat`, got {path!r}.")
        shapes[path] = tuple(np.shape(value))
    if all(len(shape) == 0 for shape in shapes.values()):
        raise InvalidArgument("Every variable of `flat` is a scalar, so none can be normalized.")
    return shapes


@st.composite
def _configs(draw: Any, shapes: dict[str, tuple[int, ...]], use_scale: bool | None) -> Any:
    candidates = sorted(path for path, shape in shapes.items() if shape)
    chosen = draw(st.lists(st.sampled_from(candidates), min_size=1, unique=True))
    # Exact paths as substrings can select more paths (flax's rule): look at all of them.
    selected = select(shapes, chosen)
    ndim = min(len(shapes[path]) for path in selected)
    if ndim == 0:  # a scalar is selected too: only one norm per array fits it
        feature_axes: Any = None
    else:
        negative = draw(st.booleans())
        axes = range(-ndim, 0) if negative else range(ndim)
        feature_axes = draw(
            st.one_of(
                st.none(),
                st.sampled_from(list(axes)),
                st.lists(st.sampled_from(list(axes)), min_size=1, max_size=ndim, unique=True),
            )
        )
    return WeightNormConfig(
        epsilon=draw(st.sampled_from([1e-12, 1e-6, 1e-3])),
        use_scale=draw(st.booleans()) if use_scale is None else use_scale,
        scale_init=draw(st.sampled_from(["ones", "norm"])),
        feature_axes=feature_axes,
        variable_filter=chosen,
    )


def weight_norm_configs(
    flat: Mapping[str, Any], *, use_scale: bool | None = None
) -> st.SearchStrategy[WeightNormConfig]:
    """`WeightNormConfig`s that are valid for the variables of `flat`.

    The filter selects a non-empty set of `flat`'s non-scalar variables (by
    their paths); the feature axes (None, one axis or several, all
    non-negative or all negative) fit every selected variable; epsilon,
    `scale_init` ("ones" or "norm") and, unless given, `use_scale` vary.

    Args:
      flat: a flat `{path: array}` dict (e.g. drawn from `param_dicts()`).
      use_scale: fix `use_scale`, or None to draw it.

    Raises:
      InvalidArgument: when `flat` is not a non-empty dict with string keys
        and at least one non-scalar variable, or `use_scale` is not a bool.

    Examples:
      >>> import numpy as np
      >>> from hypothesis import find
      >>> config = find(weight_norm_configs({"Dense_0/kernel": np.ones((2, 3))}), lambda c: True)
      >>> sorted(config.variable_filter), config.feature_axes
      (['Dense_0/kernel'], None)
    """
    shapes = _check_flat(flat)
    if use_scale is not None and not isinstance(use_scale, bool):
        raise InvalidArgument(f"Expected a bool or None for `use_scale`, got {use_scale!r}.")
    return _configs(shapes, use_scale)


def scale_dicts(
    flat: Mapping[str, Any],
    config: WeightNormConfig,
    *,
    min_value: float = -4.0,
    max_value: float = 4.0,
) -> st.SearchStrategy[dict[str, np.ndarray]]:
    """`{"<path>/scale": array}` for every variable `config` selects in `flat`.

    Shapes are as `weightnorm.scale_shapes` says, dtype `config.param_dtype`;
    empty when `use_scale=False`.

    Raises:
      InvalidArgument: when `flat` or `config` is invalid (the core's error is
        the message).

    Examples:
      >>> import numpy as np
      >>> from weightnorm import WeightNormConfig
      >>> from hypothesis import find
      >>> strategy = scale_dicts({"Dense_0/kernel": np.ones((2, 3))}, WeightNormConfig())
      >>> find(strategy, lambda scales: True)
      {'Dense_0/kernel/scale': array([0., 0., 0.], dtype=float32)}
    """
    _check_flat(flat)
    try:
        shapes = scale_shapes(flat, config)
    except (TypeError, ValueError) as error:
        raise InvalidArgument(str(error)) from error
    dtype = np.dtype(config.param_dtype)
    return st.fixed_dictionaries(
        {
            name: float_arrays(shape, dtype=dtype, min_value=min_value, max_value=max_value)
            for name, shape in shapes.items()
        }
    )
