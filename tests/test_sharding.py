"""Sharding on JAX's SPMD: scales shard like their kernels' feature axes.

The rule itself is tested here directly; everything that needs several devices
runs once in a subprocess with 8 forced CPU devices (`_probe`), which reports
what it saw as JSON, and the tests below check those observations.
"""

from __future__ import annotations

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec as P

from tests.devices import run_on_8_devices
from tests.peers import assert_bitwise_equal
from weightnorm.core import (
    WeightNormConfig,
    scale_partition_spec,
    scale_partition_specs,
    scale_shardings,
)

ROOT = Path(__file__).resolve().parent.parent
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")


def test_scale_takes_the_kernel_names_at_its_kept_axes():
    assert scale_partition_spec(P(None, "model"), (1,)) == P("model")
    assert scale_partition_spec(P("data", "model"), (0, 1)) == P("data", "model")
    assert scale_partition_spec(P("model"), (1,)) == P(None)  # short specs pad with None
    assert scale_partition_spec(("embed", "mlp"), (1,)) == ("mlp",)
    assert scale_partition_spec(None, (0,)) == P()
    assert scale_partition_spec(P(("a", "b"), None), ()) == P()


def test_specs_follow_feature_and_stack_axes():
    flat = {"conv/kernel": jnp.zeros((2, 3, 4, 8)), "conv/bias": jnp.zeros(8)}
    specs = {"conv/kernel": P("layers", None, None, "model")}
    assert scale_partition_specs(flat, specs, WeightNormConfig()) == {
        "conv/kernel/scale": P("model")
    }
    stacked = WeightNormConfig(stack_axes=1)
    assert scale_partition_specs(flat, specs, stacked) == {
        "conv/kernel/scale": P("layers", "model")
    }
    assert scale_partition_specs(flat, {}, WeightNormConfig()) == {"conv/kernel/scale": P()}
    assert scale_partition_specs(flat, specs, WeightNormConfig(use_scale=False)) == {}


def test_linen_boxed_kernel_keeps_the_unboxed_values():
    import flax.linen as nn

    from weightnorm.adapters import linen as wln

    x = jnp.linspace(-1, 1, 12).reshape(3, 4)
    init = nn.with_partitioning(nn.initializers.lecun_normal(), (None, "model"))
    boxed = wln.WeightNorm(nn.Dense(5, kernel_init=init))
    plain = wln.WeightNorm(nn.Dense(5))
    variables = boxed.init(jax.random.key(0), x)
    unboxed = nn.meta.unbox(variables)
    reference = plain.init(jax.random.key(0), x)
    assert jax.tree.structure(unboxed) == jax.tree.structure(reference)
    for a, b in zip(jax.tree.leaves(unboxed), jax.tree.leaves(reference), strict=True):
        assert_bitwise_equal(a, b)
    assert_bitwise_equal(boxed.apply(variables, x), plain.apply(reference, x))


def test_unsharded_arrays_give_no_sharding():
    assert scale_shardings({"a/kernel": jnp.ones((2, 3))}, WeightNormConfig()) == {}


# --- 8 devices, in a subprocess ------------------------------------------------------


def _count(hlo: str) -> dict[str, list[str]]:
    """The result shapes of each collective in an HLO text."""
    found: dict[str, list[str]] = {}
    for line in hlo.splitlines():
        for name in COLLECTIVES:
            match = re.search(rf"= (\S+) {name}(-start)?\(", line)
            if match:
                found.setdefault(name, []).append(match.group(1))
    return found


def _spec(spec) -> str:
    """A partition spec as the tuple of its entries (its repr changed across jax versions)."""
    return str(tuple(spec))


