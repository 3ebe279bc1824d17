"""The rule is traced once per distinct call, not once per layer, and the cache changes nothing.

`weight_norm` calls the custom-JVP rule through a `jax.jit`, so a model of many
layers of one shape traces it once (`weightnorm/core/_primitive.py` says why).
Here: how often the rule's Python runs (a counter in `_forward` and
`_tangent`) for 1 and 16 layers in every adapter and under outer
transformations; that every setting, dtype and sharding gets its own trace and
the results of the uncached rule; that XLA inlines the call; and that the
first call under `jax.disable_jit()` works.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import equinox as eqx
import flax.linen as nn
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.devices import run_on_8_devices
from tests.peers import assert_bitwise_equal
from weightnorm.adapters import equinox as weq
from weightnorm.adapters import haiku as whk
from weightnorm.adapters import linen as wln
from weightnorm.adapters import nnx as wnx
from weightnorm.core import WeightNormConfig, _primitive, normalize

ROOT = Path(__file__).resolve().parents[2]
WIDTH = 8
EPS = 1e-12


@pytest.fixture
def traces(monkeypatch):
    """`count(fn, *args)`: how often the rule's Python ran while tracing `fn` afresh.

    `_forward` runs in the rule's primal body and in its JVP rule, `_tangent` in
    the JVP rule only; both are looked up as module globals at call time.
    """
    seen: Counter = Counter()
    for name in ("_forward", "_tangent"):
        original = getattr(_primitive, name)

        def counted(*args, _name=name, _original=original, **kwargs):
            seen[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(_primitive, name, counted)

    def count(fn, *args):
        jax.clear_caches()  # the first call of a fresh process
        seen.clear()
        jax.jit(fn).trace(*args)
        return dict(seen)

    return count


def _normal(seed, *shape):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


# --- one trace per distinct call, in every adapter -----------------------------------


def _linen(depth):
    class Model(nn.Module):
        @nn.compact
        def __call__(self, x):
            for _ in range(depth):
                x = jnp.tanh(wln.WeightNorm(nn.Dense(WIDTH))(x))
            return x

    model = Model()
    x = _normal(0, 2, WIDTH)
    params = model.init(jax.random.key(0), x)["params"]
    return lambda p, x: jnp.sum(model.apply({"params": p}, x) ** 2), params, x


def _haiku(depth):
    def forward(x):
        for _ in range(depth):
            x = jnp.tanh(whk.WeightNorm(hk.Linear(WIDTH))(x))
        return x

    model = hk.without_apply_rng(hk.transform(forward))
    x = _normal(0, 2, WIDTH)
    params = model.init(jax.random.key(0), x)
    return lambda p, x: jnp.sum(model.apply(p, x) ** 2), params, x


def _equinox(depth):
    # One wrapper around the whole stack: one `normalize` of `depth` weights.
    keys = jax.random.split(jax.random.key(0), depth)
    layers = [eqx.nn.Linear(WIDTH, WIDTH, key=key) for key in keys]
    model = weq.WeightNorm(layers)
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def loss(params, x):
        stack = eqx.combine(params, static).normalized_layer()
        for layer in stack:
            x = jnp.tanh(layer(x))
        return jnp.sum(x**2)

    return loss, params, _normal(0, WIDTH)


def _nnx(depth):
    rngs = nnx.Rngs(0)
    layers = nnx.List([wnx.WeightNorm(nnx.Linear(WIDTH, WIDTH, rngs=rngs)) for _ in range(depth)])
    graphdef, state = nnx.split(layers)

    def loss(state, x):
        for layer in nnx.merge(graphdef, state):
            x = jnp.tanh(layer(x))
        return jnp.sum(x**2)

    return loss, state, _normal(0, 2, WIDTH)


@pytest.mark.parametrize("build", [_linen, _haiku, _equinox, _nnx], ids=lambda b: b.__name__[1:])
def test_sixteen_identical_layers_trace_the_rule_as_often_as_one(traces, build):
    counts = {}
    for depth in (1, 16):
        loss, params, x = build(depth)
        counts[depth] = (traces(loss, params, x), traces(jax.grad(loss), params, x))
    forward, backward = counts[1]
    assert forward == {"_forward": 1}  # the primal body, once
    assert backward["_forward"] >= 1 and backward["_tangent"] >= 1  # the JVP rule too
    assert counts[16] == counts[1]


def _stack(depth, seed=0):
    return [(_normal(seed + i, WIDTH, WIDTH), _normal(100 + i, WIDTH)) for i in range(depth)]


def _core_loss(weight):
    def loss(params, x):
        for v, g in params:
            x = jnp.tanh(x @ weight(v, g))
        return jnp.sum(x**2)

    return loss


CONFIG = WeightNormConfig(epsilon=EPS)


def _ours(v, g, config=CONFIG):
    return normalize({"dense/kernel": v}, {"dense/kernel/scale": g}, config)["dense/kernel"]


def _uncached(v, g):
    """The same custom-JVP rule, called without the jit: what the cache must not change."""
    return _primitive._scaled(v, g, (0,), EPS, jnp.dtype(jnp.float32))


@pytest.mark.parametrize(
    "transform",
    [
        lambda loss: jax.grad(loss),
        lambda loss: jax.grad(lambda p, x: jnp.sum(jax.grad(loss, argnums=1)(p, x) ** 2)),
        lambda loss: lambda p, x: jax.jvp(lambda x: loss(p, x), (x,), (jnp.ones_like(x),)),
        lambda loss: jax.jacfwd(loss),
        lambda loss: jax.grad(jax.checkpoint(loss)),
        lambda loss: jax.vmap(jax.grad(loss), in_axes=(None, 0)),
    ],
    ids=["grad", "grad-of-grad", "jvp", "jacfwd", "remat", "vmap"],
)
def test_outer_transformations_trace_the_rule_once_and_match_the_uncached_rule(traces, transform):
    x = _normal(7, 3, WIDTH)
    ours, reference = transform(_core_loss(_ours)), transform(_core_loss(_uncached))
    assert traces(ours, _stack(16), x) == traces(ours, _stack(1), x)
    params = _stack(4)
    for a, b in zip(
        jax.tree.leaves(jax.jit(ours)(params, x)),
        jax.tree.leaves(jax.jit(reference)(params, x)),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_vmap_over_stacked_layers_traces_once(traces):
    # Layers stacked on a leading axis (`stack_axes=1`), or a vmap over that axis.
    config = WeightNormConfig(epsilon=EPS, stack_axes=1)
    v, g = _normal(0, 16, WIDTH, WIDTH), _normal(1, 16, WIDTH)

    def stacked(v, g):
        return jnp.sum(jnp.sin(_ours(v, g, config)))

    def mapped(v, g):
        return jnp.sum(jnp.sin(jax.vmap(_ours)(v, g)))

    for fn in (stacked, mapped):
        assert traces(jax.grad(fn, argnums=(0, 1)), v, g) == traces(
            jax.grad(fn, argnums=(0, 1)), v[:1], g[:1]
        )
    stacked_grads = jax.grad(stacked, argnums=(0, 1))(v, g)
    for a, b in zip(stacked_grads, jax.grad(mapped, argnums=(0, 1))(v, g), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


# --- the cache key: everything that changes the computation -------------------------


def _call(value, scale, axes=(0,), epsilon=EPS, out_dtype=jnp.float32):
    return _primitive.weight_norm(value, scale, axes, epsilon, jnp.dtype(out_dtype))


def _reference(value, scale, axes=(0,), epsilon=EPS, out_dtype=jnp.float32):
    out_dtype = jnp.dtype(out_dtype)
    if scale is None:
        return _primitive._unscaled(value, axes, epsilon, out_dtype)
    return _primitive._scaled(value, scale, axes, epsilon, out_dtype)


def test_every_setting_dtype_and_shape_gets_its_own_trace(traces):
    value, scale = _normal(0, 4, 3), _normal(1, 3)
    tiny = 1e-3 * value  # epsilon matters at this size
    calls = [
        ("base", (tiny, scale), {}),
        ("epsilon", (tiny, scale), {"epsilon": 1e-4}),
        ("axes", (tiny, _normal(1, 4)), {"axes": (1,)}),
        ("both axes", (tiny, jnp.float32(2.0)), {"axes": (0, 1)}),
        ("out_dtype", (tiny, scale), {"out_dtype": jnp.bfloat16}),
        ("no scale", (tiny, None), {}),
        ("shape", (_normal(2, 5, 3), scale), {}),
        ("value dtype", (tiny.astype(jnp.bfloat16), scale), {}),
        ("scale dtype", (tiny, scale.astype(jnp.bfloat16)), {}),
    ]

    def all_calls(*arrays):
        pairs = zip(arrays[::2], arrays[1::2], strict=True)
        return [_call(v, s, **kwargs) for (_, _, kwargs), (v, s) in zip(calls, pairs, strict=True)]

    arrays = [a for _, pair, _ in calls for a in pair]
    # Each call is a new key, so each traces the primal body once: no entry is reused.
    assert traces(all_calls, *arrays) == {"_forward": len(calls)}
    # Repeated, in the same trace, none traces again.
    assert traces(lambda *a: all_calls(*a) + all_calls(*a), *arrays) == {"_forward": len(calls)}
    # And every one computes what the uncached rule computes under jit.
    for _, (value, scale), kwargs in calls:
        jitted = jax.jit(lambda v, s, kwargs=kwargs: _call(v, s, **kwargs))(value, scale)
        expected = jax.jit(lambda v, s, kwargs=kwargs: _reference(v, s, **kwargs))(value, scale)
        assert_bitwise_equal(jitted, expected)


def test_weak_typed_and_strong_inputs_do_not_share_a_trace(traces):
    value = _normal(0, 4, 3)
    strong = jax.jit(lambda v: _call(v, jnp.float32(2.0), axes=(0, 1)))
    weak = jax.jit(lambda v: _call(v, jnp.asarray(2.0), axes=(0, 1)))  # weak-typed scale
    both = jax.jit(lambda v: (strong(v), weak(v)))
    assert traces(both, value) == {"_forward": 2}
    a, b = both(value)
    assert_bitwise_equal(a, b)


# --- XLA inlines the call -------------------------------------------------------------


def _step(weight, depth=4):
    params, x = _stack(depth), _normal(9, 2, WIDTH)
    return jax.jit(jax.value_and_grad(_core_loss(weight))), params, x


def test_compiled_step_has_no_call_and_the_results_of_the_uncached_rule():
    step, params, x = _step(_ours)
    lowered = step.lower(params, x)
    # The jitted rule is a function of its own in the lowered module, called per layer...
    assert "call @" in lowered.as_text()
    compiled = lowered.compile().as_text()
    # ...that XLA inlines: no call, no extra computation boundary in the compiled program.
    assert " call(" not in compiled
    reference, _, _ = _step(_uncached)
    loss, grads = step(params, x)
    expected_loss, expected_grads = reference(params, x)
    assert_bitwise_equal(loss, expected_loss)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(expected_grads), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_train_step_still_keeps_at_most_one_weight_copy_in_temp_memory():
    depth = 16
    step, params, x = _step(_ours, depth)
    plain, _, _ = _step(lambda v, g: v, depth)

    def temp(fn):
        return fn.lower(params, x).compile().memory_analysis().temp_size_in_bytes

    assert temp(step) <= temp(plain) + depth * WIDTH * WIDTH * 4


# --- eager calls: op by op, as flax, and no cache ------------------------------------


def _eager_results(weight, value, scale):
    def loss(v, g):
        return jnp.sum(jnp.sin(weight(v, g)))

    tangent = jax.jvp(lambda v: weight(v, scale), (value,), (jnp.ones_like(value),))[1]
    stacked = jnp.stack([value, 2 * value]), jnp.stack([scale, -scale])
    return [
        weight(value, scale),
        *jax.grad(loss, argnums=(0, 1))(value, scale),
        tangent,
        jax.vmap(weight)(*stacked),
        jax.vmap(jax.grad(loss))(*stacked),
    ]


def test_eager_calls_run_op_by_op_and_leave_the_cache_alone():
    # Fused into one XLA program, float32 rounding can differ in the last bit from
    # op-by-op evaluation, which is what flax does eagerly: eager calls (under eager
    # grad, jvp and vmap too) must be the uncached rule's, bit for bit.
    jax.clear_caches()
    value, scale = _normal(5, 6, 7), _normal(6, 7)  # a shape where the two round apart
    ours = _eager_results(lambda v, g: _call(v, g), value, scale)
    assert _primitive._weight_norm_scaled._cache_size() == 0
    for a, b in zip(ours, _eager_results(_reference, value, scale), strict=True):
        assert_bitwise_equal(a, b)


# --- disable_jit ----------------------------------------------------------------------


def test_first_call_under_disable_jit_runs_the_rule_eagerly(traces):
    jax.clear_caches()
    value, scale = _normal(3, 5, 2), _normal(4, 2)
    with jax.disable_jit():
        out = _call(value, scale)
        grads = jax.grad(lambda v, g: jnp.sum(jnp.sin(_call(v, g))), argnums=(0, 1))(value, scale)
        tangent = jax.jvp(lambda v: _call(v, scale), (value,), (jnp.ones_like(value),))[1]
    assert_bitwise_equal(out, _reference(value, scale))
    expected = jax.grad(lambda v, g: jnp.sum(jnp.sin(_reference(v, g))), argnums=(0, 1))(
        value, scale
    )
    for a, b in zip(grads, expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    expected = jax.jvp(lambda v: _reference(v, scale), (value,), (jnp.ones_like(value),))[1]
    np.testing.assert_allclose(tangent, expected, rtol=1e-6, atol=1e-7)
    # And the cache still works afterwards.
    assert_bitwise_equal(_call(value, scale), _reference(value, scale))


# --- shardings: 8 forced CPU devices, in a subprocess ---------------------------------

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")


def _collectives(hlo: str) -> dict[str, int]:
    return {name: hlo.count(f" {name}(") + hlo.count(f" {name}-start(") for name in COLLECTIVES}


def _spec(sharding) -> list:
    """A sharding's partition spec as JSON (its `str` differs between JAX versions)."""
    return [list(entry) if isinstance(entry, tuple) else entry for entry in sharding.spec]


