"""`assert_params_equal` is bitwise, as documented: dtype, shape and every element's bits."""

from __future__ import annotations

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from weightnorm.testing import assert_params_equal


def _nan(bits: int, dtype=np.float32) -> np.ndarray:
    """A NaN of a chosen payload."""
    width = {np.float32: np.uint32, np.float64: np.uint64, np.float16: np.uint16}[dtype]
    return np.array([bits], width).view(dtype)


def test_signed_zeros_differ_and_the_error_names_leaf_index_and_bits():
    with pytest.raises(AssertionError) as caught:
        assert_params_equal(
            {"layer": {"bias": np.array([1.0, 0.0], np.float32)}},
            {"layer": {"bias": np.array([1.0, -0.0], np.float32)}},
        )
    message = str(caught.value)
    assert "leaf 'layer/bias'" in message
    assert "1 of 2 elements differ in their bits" in message
    assert "index (1,)" in message
    assert "0x00000000" in message and "0x80000000" in message


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (_nan(0x7FC00000), _nan(0x7FC00001)),  # quiet NaNs, different payloads
        (_nan(0x7FC00000), _nan(0xFFC00000)),  # the sign of a NaN
        (_nan(0x7FC00000), _nan(0x7F800001)),  # quiet against signalling
        (_nan(0x7FF8000000000000, np.float64), _nan(0x7FF8000000000001, np.float64)),
        (_nan(0x7E00, np.float16), _nan(0x7E01, np.float16)),
    ],
)
def test_nans_with_different_payloads_differ(first, second):
    with pytest.raises(AssertionError, match="differ in their bits"):
        assert_params_equal({"w": first}, {"w": second})


def test_a_nan_equals_the_same_nan_and_zero_d_leaves_compare():
    nan = _nan(0x7FC01234)
    assert_params_equal({"w": nan, "s": np.float32(-0.0)}, {"w": nan.copy(), "s": np.float32(-0.0)})
    with pytest.raises(AssertionError, match=r"leaf 's'.*index \(\)"):
        assert_params_equal({"s": np.float64(0.0)}, {"s": np.float64(-0.0)})


@pytest.mark.parametrize(
    "dtype",
    [
        jnp.bfloat16,
        np.float16,
        ml_dtypes.float8_e4m3fn,
        ml_dtypes.float8_e5m2,
        np.complex64,
        np.complex128,
    ],
)
def test_negative_zero_differs_in_every_float_dtype(dtype):
    zero = np.zeros(3, dtype)
    negative = zero.copy()
    negative[2] = -negative[2] if np.dtype(dtype).kind != "c" else complex(0.0, -0.0)
    assert_params_equal({"w": zero}, {"w": zero.copy()})
    with pytest.raises(AssertionError, match=r"index \(2,\)"):
        assert_params_equal({"w": zero}, {"w": negative})


def test_jax_and_numpy_leaves_with_the_same_bits_are_equal():
    values = np.array([[1.5, -0.0], [np.inf, np.nan]], np.float32)
    assert_params_equal({"a": {"b": jnp.asarray(values)}}, {"a": {"b": values}})
    assert_params_equal({"flag": np.array([True, False])}, {"flag": jnp.array([True, False])})
    with pytest.raises(AssertionError, match="leaf 'flag'"):
        assert_params_equal({"flag": np.array([True, False])}, {"flag": np.array([True, True])})


def test_dtype_shape_and_structure_are_still_checked():
    with pytest.raises(AssertionError, match="leaf 'w': dtype float32 vs float64"):
        assert_params_equal({"w": np.zeros(2, np.float32)}, {"w": np.zeros(2, np.float64)})
    with pytest.raises(AssertionError, match=r"leaf 'w': shape \(2,\) vs \(1, 2\)"):
        assert_params_equal({"w": np.zeros(2)}, {"w": np.zeros((1, 2))})
    with pytest.raises(AssertionError, match=r"only in the first \['a/x'\]"):
        assert_params_equal({"a": {"x": np.zeros(1)}}, {"a": {"y": np.zeros(1)}})
    with pytest.raises(AssertionError, match="leaf 'name': 'a' vs 'b'"):
        assert_params_equal({"name": "a"}, {"name": "b"})