def _probe() -> dict:  # pragma: no cover - runs in the subprocess
    import equinox as eqx
    import flax.linen as nn
    import jax
    import numpy as np
    from jax.sharding import AxisType, NamedSharding

    from weightnorm import core
    from weightnorm.adapters import equinox as weq
    from weightnorm.adapters import linen as wln

    seen: dict = {"devices": len(jax.devices())}
    auto = jax.make_mesh((8,), ("model",), axis_types=(AxisType.Auto,))
    explicit = jax.make_mesh((8,), ("model",), axis_types=(AxisType.Explicit,))
    x = jax.random.normal(jax.random.key(1), (4, 16))

    # Linen: boxed kernels give boxed scales under a stable name.
    inits = {
        "mesh": nn.with_partitioning(nn.initializers.lecun_normal(), (None, "model")),
        "logical": nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", "mlp")),
    }
    rules = (("embed", None), ("mlp", "model"))
    plain = wln.WeightNorm(nn.Dense(32))
    reference = plain.init(jax.random.key(0), x)
    for name, init in inits.items():
        model = wln.WeightNorm(nn.Dense(32, kernel_init=init))
        with jax.set_mesh(auto):
            # Flax's recipe: shardings from the boxes' names, then a sharded init.
            specs = nn.get_partition_spec(jax.eval_shape(model.init, jax.random.key(0), x))
            if name == "logical":
                specs = nn.logical_to_mesh(specs, rules)
            shardings = jax.tree.map(lambda spec: NamedSharding(auto, spec), specs)
            variables = jax.jit(model.init, out_shardings=shardings)(jax.random.key(0), x)
            out = jax.jit(model.apply)(variables, x)
        specs = nn.get_partition_spec(variables)
        specs = (nn.logical_to_mesh(specs, rules) if name == "logical" else specs)["params"]
        unboxed = nn.meta.unbox(variables)
        seen[f"linen_{name}"] = {
            "names": sorted(variables["params"]),
            "box_names": list(variables["params"]["layer_instance/kernel/scale"].names),
            "scale_spec": list(specs["layer_instance/kernel/scale"]),
            "kernel_spec": list(specs["layer_instance"]["kernel"]),
            "same_values": bool(np.allclose(out, plain.apply(unboxed, x), rtol=1e-5, atol=1e-5)),
            "placed": _spec(unboxed["params"]["layer_instance/kernel/scale"].sharding.spec),
        }

    # Linen on an Explicit mesh: parameters placed by their specs, then a train step.
    specs = {
        "layer_instance": {"kernel": P(None, "model"), "bias": P("model")},
        "layer_instance/kernel/scale": P("model"),
    }
    with jax.set_mesh(explicit):
        params = jax.tree.map(
            lambda a, s: jax.device_put(a, NamedSharding(explicit, s)), reference["params"], specs
        )
        grads = jax.jit(jax.grad(lambda p: jnp.sum(plain.apply({"params": p}, x) ** 2)))(params)
        out = jax.jit(plain.apply)({"params": params}, x)
    expected = jax.grad(lambda p: jnp.sum(plain.apply({"params": p}, x) ** 2))(reference["params"])
    seen["linen_explicit"] = {
        "grad_specs": {k: _spec(v.sharding.spec) for k, v in core.flatten(grads).items()},
        "same_values": bool(np.allclose(out, plain.apply(reference, x), rtol=1e-6, atol=1e-6))
        and all(
            np.allclose(a, b, rtol=1e-5, atol=1e-6)
            for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(expected), strict=True)
        ),
    }

    # Collectives in the compiled forward pass of a weight-normed dense layer.
    config = core.WeightNormConfig()
    kernel = jax.random.normal(jax.random.key(2), (512, 256))
    x = jax.random.normal(jax.random.key(3), (64, 512))

    def dense(kernel, scale, x, weight_norm):
        if weight_norm:
            kernel = core.normalize({"d/kernel": kernel}, {"d/kernel/scale": scale}, config)[
                "d/kernel"
            ]
        return x @ kernel

    for axis_name, spec in {"feature": P(None, "model"), "reduction": P("model", None)}.items():
        (scale_spec,) = core.scale_partition_specs(
            {"d/kernel": kernel}, {"d/kernel": spec}, config
        ).values()
        shardings = (
            NamedSharding(auto, spec),
            NamedSharding(auto, scale_spec),
            NamedSharding(auto, P()),
        )
        for weight_norm in (False, True):
            compiled = (
                jax.jit(dense, in_shardings=shardings, static_argnums=3)
                .lower(kernel, jnp.ones(256), x, weight_norm)
                .compile()
            )
            seen[f"hlo_{axis_name}_{weight_norm}"] = compiled.as_text()

    # Haiku: scale specs from the kernels' specs; a train step keeps them.
    import haiku as hk

    from weightnorm.adapters import haiku as whk

    model = hk.without_apply_rng(hk.transform(lambda x: whk.WeightNorm(hk.Linear(32))(x)))
    x = jax.random.normal(jax.random.key(1), (4, 16))
    params = model.init(jax.random.key(0), x)
    flat = whk.flatten(params)
    kernel_specs = {"linear/w": P(None, "model"), "linear/b": P("model")}
    config = core.WeightNormConfig(variable_filter=lambda path: path.endswith("/w"))
    kernels = {k: v for k, v in flat.items() if k.startswith("linear/")}
    # Haiku keeps the scales in the wrapper's bundle: prefix its name.
    scale_specs = core.scale_partition_specs(kernels, kernel_specs, config)
    specs = {**kernel_specs, **{f"weight_norm/{k}": v for k, v in scale_specs.items()}}
    with jax.set_mesh(explicit):
        placed = {k: jax.device_put(v, NamedSharding(explicit, specs[k])) for k, v in flat.items()}
        placed = whk.unflatten(placed, like=params)
        grads = jax.jit(jax.grad(lambda p: jnp.sum(model.apply(p, x) ** 2)))(placed)
    seen["haiku_specs"] = {k: _spec(v) for k, v in specs.items()}
    seen["haiku_grad_specs"] = {k: _spec(v.sharding.spec) for k, v in whk.flatten(grads).items()}

    # Equinox: a sharded weight gets its scale placed like the weight's axis 0.
    linear = eqx.nn.Linear(16, 32, key=jax.random.key(0))
    linear = eqx.tree_at(
        lambda m: m.weight, linear, jax.device_put(linear.weight, NamedSharding(auto, P("model")))
    )
    wrapped = weq.WeightNorm(linear)
    seen["equinox_scale_spec"] = _spec(wrapped.scales["weight/scale"].sharding.spec)
    return seen


