"""One weight-normalized array, with a derivative that keeps no weight-sized temporaries.

`weight_norm(v, g, ...)` is `g * v * rsqrt(sum(|v|^2) + epsilon)` computed with
the reference operations in the reference order (so float32 results are bitwise
those of the reference implementation: docs/formula.md). Its
derivative is a `jax.custom_jvp` rule written so that, once JAX linearizes and
transposes it for `grad`, the only arrays it keeps from the forward pass are
`v` itself (a parameter, alive anyway) and per-feature vectors: autodiff of
the plain formula instead keeps `v / ||v||` and other weight-sized
intermediates. Being a JVP rule, forward mode (`jax.jvp`, `jax.jacfwd`,
Hessians) works too.

The rule is called through a `jax.jit` (`_weight_norm_scaled`,
`_weight_norm_unscaled`), so that a model of many layers of one shape traces
it once, not once per layer; see the comment there.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

__all__ = [
    "accumulation_dtype",
    "effective_epsilon",
    "squares",
    "squared_norm",
    "weight_norm",
]


def accumulation_dtype(dtype: Any) -> Any:
    """float32 for floats narrower than float32 (float16, bfloat16, float8).

    In float16 `epsilon=1e-12` rounds to 0 and squares of |v| > 256 overflow;
    in bfloat16 a sum of many squares loses most of its bits. Such arrays are
    normalized in float32 and the result cast back. float32, float64 and
    complex arrays are computed in their own dtype, as the reference does.
    """
    if jnp.issubdtype(dtype, jnp.floating) and jnp.finfo(dtype).bits < 32:
        return jnp.dtype(jnp.float32)
    return jnp.dtype(dtype)


def squares(value: jax.Array) -> jax.Array:
    """|v|^2 elementwise; for real arrays exactly `v * v`, as the reference computes it."""
    if jnp.iscomplexobj(value):
        return lax.square(jnp.real(value)) + lax.square(jnp.imag(value))
    return value * value


def squared_norm(
    value: jax.Array, reduction_axes: tuple[int, ...], epsilon: float
) -> tuple[jax.Array, jax.Array]:
    """(`value` in its accumulation dtype, sum of |value|^2 over `reduction_axes` + epsilon).

    The sum keeps the reduced axes (size 1), so it broadcasts against `value`.
    For floats narrower than float32 the epsilon is at least the square of
    the smallest normal number of `value`'s dtype (`effective_epsilon`).
    """
    wide = value.astype(accumulation_dtype(value.dtype))
    epsilon = effective_epsilon(epsilon, value.dtype)
    return wide, squares(wide).sum(axis=reduction_axes, keepdims=True) + epsilon


def effective_epsilon(epsilon: float, dtype: Any) -> float:
    """`epsilon`, raised to `finfo(dtype).tiny ** 2` for floats narrower than float32.

    The gradient at an all-zero weight is `scale / sqrt(epsilon)`. In float16
    the default 1e-12 makes it 1e6, past the float16 maximum 65504, so the
    gradient would be inf. With `tiny ** 2` (3.7e-9, tiny = 6.1e-5) it is
    `scale / tiny` = 16384 * scale, finite; and a column changes only when
    its norm is within a few thousand times `tiny`, i.e. when it is hardly
    representable in float16 anyway (a norm of 0.01 moves by 2e-5 relative,
    below float16's resolution). bfloat16 (tiny 1.2e-38) keeps 1e-12;
    float32 and wider always keep `epsilon` (the reference's).
    """
    if accumulation_dtype(dtype) != jnp.dtype(dtype):
        return max(epsilon, float(jnp.finfo(dtype).tiny) ** 2)
    return epsilon


def _forward(
    value: jax.Array,
    scale: jax.Array | None,
    reduction_axes: tuple[int, ...],
    epsilon: float,
    out_dtype: Any,
) -> tuple[jax.Array, jax.Array]:
    """(the normalized array, rsqrt of the squared norms); the reference ops, in order."""
    wide, norms = squared_norm(value, reduction_axes, epsilon)
    inverse = lax.rsqrt(norms)
    normalized = wide * inverse
    if scale is not None:
        normalized = normalized * _broadcastable(scale, reduction_axes)
    return normalized.astype(out_dtype), inverse


def _broadcastable(scale: jax.Array, reduction_axes: tuple[int, ...]) -> jax.Array:
    """`scale` with size-1 dimensions inserted at the reduced axes."""
    return lax.expand_dims(scale, reduction_axes)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4))
def _scaled(value, scale, reduction_axes, epsilon, out_dtype):
    return _forward(value, scale, reduction_axes, epsilon, out_dtype)[0]


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3))
def _unscaled(value, reduction_axes, epsilon, out_dtype):
    return _forward(value, None, reduction_axes, epsilon, out_dtype)[0]


def _tangent(value, scale, inverse, d_value, d_scale, reduction_axes, out_dtype):
    """d(g v / ||v||) = (g/||v||) dv + (dg/||v|| - (g/||v||^3) <v, dv>) v.

    Every weight-sized product has `v` or a tangent as its weight-sized factor,
    never `v / ||v||`, so transposing it keeps only `v` and per-feature vectors.
    The per-feature factor is multiplied out from `<v, dv>` first, so zero
    weights (`<v, dv> = 0`) give 0 rather than `0 * (1/epsilon)^3 = inf * 0`.
    Written in `lax` with explicit broadcasts: this runs at every trace, and
    `jnp`'s promotion checks would double its tracing time.
    """
    dtype = inverse.dtype
    shape = value.shape
    kept = tuple(axis for axis in range(value.ndim) if axis not in reduction_axes)

    def full(per_feature):  # (1, ..., features, ...) -> value's shape
        return lax.broadcast_in_dim(lax.reshape(per_feature, _kept_shape(shape, kept)), shape, kept)

    def per_feature(array):  # value's kept sizes, with size-1 reduced axes
        return lax.reshape(lax.convert_element_type(array, dtype), inverse.shape)

    wide = lax.convert_element_type(value, dtype)
    d_wide = lax.convert_element_type(d_value, dtype)
    along = lax.reshape(lax.reduce_sum(lax.mul(wide, d_wide), reduction_axes), inverse.shape)
    gain = inverse if scale is None else lax.mul(inverse, per_feature(scale))
    radial = lax.mul(lax.mul(lax.mul(along, inverse), inverse), gain)
    if scale is None:
        coefficient = lax.neg(radial)
    else:
        coefficient = lax.sub(lax.mul(per_feature(d_scale), inverse), radial)
    tangent = lax.add(lax.mul(full(gain), d_wide), lax.mul(full(coefficient), wide))
    return lax.convert_element_type(tangent, out_dtype)


def _kept_shape(shape, kept):
    return tuple(shape[axis] for axis in kept)


@_scaled.defjvp
def _scaled_jvp(reduction_axes, epsilon, out_dtype, primals, tangents):
    value, scale = primals
    d_value, d_scale = tangents
    out, inverse = _forward(value, scale, reduction_axes, epsilon, out_dtype)
    return out, _tangent(value, scale, inverse, d_value, d_scale, reduction_axes, out_dtype)


@_unscaled.defjvp
def _unscaled_jvp(reduction_axes, epsilon, out_dtype, primals, tangents):
    (value,), (d_value,) = primals, tangents
    out, inverse = _forward(value, None, reduction_axes, epsilon, out_dtype)
    return out, _tangent(value, None, inverse, d_value, None, reduction_axes, out_dtype)


# Tracing the rule once per distinct call, not once per layer.
#
# A model calls `weight_norm` once per layer, mostly with the same shapes, dtypes and
# settings. Called directly, the custom-JVP rule is traced at every layer: its primal
# body, and under `grad` its JVP rule, then the linearization and transpose of what that
# emits, each in Python, every layer again. Under `jax.jit` JAX traces it once per
# distinct cache key and every further layer binds one `jit` equation holding that same
# jaxpr; JVP, linearization, partial evaluation, transposition, vmap, DCE and lowering
# of a `jit` equation are cached on its jaxpr, so they too run once per key, and
# lowering emits one function called from every layer. XLA inlines those calls before
# optimizing (the compiled HLO has no `call` left; tests/core/test_trace_cache.py), so
# step time, memory and results are those of the inlined rule.
#
# The cache key is jit's own: the static `reduction_axes`, `epsilon` and `out_dtype`,
# which function (scale or no scale), and each array's shape, dtype, weak type and,
# where it is part of the type (explicit meshes, `shard_map`), sharding. No sharding is
# given to the jit, so under an `Auto` mesh (or none) propagation goes through it as
# through the inlined operations. `jax.clear_caches()` clears it.
#
# Only calls being staged into a jaxpr (under `jit`, `scan`, `checkpoint`, ...) take the
# jit. An eager call, also under an eager `grad` or `vmap`, runs the rule op by op as
# before: a jitted rule would run as one fused XLA program, whose float32 rounding can
# differ from op-by-op evaluation in the last bit, and the reference evaluates eagerly
# op by op.
# Eager calls have no tracing cost to save.
#
# Chosen by measurement: trace time of a 128-layer MLP train step (64x64 layers) in each
# adapter, interleaved in one process against the uncached rule (2 shared CPU cores):
# - this jit: 0.44-0.65 x the uncached trace, and lowering ~0.8 x (one function per key);
# - `jax.jit(..., inline=True)`: 0.65-0.88 x. The rule's equations are copied into the
#   caller at every call, so every transformation still runs per layer; it saves only
#   the Python of the rule's body;
# - a cached jaxpr of the rule (`jax.make_jaxpr` once per key, `jax.core.eval_jaxpr`
#   per layer): 0.90-1.05 x, the same one primitive at a time;
# - `jax.custom_vjp` with explicit residuals: still traced per layer, and forward mode
#   (`jvp`, `jacfwd`, Hessians) would be lost;
# - `jax.named_call`: names a scope, caches nothing.
# XLA compile time is unchanged (the compiled programs are the same, but for names).


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _weight_norm_scaled(value, scale, reduction_axes, epsilon, out_dtype):
    return _scaled(value, scale, reduction_axes, epsilon, out_dtype)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _weight_norm_unscaled(value, reduction_axes, epsilon, out_dtype):
    return _unscaled(value, reduction_axes, epsilon, out_dtype)


def _under_jit_check() -> Any:
    """JAX's own test for a jaxpr-building trace in the current trace stack, if it has one.

    Recent JAX exports it as `jax.extend.core.unsafe_am_i_under_a_jit_DO_NOT_USE`;
    older versions (0.8) only have it in `jax._src.core`. Without it, every call on
    tracers is taken to be staged (eager `grad`/`vmap` calls then run the jitted rule).
    """
    try:
        import jax.extend.core as extend_core

        check = getattr(extend_core, "unsafe_am_i_under_a_jit_DO_NOT_USE", None)
        if check is None:
            from jax._src import core as src_core

            check = src_core.unsafe_am_i_under_a_jit
        check()
    except Exception:  # any JAX without it: fall back, never fail
        return None
    return check


_UNDER_JIT = _under_jit_check()


def _staged(*arrays: Any) -> bool:
    """Whether this call is being traced into a jaxpr rather than evaluated eagerly."""
    if not any(isinstance(array, jax.core.Tracer) for array in arrays):
        return False
    return True if _UNDER_JIT is None else _UNDER_JIT()


def weight_norm(
    value: jax.Array,
    scale: jax.Array | None,
    reduction_axes: tuple[int, ...],
    epsilon: float,
    out_dtype: Any,
) -> jax.Array:
    """`scale * value * rsqrt(sum(|value|^2 over reduction_axes) + epsilon)`, cast to `out_dtype`.

    `scale` has `value`'s shape without the reduced axes (or is None for no
    scale). Complex arrays take JAX's own derivative of the same formula.
    """
    if jnp.iscomplexobj(value):
        return _forward(value, scale, reduction_axes, epsilon, out_dtype)[0]
    out_dtype = jnp.dtype(out_dtype)
    staged = _staged(value, scale)
    if scale is None:
        rule = _weight_norm_unscaled if staged else _unscaled
        return rule(value, reduction_axes, epsilon, out_dtype)
    rule = _weight_norm_scaled if staged else _scaled
    return rule(value, scale, reduction_axes, epsilon, out_dtype)
