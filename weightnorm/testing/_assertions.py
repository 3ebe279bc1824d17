"""Assertions for users' tests: same function, same params, weight-normed weights."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from ..core import (
    SCALE_SUFFIX,
    WeightNormConfig,
    flatten,
    resolve_feature_axes,
    scale_shapes,
    select,
)

__all__ = [
    "default_tolerance",
    "assert_trees_close",
    "assert_same_function",
    "assert_params_equal",
    "assert_weight_normed",
]

# Relative tolerance by dtype: about 100 ulps in float32 (room for a different
# summation order in another framework's matmul or conv), ~10 ulps in half.
_RTOL = {
    np.dtype(np.float64): 1e-10,
    np.dtype(np.float32): 1e-5,
    np.dtype(jnp.float16): 1e-2,
    np.dtype(jnp.bfloat16): 4e-2,
}


def default_tolerance(*dtypes: Any) -> float:
    """The relative tolerance for comparing arrays of these dtypes (the least precise wins).

    float64: 1e-10, float32 (and complex64): 1e-5, float16: 1e-2, bfloat16:
    4e-2; integers and bools are compared exactly (0.0).

    Examples:
      >>> default_tolerance("float32", "bfloat16")
      0.04
    """
    rtol = 0.0
    for dtype in dtypes:
        dtype = np.dtype(dtype)
        if jnp.issubdtype(dtype, jnp.complexfloating):
            dtype = np.dtype(np.float64 if dtype.itemsize == 16 else np.float32)
        if jnp.issubdtype(dtype, jnp.floating):
            rtol = max(rtol, _RTOL.get(dtype, 1e-2))
    return rtol


def _leaves(tree: Any) -> dict[str, Any]:
    """`{path: leaf}`; `flatten` refuses two leaves whose paths collide, rather than
    comparing only one of them."""
    return {path or "<root>": leaf for path, leaf in flatten(tree).items()}


def _same_structure(actual: Any, expected: Any, what: str) -> tuple[dict, dict]:
    a, b = _leaves(actual), _leaves(expected)
    if list(a) != list(b):
        only_a = [p for p in a if p not in b]
        only_b = [p for p in b if p not in a]
        raise AssertionError(
            f"The {what} differ in structure: leaves only in the first {only_a}, "
            f"only in the second {only_b}"
            + ("" if only_a or only_b else f", or in order: {list(a)} vs {list(b)}")
            + "."
        )
    return a, b


def _as_array(value: Any) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype == np.dtype(jnp.bfloat16) or array.dtype == np.dtype(jnp.float16):
        return array.astype(np.float32)
    return array


def assert_trees_close(
    actual: Any,
    expected: Any,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    what: str = "trees",
) -> None:
    """Asserts two pytrees have the same structure, shapes and close values, leaf by leaf.

    A leaf passes when `|actual - expected| <= atol + rtol * |expected|`
    elementwise (NaN equals NaN). By default `rtol` is `default_tolerance` of
    the two leaves' dtypes and `atol` is `rtol` times the largest `|expected|`
    of the leaf (at least 1), so values that cancel to about 0 are judged on
    the leaf's scale.

    Args:
      actual: a pytree of arrays.
      expected: a pytree of arrays with the same structure.
      rtol: a fixed relative tolerance instead of the dtype's.
      atol: a fixed absolute tolerance instead of the dtype's.
      what: how the trees are called in the error.

    Raises:
      AssertionError: naming the path of the first differing leaf, the largest
        difference, where it is, and the tolerance used.

    Examples:
      >>> import numpy as np
      >>> assert_trees_close({"a": np.ones(2, np.float32)}, {"a": np.ones(2, np.float32) + 1e-6})
      >>> assert_trees_close({"a": np.ones(2)}, {"a": np.zeros(2)})  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      AssertionError: The trees differ at leaf 'a': max |actual - expected| = 1 at index (0,) ...
    """
    a_leaves, b_leaves = _same_structure(actual, expected, what)
    for path, a_leaf in a_leaves.items():
        a, b = _as_array(a_leaf), _as_array(b_leaves[path])
        if a.dtype == object or b.dtype == object:  # functions, strings, ...: compared by ==
            if not a_leaf == b_leaves[path]:
                raise AssertionError(
                    f"The {what} differ at leaf {path!r}: {a_leaf!r} vs {b_leaves[path]!r}."
                )
            continue
        if a.shape != b.shape:
            raise AssertionError(
                f"The {what} differ at leaf {path!r}: shape {a.shape} vs {b.shape}."
            )
        leaf_rtol = (
            default_tolerance(np.asarray(a_leaf).dtype, np.asarray(b_leaves[path]).dtype)
            if rtol is None
            else rtol
        )
        finite = np.abs(b[np.isfinite(b)]) if b.size else np.zeros(0)
        scale = max(1.0, float(finite.max())) if finite.size else 1.0
        leaf_atol = leaf_rtol * scale if atol is None else atol
        if not jnp.issubdtype(a.dtype, jnp.inexact) and leaf_rtol == 0.0 and atol is None:
            close = a == b
        else:
            close = np.isclose(a, b, rtol=leaf_rtol, atol=leaf_atol, equal_nan=True)
        if np.all(close):
            continue
        with np.errstate(invalid="ignore", over="ignore"):
            diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
        diff = np.where(close, 0.0, np.nan_to_num(diff, nan=np.inf))
        index = np.unravel_index(int(np.argmax(diff)), a.shape) if a.shape else ()
        dtypes = sorted({str(np.asarray(a_leaf).dtype), str(np.asarray(b_leaves[path]).dtype)})
        raise AssertionError(
            f"The {what} differ at leaf {path!r}: max |actual - expected| = "
            f"{float(diff[index]):.3g} at index {tuple(int(i) for i in index)} (actual "
            f"{a[index].item()!r}, expected {b[index].item()!r}); tolerance atol={leaf_atol:.3g}, "
            f"rtol={leaf_rtol:.3g} ({', '.join(dtypes)})."
        )


def assert_same_function(
    model_a: Callable[[Any], Any],
    model_b: Callable[[Any], Any],
    inputs: Any,
    *,
    rtol: float | None = None,
    atol: float | None = None,
) -> None:
    """Asserts two models give the same outputs on `inputs`, e.g. one model in two frameworks.

    Each model is any callable taking `inputs` as its one argument (wrap a
    Linen `apply`, a Haiku `apply` or an Equinox module in a lambda); the
    outputs (any pytrees) are compared leaf by leaf as `assert_trees_close`
    does, with tolerances chosen by dtype unless given.

    Args:
      model_a: the first callable.
      model_b: the second callable.
      inputs: the argument both are called with.
      rtol: a fixed relative tolerance instead of the dtype's.
      atol: a fixed absolute tolerance instead of the dtype's.

    Raises:
      AssertionError: naming the path of the first differing output leaf and
        the largest difference.
      TypeError: when a model is not callable.

    Examples:
      >>> import jax.numpy as jnp
      >>> assert_same_function(jnp.tanh, lambda x: jnp.sinh(x) / jnp.cosh(x), jnp.ones(3))
    """
    for name, model in (("model_a", model_a), ("model_b", model_b)):
        if not callable(model):
            raise TypeError(f"`{name}` must be callable, got {type(model).__name__}.")
    assert_trees_close(
        model_a(inputs), model_b(inputs), rtol=rtol, atol=atol, what="outputs of the two models"
    )


def assert_params_equal(actual: Any, expected: Any) -> None:
    """Asserts two pytrees are bitwise equal: structure, and each leaf's dtype, shape and bits.

    Array leaves are compared by their raw bytes, so `+0.0` and `-0.0` differ,
    and so do two NaNs with different payloads (a NaN equals the same NaN);
    leaves that are not arrays (functions, strings) are compared with `==`.

    Raises:
      AssertionError: naming the path of the first differing leaf, and what
        differs: the structure (leaves only on one side), the dtype, the shape,
        or the bits (how many elements, the first one's index, both values and
        their bit patterns).

    Examples:
      >>> import numpy as np
      >>> assert_params_equal({"w": np.ones(2, np.float32)}, {"w": np.ones(2, np.float32)})
      >>> assert_params_equal({"w": np.zeros(1)}, {"w": -np.zeros(1)})  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      AssertionError: The params differ at leaf 'w': 1 of 1 elements differ in their bits; ...
    """
    a_leaves, b_leaves = _same_structure(actual, expected, "params")
    for path, a_leaf in a_leaves.items():
        b_leaf = b_leaves[path]
        a, b = np.asarray(a_leaf), np.asarray(b_leaf)
        if a.dtype.kind in "OUS" or b.dtype.kind in "OUS":  # functions, strings: by ==
            same = a_leaf == b_leaf if a.dtype == object else np.array_equal(a, b)
            if not same:
                raise AssertionError(
                    f"The params differ at leaf {path!r}: {a_leaf!r} vs {b_leaf!r}."
                )
            continue
        if a.dtype != b.dtype:
            raise AssertionError(
                f"The params differ at leaf {path!r}: dtype {a.dtype} vs {b.dtype}."
            )
        if a.shape != b.shape:
            raise AssertionError(
                f"The params differ at leaf {path!r}: shape {a.shape} vs {b.shape}."
            )
        a_bits, b_bits = _bits(a), _bits(b)
        differ = (a_bits != b_bits).any(axis=-1)
        if differ.any():
            index = tuple(int(i) for i in np.argwhere(differ)[0])
            raise AssertionError(
                f"The params differ at leaf {path!r}: {int(differ.sum())} of {differ.size} "
                f"elements differ in their bits; the first at index {index}: actual "
                f"{a[index].item()!r} (bits {_hex(a_bits[index])}), expected "
                f"{b[index].item()!r} (bits {_hex(b_bits[index])}) ({a.dtype})."
            )


def _bits(array: np.ndarray) -> np.ndarray:
    """Each element's raw bytes: an array of shape `array.shape + (itemsize,)`, uint8."""
    flat = np.array(array, order="C").reshape(-1)
    return flat.view(np.uint8).reshape(*array.shape, array.dtype.itemsize)