@pytest.fixture(scope="module")
def probe() -> dict:
    return run_on_8_devices("tests.test_sharding", "_probe")


@pytest.mark.parametrize("kind", ["mesh", "logical"])
def test_linen_scale_is_boxed_like_its_kernel_under_a_stable_name(probe, kind):
    seen = probe[f"linen_{kind}"]
    assert seen["names"] == ["layer_instance", "layer_instance/kernel/scale"]
    assert seen["box_names"] == ["model" if kind == "mesh" else "mlp"]
    assert seen["kernel_spec"] == [None, "model"]  # logical names mapped by the rules
    assert seen["scale_spec"] == ["model"]
    assert seen["placed"] == "('model',)"
    assert seen["same_values"]


def test_linen_trains_on_an_explicit_mesh(probe):
    seen = probe["linen_explicit"]
    assert seen["same_values"]
    assert seen["grad_specs"]["layer_instance/kernel"] == "(None, 'model')"
    assert seen["grad_specs"]["layer_instance/kernel/scale"] == "('model',)"


def test_feature_axis_sharding_adds_no_collective(probe):
    plain = _count(probe["hlo_feature_False"])
    assert _count(probe["hlo_feature_True"]) == plain == {}


def test_reduction_axis_sharding_adds_one_all_reduce_of_the_scale_size(probe):
    plain, ours = _count(probe["hlo_reduction_False"]), _count(probe["hlo_reduction_True"])
    assert set(ours) == set(plain) == {"all-reduce"}
    added = list(ours["all-reduce"])
    for shape in plain["all-reduce"]:
        added.remove(shape)
    assert len(added) == 1
    assert re.fullmatch(r"f32\[(1,)?256\](\{[0-9,]*\})?", added[0]), added


def test_equinox_scale_is_placed_like_its_weight(probe):
    assert probe["equinox_scale_spec"] == "('model',)"


def test_haiku_scales_shard_like_their_kernels_through_a_train_step(probe):
    assert probe["haiku_specs"]["weight_norm/linear/w/scale"] == "('model',)"
    assert probe["haiku_grad_specs"] == {
        "linear/b": "('model',)",
        "linear/w": "(None, 'model')",
        "weight_norm/linear/w/scale": "('model',)",
    }
