"""The Linen adapter against flax.linen.WeightNorm itself."""

from __future__ import annotations

import itertools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import freeze, unfreeze
from jax.sharding import PartitionSpec as P

from tests.peers import assert_bitwise_equal
from weightnorm.adapters import linen as wl


def assert_same_variables(ours, theirs):
    """Same tree (names, nesting), shapes, dtypes and values."""
    assert jax.tree.structure(ours) == jax.tree.structure(theirs)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        assert_bitwise_equal(a, b)


def assert_same_gradients(ours, theirs):
    """Same tree, shapes and dtypes; values within float32 rounding.

    Our derivative is a custom rule (weightnorm/core/_primitive.py), so gradients
    agree with autodiff of flax's formula to rounding, not bit for bit.
    """
    assert jax.tree.structure(ours) == jax.tree.structure(theirs)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        assert a.dtype == b.dtype, (a.dtype, b.dtype)
        b = np.asarray(b, np.float32)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * max(1.0, np.abs(b).max()))


# --- the seed example from flax's documentation ---------------------------------


def make_foo(weight_norm, scale_init=nn.initializers.ones):
    class Baz(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(2)(x)

    class Bar(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = Baz()(x)
            x = nn.Dense(3)(x)
            x = Baz()(x)
            return nn.Dense(3)(x)

    class Foo(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Dense(3)(x)
            x = weight_norm(nn.Dense(4), variable_filter=None, scale_init=scale_init)(x)
            x = nn.Dense(5)(x)
            return weight_norm(Bar(), variable_filter={"kernel", "Baz"}, scale_init=scale_init)(x)

    return Foo()


@pytest.mark.parametrize("scale_init", [nn.initializers.ones, nn.initializers.normal(1.0)])
def test_seed_example_same_variables_and_outputs(scale_init):
    x = jax.random.normal(jax.random.key(1), (2, 2))
    theirs, ours = make_foo(nn.WeightNorm, scale_init), make_foo(wl.WeightNorm, scale_init)
    their_vars = theirs.init(jax.random.key(0), x)
    our_vars = ours.init(jax.random.key(0), x)
    assert_same_variables(our_vars, their_vars)
    assert sorted(our_vars["params"]["WeightNorm_1"]) == [
        "Bar_0/Baz_0/Dense_0/bias/scale",
        "Bar_0/Baz_0/Dense_0/kernel/scale",
        "Bar_0/Baz_1/Dense_0/bias/scale",
        "Bar_0/Baz_1/Dense_0/kernel/scale",
        "Bar_0/Dense_0/kernel/scale",
        "Bar_0/Dense_1/kernel/scale",
    ]
    # Perturb every variable so that scales are not all ones, then compare.
    noisy = jax.tree.map(
        lambda v: v + jax.random.normal(jax.random.key(2), v.shape, v.dtype), their_vars
    )
    assert_bitwise_equal(ours.apply(noisy, x), theirs.apply(noisy, x))


def test_fields_and_defaults_match_flax():
    import dataclasses

    def fields(cls):
        out = {}
        for f in dataclasses.fields(cls):
            has_factory = f.default_factory is not dataclasses.MISSING
            out[f.name] = (f.default, f.default_factory() if has_factory else None)
        return {name: value for name, value in out.items() if name not in ("parent", "name")}

    # Fields flax lacks are extensions whose defaults leave flax's behaviour unchanged.
    extensions = {"stack_axes": (0, None)}
    ours = fields(wl.WeightNorm)
    assert {name: ours.pop(name) for name in extensions} == extensions
    assert ours == fields(nn.WeightNorm)


# --- a matrix of configurations against flax -------------------------------------

LAYERS = {
    "dense": (lambda dt: nn.Dense(4, param_dtype=dt), (2, 3)),
    "conv": (lambda dt: nn.Conv(4, (3, 3), param_dtype=dt), (1, 5, 5, 2)),
}
FEATURE_AXES = [-1, 0, (0, 1), None]
FILTERS = [None, {"kernel"}, {"bias"}, {"kernel", "Baz"}]
# name: (layer's param_dtype, WeightNorm's dtype, WeightNorm's param_dtype)
DTYPES = {
    "f32": (jnp.float32, None, jnp.float32),
    "bf16": (jnp.bfloat16, jnp.bfloat16, jnp.bfloat16),
    # flax promotes a bf16 kernel with an f32 scale to f32, and stores it so at init.
    "bf16-kernel": (jnp.bfloat16, None, jnp.float32),
}

CASES = [
    (layer, axes, filt, True, "f32")
    for layer, axes, filt in itertools.product(LAYERS, FEATURE_AXES, FILTERS)
] + [
    (layer, axes, filt, use_scale, dtypes)
    for layer, axes, (filt, use_scale, dtypes) in itertools.product(
        LAYERS,
        [-1, None],
        [
            ({"kernel"}, False, "f32"),
            ({"kernel"}, True, "bf16"),
            (None, False, "bf16"),
            ({"kernel"}, True, "bf16-kernel"),
        ],
    )
]


def _wrap(weight_norm, layer, axes, filt, use_scale, dtypes):
    make_layer, _ = LAYERS[layer]
    layer_dtype, dtype, param_dtype = DTYPES[dtypes]

    class Model(nn.Module):
        @nn.compact
        def __call__(self, x):
            return weight_norm(
                make_layer(layer_dtype),
                feature_axes=axes,
                variable_filter=filt,
                use_scale=use_scale,
                dtype=dtype,
                param_dtype=param_dtype,
                scale_init=nn.initializers.uniform(2.0),
            )(x)

    return Model()


@pytest.mark.parametrize(("layer", "axes", "filt", "use_scale", "dtypes"), CASES)
def test_matrix_same_variables_and_outputs_as_flax(layer, axes, filt, use_scale, dtypes):
    theirs = _wrap(nn.WeightNorm, layer, axes, filt, use_scale, dtypes)
    ours = _wrap(wl.WeightNorm, layer, axes, filt, use_scale, dtypes)
    x = jax.random.normal(jax.random.key(1), LAYERS[layer][1])
    try:
        their_vars = theirs.init(jax.random.key(0), x)
    except Exception:  # flax rejects this combination (an axis out of range for the bias)
        with pytest.raises(ValueError, match=r"out of range for variable '(Dense|Conv)_0/bias'"):
            ours.init(jax.random.key(0), x)
        return
    our_vars = ours.init(jax.random.key(0), x)
    if dtypes == "f32":
        assert_same_variables(our_vars, their_vars)
    else:  # flax stores normalized values at init, so these are bfloat16-close too
        assert jax.tree.structure(our_vars) == jax.tree.structure(their_vars)
        for a, b in zip(jax.tree.leaves(our_vars), jax.tree.leaves(their_vars), strict=True):
            _assert_close_in_bfloat16(a, b)
    loss = lambda model: lambda v: jnp.sum(model.apply(v, x).astype(jnp.float32) ** 2)  # noqa: E731
    our_grads, their_grads = jax.grad(loss(ours))(their_vars), jax.grad(loss(theirs))(their_vars)
    if dtypes == "f32":
        assert_bitwise_equal(ours.apply(their_vars, x), theirs.apply(their_vars, x))
        assert_same_gradients(our_grads, their_grads)
    else:
        # bfloat16 norms are accumulated in float32 where flax sums in bfloat16
        # (tests/core/test_precision.py): same dtypes, values to bfloat16 rounding.
        _assert_close_in_bfloat16(ours.apply(their_vars, x), theirs.apply(their_vars, x))
        assert jax.tree.structure(our_grads) == jax.tree.structure(their_grads)
        for a, b in zip(jax.tree.leaves(our_grads), jax.tree.leaves(their_grads), strict=True):
            _assert_close_in_bfloat16(a, b)


def _assert_close_in_bfloat16(actual, expected):
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    expected = np.asarray(expected, np.float32)
    atol = 2e-2 * max(1.0, np.abs(expected).max())
    np.testing.assert_allclose(np.asarray(actual, np.float32), expected, rtol=5e-2, atol=atol)


def test_only_bias_with_two_feature_axes_is_rejected_by_flax():
    # Guards the matrix test above: it must not accept errors where flax has none.
    rejected = [c for c in CASES if c[1] == (0, 1) and c[2] in (None, {"bias"})]
    assert len(rejected) == 4
    for case in rejected:
        x = jnp.ones(LAYERS[case[0]][1])
        with pytest.raises(Exception):  # noqa: B017 - flax's own error type
            _wrap(nn.WeightNorm, *case).init(jax.random.key(0), x)


# --- transforms --------------------------------------------------------------------


def test_jit_and_grad_match_flax():
    x = jax.random.normal(jax.random.key(1), (3, 2))
    theirs, ours = make_foo(nn.WeightNorm), make_foo(wl.WeightNorm)
    variables = theirs.init(jax.random.key(0), x)

    def loss(model):
        return jax.jit(jax.grad(lambda v: jnp.sum(jnp.sin(model.apply(v, x)))))

    assert_same_gradients(loss(ours)(variables), loss(theirs)(variables))


def _scanned(weight_norm):
    class Step(nn.Module):
        @nn.compact
        def __call__(self, carry, _):
            return weight_norm(nn.Dense(4))(carry), None

    class Stack(nn.Module):
        @nn.compact
        def __call__(self, x):
            scan = nn.scan(Step, variable_axes={"params": 0}, split_rngs={"params": True}, length=3)
            return scan(name="layers")(x, None)[0]

    return Stack()


def test_scan_gives_per_layer_scales_like_flax():
    x = jax.random.normal(jax.random.key(1), (2, 4))
    their_vars = _scanned(nn.WeightNorm).init(jax.random.key(0), x)
    our_vars = _scanned(wl.WeightNorm).init(jax.random.key(0), x)
    assert_same_variables(our_vars, their_vars)
    assert our_vars["params"]["layers"]["WeightNorm_0"]["Dense_0/kernel/scale"].shape == (3, 4)
    assert_bitwise_equal(
        _scanned(wl.WeightNorm).apply(their_vars, x), _scanned(nn.WeightNorm).apply(their_vars, x)
    )


@pytest.mark.parametrize("transform", ["vmap", "remat"])
def test_vmap_and_remat_match_flax(transform):
    def build(weight_norm):
        if transform == "vmap":
            wrapped = nn.vmap(
                weight_norm,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                in_axes=None,
                axis_size=3,
            )
        else:
            wrapped = nn.remat(weight_norm)
        return wrapped(nn.Dense(4))

    x = jax.random.normal(jax.random.key(1), (2, 4))
    their_vars = build(nn.WeightNorm).init(jax.random.key(0), x)
    our_vars = build(wl.WeightNorm).init(jax.random.key(0), x)
    assert_same_variables(our_vars, their_vars)
    grad = lambda model: jax.grad(lambda v: jnp.sum(model.apply(v, x) ** 2))(their_vars)  # noqa: E731
    assert_same_gradients(grad(build(wl.WeightNorm)), grad(build(nn.WeightNorm)))


# --- where flax is wrong, we differ ---------------------------------------------------


class DenseBatchNorm(nn.Module):
    @nn.compact
    def __call__(self, x, train):
        x = nn.Dense(4)(x)
        self.sow("intermediates", "dense", x)
        return nn.BatchNorm(use_running_average=not train, momentum=0.5)(x)


def _wrapped_block(weight_norm, **kwargs):
    class Model(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            return weight_norm(DenseBatchNorm(name="block"), **kwargs)(x, train)

    return Model()


def _unwrapped_reference():
    """flax's WeightNorm on the Dense alone, BatchNorm outside it: the same function."""

    class Model(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            x = nn.WeightNorm(nn.Dense(4, name="Dense_0"), name="wn")(x)
            self.sow("intermediates", "dense", x)
            return nn.BatchNorm(use_running_average=not train, momentum=0.5, name="BatchNorm_0")(x)

    return Model()


def test_batch_stats_update_and_sow_pass_through_where_flax_fails():
    x = jax.random.normal(jax.random.key(1), (8, 3)) * 3 + 1
    ours = _wrapped_block(wl.WeightNorm)
    variables = ours.init(jax.random.key(0), x)
    out, updates = ours.apply(variables, x, True, mutable=["batch_stats", "intermediates"])

    # The same function built with flax's WeightNorm around the Dense only.
    params = variables["params"]
    reference_vars = {
        "params": {
            "Dense_0": params["block"]["Dense_0"],
            "wn": {"Dense_0/kernel/scale": params["WeightNorm_0"]["block/Dense_0/kernel/scale"]},
            "BatchNorm_0": params["block"]["BatchNorm_0"],
        },
        "batch_stats": {"BatchNorm_0": variables["batch_stats"]["block"]["BatchNorm_0"]},
    }
    ref_out, ref_updates = _unwrapped_reference().apply(
        reference_vars, x, True, mutable=["batch_stats", "intermediates"]
    )
    assert_bitwise_equal(out, ref_out)
    assert_same_variables(
        updates["batch_stats"]["block"]["BatchNorm_0"], ref_updates["batch_stats"]["BatchNorm_0"]
    )
    assert_same_variables(
        updates["intermediates"]["block"]["dense"], ref_updates["intermediates"]["dense"]
    )

    # flax's own WeightNorm cannot do this: its collections are all immutable.
    theirs = _wrapped_block(nn.WeightNorm)
    with pytest.raises(Exception, match="immutable"):
        theirs.apply(variables, x, True, mutable=["batch_stats"])
    _, their_sown = theirs.apply(variables, x, False, mutable=["intermediates"])
    assert their_sown == {}


def test_filter_none_leaves_batch_stats_alone():
    x = jnp.ones((4, 3))
    ours = _wrapped_block(wl.WeightNorm, variable_filter=None).init(jax.random.key(0), x)
    theirs = _wrapped_block(nn.WeightNorm, variable_filter=None).init(jax.random.key(0), x)
    assert sorted(ours["params"]["WeightNorm_0"]) == [
        "block/BatchNorm_0/bias/scale",
        "block/BatchNorm_0/scale/scale",
        "block/Dense_0/bias/scale",
        "block/Dense_0/kernel/scale",
    ]
    # flax also "normalizes" the running mean and variance.
    assert "block/BatchNorm_0/mean/scale" in theirs["params"]["WeightNorm_0"]


def test_bare_string_filter_is_one_item():
    x = jnp.ones((1, 3))
    ours = wl.WeightNorm(nn.Dense(4), variable_filter="kernel").init(jax.random.key(0), x)
    theirs = nn.WeightNorm(nn.Dense(4), variable_filter="kernel").init(jax.random.key(0), x)
    assert sorted(ours["params"]) == ["layer_instance", "layer_instance/kernel/scale"]
    # flax iterates the characters, and 'e' matches "bias" too.
    assert "layer_instance/bias/scale" in theirs["params"]


def test_the_raw_direction_is_not_overwritten_at_call_time():
    x = jnp.ones((2, 3))
    model = wl.WeightNorm(nn.Dense(4))
    variables = unfreeze(model.init(jax.random.key(0), x))
    variables["params"]["layer_instance"]["kernel"] *= 7.0
    _, state = model.apply(freeze(variables), x, mutable=True)
    # Even with every collection mutable, the stored kernel is still the raw v.
    assert_same_variables(state["params"], variables["params"])


def test_zero_kernel_gives_finite_outputs_and_gradients():
    x = jnp.ones((2, 3))
    model = wl.WeightNorm(nn.Dense(4))
    variables = unfreeze(model.init(jax.random.key(0), x))
    variables["params"]["layer_instance"]["kernel"] = jnp.zeros((3, 4))
    out = model.apply(variables, x)
    grads = jax.grad(lambda v: jnp.sum(model.apply(v, x) * jnp.arange(4.0)))(variables)
    assert np.all(np.isfinite(out))
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    theirs = jax.grad(lambda v: jnp.sum(nn.WeightNorm(nn.Dense(4)).apply(v, x) * jnp.arange(4.0)))
    assert_same_gradients(grads, theirs(variables))


def test_feature_axis_out_of_range_names_the_variable():
    with pytest.raises(IndexError):  # flax's own error
        nn.WeightNorm(nn.Dense(4), feature_axes=3).init(jax.random.key(0), jnp.ones((1, 3)))
    with pytest.raises(
        ValueError,
        match=r"axis 3 is out of range for variable 'layer_instance/kernel' with shape \(3, 4\)",
    ):
        wl.WeightNorm(nn.Dense(4), feature_axes=3).init(jax.random.key(0), jnp.ones((1, 3)))


def test_flatten_unflatten_round_trip_real_variables():
    x = jnp.ones((1, 2))
    variables = make_foo(wl.WeightNorm).init(jax.random.key(0), x)
    flat = wl.flatten(variables)
    assert "params/WeightNorm_1/Bar_0/Dense_1/kernel/scale" in flat
    assert_same_variables(wl.unflatten(flat, like=variables), variables)
    with pytest.raises(ValueError, match=r"missing keys \['params/Dense_0/bias'\]"):
        wl.unflatten({k: v for k, v in flat.items() if k != "params/Dense_0/bias"}, like=variables)


def test_duplicate_feature_axes_raise_where_flax_merges_them():
    x = jnp.ones((1, 3))
    theirs = nn.WeightNorm(nn.Dense(4), feature_axes=(1, -1)).init(jax.random.key(0), x)
    assert theirs["params"]["layer_instance/kernel/scale"].shape == (4,)
    with pytest.raises(ValueError, match=r"same axis twice for variable 'layer_instance/kernel'"):
        wl.WeightNorm(nn.Dense(4), feature_axes=(1, -1)).init(jax.random.key(0), x)


def test_predicate_filter():
    x = jnp.ones((1, 3))
    model = wl.WeightNorm(nn.Dense(4), variable_filter=lambda path: path.endswith("/bias"))
    assert sorted(model.init(jax.random.key(0), x)["params"]) == [
        "layer_instance",
        "layer_instance/bias/scale",
    ]


def test_boxed_kernel_gets_a_boxed_scale_under_a_stable_name():
    # flax names the scale `.../kernel/value/scale` (the box leaks into the name) and
    # leaves it unboxed (replicated); ours is `.../kernel/scale`, boxed like the kernel
    # at its feature axis (tests/test_sharding.py). The numbers are flax's.
    x = jnp.ones((2, 3))
    init = nn.with_partitioning(nn.initializers.lecun_normal(), (None, "model"))
    theirs = nn.WeightNorm(nn.Dense(4, kernel_init=init))
    ours = wl.WeightNorm(nn.Dense(4, kernel_init=init))
    their_vars = theirs.init(jax.random.key(0), x)
    our_vars = ours.init(jax.random.key(0), x)
    assert sorted(their_vars["params"]) == ["layer_instance", "layer_instance/kernel/value/scale"]
    assert sorted(our_vars["params"]) == ["layer_instance", "layer_instance/kernel/scale"]
    assert isinstance(our_vars["params"]["layer_instance"]["kernel"], nn.Partitioned)
    scale = our_vars["params"]["layer_instance/kernel/scale"]
    assert isinstance(scale, nn.Partitioned) and scale.names == ("model",)
    assert nn.get_partition_spec(our_vars)["params"]["layer_instance/kernel/scale"] == P("model")
    renamed = {
        "params": {
            "layer_instance": their_vars["params"]["layer_instance"],
            "layer_instance/kernel/scale": their_vars["params"][
                "layer_instance/kernel/value/scale"
            ],
        }
    }
    assert_same_variables(nn.unbox(our_vars), nn.unbox(renamed))
    assert_bitwise_equal(ours.apply(renamed, x), theirs.apply(their_vars, x))


def test_bf16_kernel_is_stored_as_float32_at_init_like_flax():
    x = jnp.ones((1, 3))
    for weight_norm in (nn.WeightNorm, wl.WeightNorm):
        params = weight_norm(nn.Dense(4, param_dtype=jnp.bfloat16)).init(jax.random.key(0), x)
        assert params["params"]["layer_instance"]["kernel"].dtype == jnp.float32
        assert params["params"]["layer_instance"]["bias"].dtype == jnp.bfloat16


class _Counter(nn.Module):
    @nn.compact
    def __call__(self, x):
        self.param("steps", lambda key, shape: jnp.zeros(shape, jnp.int32), (2,))
        return nn.Dense(2)(x)


def test_integer_parameter_selected_by_filter_none_raises_where_flax_casts_it():
    x = jnp.ones((1, 3))
    theirs = nn.WeightNorm(_Counter(), variable_filter=None).init(jax.random.key(0), x)
    assert theirs["params"]["layer_instance"]["steps"].dtype == jnp.float32  # silently cast
    with pytest.raises(ValueError, match=r"'layer_instance/steps' has dtype int32"):
        wl.WeightNorm(_Counter(), variable_filter=None).init(jax.random.key(0), x)


class _Inner(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(2)(x)


class _Outer(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(3)(_Inner()(nn.Dense(3)(_Inner()(x))))


class _Wrapping(nn.Module):
    """Wraps an `_Outer` made in its compact method, so the layer is named `_Outer_0`."""

    wrapper: Any
    variable_filter: Any

    @nn.compact
    def __call__(self, x):
        return self.wrapper(_Outer(), variable_filter=self.variable_filter)(x)


@pytest.mark.parametrize(
    "variable_filter",
    [{}, (), None, {"kernel", "bias"}, {"_Outer"}, {"kernel"}, {"_Inner", "kernel"}],
    ids=["empty-dict", "empty-tuple", "none", "kernel-bias", "outer", "kernel", "inner-kernel"],
)
def test_variable_filters_select_what_flax_selects(variable_filter):
    # An empty dict selects every parameter in flax (its own test passes `{}`); it raised
    # a TypeError here before.
    x = jnp.ones((1, 4))
    ours = _Wrapping(wl.WeightNorm, variable_filter)
    theirs = _Wrapping(nn.WeightNorm, variable_filter)
    variables = ours.init(jax.random.key(0), x)
    expected = theirs.init(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, variables) == jax.tree.map(jnp.shape, expected)
    assert len(variables["params"]["WeightNorm_0"]) >= 4  # the filter selected something
    np.testing.assert_array_equal(ours.apply(variables, x), theirs.apply(expected, x))