def _sharding_probe() -> dict:  # pragma: no cover - runs in the subprocess
    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P

    seen: dict = {"devices": len(jax.devices())}
    auto = jax.make_mesh((8,), ("model",), axis_types=(AxisType.Auto,))
    explicit = jax.make_mesh((8,), ("model",), axis_types=(AxisType.Explicit,))
    kernel, scale = _normal(0, 64, 32), _normal(1, 32) + 2.0
    x = _normal(2, 16, 64)
    specs = {"feature": P(None, "model"), "reduction": P("model", None), "replicated": P()}
    scale_specs = {"feature": P("model"), "reduction": P(), "replicated": P()}
    rules = {"cached": _ours, "uncached": _uncached}

    def loss(weight):
        return lambda v, g, x: jnp.sum(jnp.tanh(x @ weight(v, g)) ** 2)

    # One process, one cache: every sharding of the same shape, in turn, must get
    # its own answer (the order puts each after another sharding of that shape).
    for name in ("feature", "reduction", "replicated", "feature"):
        for rule, weight in rules.items():
            key = f"{name}/{rule}"
            shardings = (
                NamedSharding(auto, specs[name]),
                NamedSharding(auto, scale_specs[name]),
                NamedSharding(auto, P()),
            )
            # Auto mesh: shardings given to the outer jit, propagated through the rule.
            forward = jax.jit(weight, in_shardings=shardings[:2]).lower(kernel, scale).compile()
            step = (
                jax.jit(jax.grad(loss(weight), argnums=(0, 1)), in_shardings=shardings)
                .lower(kernel, scale, x)
                .compile()
            )
            # Explicit mesh: shardings in the types.
            with jax.set_mesh(explicit):
                v = jax.device_put(kernel, NamedSharding(explicit, specs[name]))
                g = jax.device_put(scale, NamedSharding(explicit, scale_specs[name]))
                types = []

                def typed(v, g, weight=weight, types=types):
                    out = weight(v, g)
                    types.append(str(jax.typeof(out)))  # the sharding is in the type
                    return out

                out_explicit = jax.jit(typed)(v, g)
                grads = jax.jit(jax.grad(loss(weight), argnums=(0, 1)))(v, g, x)
            # Eager, on committed arrays placed on the Auto mesh.
            eager = weight(
                jax.device_put(kernel, shardings[0]), jax.device_put(scale, shardings[1])
            )
            seen[key] = {
                "auto_out": _spec(forward.output_shardings),
                "auto_forward_collectives": _collectives(forward.as_text()),
                "auto_step_collectives": _collectives(step.as_text()),
                "auto_step_out": [_spec(s) for s in step.output_shardings],
                "calls": forward.as_text().count(" call(") + step.as_text().count(" call("),
                "explicit_out": _spec(out_explicit.sharding),
                "explicit_type": types,
                "explicit_grads": [_spec(g.sharding) for g in grads],
                "eager_out": _spec(eager.sharding),
                "values": np.asarray(eager).tolist(),
                "explicit_values": np.asarray(out_explicit).tolist(),
            }
    return seen


@pytest.fixture(scope="module")
def sharding_probe() -> dict:
    return run_on_8_devices("tests.core.test_trace_cache", "_sharding_probe")


@pytest.mark.parametrize("name", ["feature", "reduction", "replicated"])
def test_the_cache_neither_pins_nor_drops_a_sharding(sharding_probe, name):
    cached, uncached = sharding_probe[f"{name}/cached"], sharding_probe[f"{name}/uncached"]
    assert cached["calls"] == 0
    for key in ("values", "explicit_values"):
        np.testing.assert_array_equal(cached.pop(key), uncached.pop(key))
    assert cached == uncached


def test_a_kernel_sharded_on_its_feature_axis_stays_so_without_collectives(sharding_probe):
    seen = sharding_probe["feature/cached"]
    assert seen["auto_out"] == seen["explicit_out"] == seen["eager_out"] == [None, "model"]
    assert seen["explicit_grads"] == [[None, "model"], ["model"]]
    assert set(seen["auto_forward_collectives"].values()) == {0}