def _hex(element_bytes: np.ndarray) -> str:
    """An element's bit pattern in hex, most significant byte first (little-endian data)."""
    return "0x" + bytes(element_bytes[::-1]).hex()


def assert_weight_normed(
    weights: Mapping[str, Any],
    scales: Mapping[str, Any] | None,
    config: WeightNormConfig,
    *,
    rtol: float | None = None,
) -> None:
    """Asserts the effective weights have per-feature norms equal to the scales' magnitudes.

    For every variable `config` selects in `weights` (the weights the layer
    computes with, e.g. `weightnorm.fold`'s output), the norm over the
    non-feature axes equals `|scale|` (1 when `use_scale=False`). Exactly, that
    norm is `|scale| * ||v|| / sqrt(||v||^2 + epsilon)`, so this holds where
    `||v||^2` is large next to `epsilon`; an all-zero direction gives a zero
    weight, which fails unless its scale is 0.

    Args:
      weights: flat `{path: array}` effective weights.
      scales: `{"<path>/scale": array}`; None when `use_scale=False`.
      config: the weight-norm settings.
      rtol: relative tolerance (default: by the weights' dtype).

    Raises:
      AssertionError: naming the first variable whose norms differ.
      ValueError, TypeError: as `weightnorm.scale_shapes`, or when scales are
        missing.

    Examples:
      >>> import numpy as np
      >>> from weightnorm import WeightNormConfig
      >>> weights = {"kernel": np.array([[0.6], [0.8]], np.float32) * 3}
      >>> assert_weight_normed(weights, {"kernel/scale": np.array([-3.0])}, WeightNormConfig())
    """
    shapes = scale_shapes(weights, config)  # checks the config against the weights
    selected = select(weights, config.variable_filter)
    scales = {} if scales is None else scales
    missing = [name for name in shapes if name not in scales]
    if missing:
        raise ValueError(f"The scales {missing} are missing.")
    for path in selected:
        value = _as_array(weights[path]).astype(np.float64)
        axes = resolve_feature_axes(path, value.shape, config.feature_axes)
        reduced = tuple(a for a in range(value.ndim) if a not in axes)
        norms = np.sqrt((np.abs(value) ** 2).sum(axis=reduced))
        expected = (
            np.abs(_as_array(scales[path + SCALE_SUFFIX]).astype(np.float64))
            if config.use_scale
            else np.ones_like(norms)
        )
        tolerance = default_tolerance(np.asarray(weights[path]).dtype) if rtol is None else rtol
        assert_trees_close(
            {path: norms},
            {path: expected.reshape(norms.shape)},
            rtol=tolerance,
            atol=tolerance,
            what="per-feature norms and |scales|",
        )
