"""The NNX adapter against flax.nnx.WeightNorm, flax.linen.WeightNorm and our Linen adapter."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from jax.sharding import PartitionSpec as P

from tests.peers import assert_bitwise_equal
from weightnorm import NoVariableSelectedWarning
from weightnorm.adapters import linen as wl
from weightnorm.adapters import nnx as wn
from weightnorm.testing import assert_trees_close, default_tolerance


def normal(seed, *shape, dtype=jnp.float32):
    """Inputs from numpy: no XLA compile per shape."""
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), dtype)


def assert_same_tree(ours, theirs):
    """Same structure, dtypes and values (States compared through their pure dicts)."""
    if isinstance(ours, nnx.State):
        ours, theirs = nnx.to_pure_dict(ours), nnx.to_pure_dict(theirs)
    assert jax.tree.structure(ours) == jax.tree.structure(theirs)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        assert_bitwise_equal(a, b)


def assert_close_gradients(ours, theirs):
    """Gradients agree with flax's autodiff to rounding (ours go through a custom derivative)."""
    ours, theirs = nnx.to_pure_dict(ours), nnx.to_pure_dict(theirs)
    assert jax.tree.structure(ours) == jax.tree.structure(theirs)
    assert_trees_close(ours, theirs)


def raw(array):
    """The array, or the data of a typed PRNG key."""
    return jax.random.key_data(array) if jnp.issubdtype(array.dtype, jax.dtypes.prng_key) else array


def sin_loss(x):
    return lambda model: jnp.sum(jnp.sin(model(x).astype(jnp.float32)))


class Block(nnx.Module):
    """Linear, BatchNorm and Dropout: params, batch stats and rng state in one layer."""

    def __init__(self, rngs):
        self.linear = nnx.Linear(3, 4, rngs=rngs)
        self.norm = nnx.BatchNorm(4, momentum=0.5, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x):
        return self.drop(self.norm(self.linear(x)))


# --- against flax.nnx.WeightNorm, where its semantics are right: float32 outputs bitwise ---

LAYERS = {
    "linear": (lambda dtype: nnx.Linear(3, 4, param_dtype=dtype, rngs=nnx.Rngs(0)), (5, 3)),
    "conv": (
        lambda dtype: nnx.Conv(2, 4, (3, 3), param_dtype=dtype, rngs=nnx.Rngs(0)),
        (1, 5, 5, 2),
    ),
}
CASES = [
    # (layer, feature_axes, variable_filter, use_scale, layer param_dtype, WeightNorm dtype)
    ("linear", -1, nnx.PathContains("kernel"), True, jnp.float32, None),
    ("linear", 0, nnx.PathContains("kernel"), True, jnp.float32, None),
    ("linear", None, nnx.PathContains("kernel"), True, jnp.float32, None),
    ("linear", -1, nnx.PathContains("bias"), True, jnp.float32, None),
    ("linear", -1, nnx.Everything(), True, jnp.float32, None),
    ("linear", -1, nnx.PathContains("kernel"), False, jnp.float32, None),
    ("linear", -1, nnx.PathContains("kernel"), True, jnp.bfloat16, None),
    ("linear", -1, nnx.PathContains("kernel"), True, jnp.bfloat16, jnp.bfloat16),
    ("conv", -1, nnx.PathContains("kernel"), True, jnp.float32, None),
    ("conv", (-2, -1), nnx.PathContains("kernel"), True, jnp.float32, None),
    ("conv", (0, -1), nnx.PathContains("kernel"), False, jnp.float32, None),
    ("conv", None, nnx.Everything(), True, jnp.float32, None),
]


@pytest.mark.parametrize(("layer", "axes", "filt", "use_scale", "layer_dtype", "dtype"), CASES)
def test_first_call_is_bitwise_flax_nnx(layer, axes, filt, use_scale, layer_dtype, dtype):
    make, x_shape = LAYERS[layer]
    kwargs = dict(
        feature_axes=axes,
        variable_filter=filt,
        use_scale=use_scale,
        dtype=dtype,
        scale_init=nnx.initializers.constant(-1.5),  # negative: flax's second call flips
    )
    x = normal(1, *x_shape)
    ours = wn.WeightNorm(make(layer_dtype), **kwargs)
    theirs = nnx.WeightNorm(make(layer_dtype), rngs=nnx.Rngs(1), **kwargs)
    if use_scale:
        assert {key[: -len("/scale")] for key in ours.scales} == {
            "/".join(path) for path in theirs.scales
        }
        for path, scale in theirs.scales.items():
            assert_bitwise_equal(ours.scales["/".join(path) + "/scale"][...], scale)
    else:
        assert theirs.scales is None and ours.scales == {}
    raw = wn.flatten(ours.layer_instance)  # arrays: a snapshot, not the live variables

    # Gradients first: flax's wrapper overwrites its layer's params even under nnx.grad.
    our_grads = nnx.grad(sin_loss(x))(ours)
    their_grads = nnx.grad(sin_loss(x))(theirs)
    assert_close_gradients(our_grads["layer_instance"], their_grads["layer_instance"])

    first = ours(x)
    reference = nnx.WeightNorm(make(layer_dtype), rngs=nnx.Rngs(1), **kwargs)(x)
    if layer_dtype == jnp.float32:
        assert_bitwise_equal(first, reference)
    else:  # half-precision sums of squares are accumulated in float32, flax's are not
        tolerance = default_tolerance(layer_dtype)
        assert_trees_close(first, reference, rtol=tolerance, atol=tolerance)
    # Ours is a function of its params: the layer keeps v, and a second call agrees.
    assert_same_tree(wn.flatten(ours.layer_instance), raw)
    assert_bitwise_equal(ours(x), first)


def test_flax_overwrites_the_layer_and_we_do_not():
    x = normal(1, 5, 3)
    make = lambda: nnx.Linear(  # noqa: E731
        3, 4, kernel_init=nnx.initializers.normal(10.0), param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0)
    )
    kwargs = dict(scale_init=nnx.initializers.constant(-2.0))
    ours, theirs = (
        wn.WeightNorm(make(), **kwargs),
        nnx.WeightNorm(make(), rngs=nnx.Rngs(0), **kwargs),
    )
    v = make().kernel[...]
    first, our_first = theirs(x), ours(x)
    tolerance = default_tolerance(jnp.bfloat16)  # our bf16 sums are accumulated in float32
    assert_trees_close(our_first, first, rtol=tolerance, atol=tolerance)

    # flax: the kernel now holds -2 * v / ||v||, promoted to float32 ...
    kernel = theirs.layer_instance.kernel[...]
    assert kernel.dtype == jnp.float32
    np.testing.assert_allclose(np.linalg.norm(kernel, axis=0), 2.0, rtol=1e-2)  # bf16 v
    # ... so a negative scale flips the sign of the output on every call.
    np.testing.assert_allclose(theirs(x), -first, rtol=1e-2, atol=1e-2)

    # ours: v is untouched, in its own dtype, and every call gives the same output.
    assert_bitwise_equal(ours.layer_instance.kernel[...], v)
    assert_bitwise_equal(ours(x), our_first)


def test_tied_weights_and_jit_cache_are_left_alone_where_flax_changes_them():
    x = normal(1, 2, 3)
    for weight_norm, changes in [
        (lambda layer: nnx.WeightNorm(layer, rngs=nnx.Rngs(0)), True),
        (wn.WeightNorm, False),
    ]:
        layer = nnx.Linear(3, 3, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
        tied = nnx.Linear(3, 3, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(1))
        tied.kernel = layer.kernel  # one Variable used by two layers
        before = tied(x)
        model = weight_norm(layer)
        traces = []

        @nnx.jit
        def forward(model, x, traces=traces):
            traces.append(None)
            return model(x)

        for _ in range(3):
            forward(model, x)
        # flax writes a float32 kernel into the bf16 layer: the tied layer computes
        # something else, and the state's new dtype makes nnx.jit trace again.
        assert (not np.array_equal(tied(x), before)) == changes
        assert len(traces) == (2 if changes else 1)


# --- the same function as our Linen adapter; a property ------------------------------

_floats = st.floats(-4, 4, width=32)


def linen_and_nnx(direction, scale, bias):
    """Our Linen wrapper's variables and an NNX wrapper holding the same weights."""
    variables = {
        "params": {
            "layer_instance": {"kernel": direction, "bias": bias},
            "layer_instance/kernel/scale": scale,
        }
    }
    model = wn.WeightNorm(nnx.Linear(3, 4, rngs=nnx.Rngs(0)))
    flat = {"layer_instance/kernel": direction, "layer_instance/bias": bias}
    nnx.update(model, wn.unflatten({**flat, "scales/kernel/scale": scale}, nnx.state(model)))
    return variables, model


@given(
    direction=hnp.arrays(np.float32, (3, 4), elements=_floats),
    scale=hnp.arrays(np.float32, (4,), elements=_floats),
    bias=hnp.arrays(np.float32, (4,), elements=_floats),
    x=hnp.arrays(np.float32, (2, 3), elements=_floats),
)
def test_property_round_trip_norms_and_linen_agreement(direction, scale, bias, x):
    variables, model = linen_and_nnx(*map(jnp.asarray, (direction, scale, bias)))
    # The round trip through flat dicts is exact.
    flat = wn.flatten(model)
    assert_same_tree(wn.flatten(wn.unflatten(flat, like=model)), flat)
    assert_bitwise_equal(flat["scales/kernel/scale"], scale)
    # Normalized columns have the norms of their scales (epsilon aside).
    kernel = model.normalized_layer().kernel[...]
    norms = np.sqrt(np.sum(direction.astype(np.float64) ** 2, axis=0))
    expected = np.abs(scale) * norms / np.sqrt(norms**2 + 1e-12)
    np.testing.assert_allclose(np.linalg.norm(kernel, axis=0), expected, rtol=1e-5, atol=1e-6)
    # The same outputs as our Linen adapter on the same weights.
    assert_bitwise_equal(model(x), wl.WeightNorm(nn.Dense(4)).apply(variables, x))


def test_same_outputs_and_gradients_as_linen_adapter_and_flax_linen():
    direction, scale, bias = normal(0, 3, 4), normal(1, 4), normal(2, 4)
    variables, model = linen_and_nnx(direction, scale, bias)
    x = normal(3, 5, 3)
    grads = nnx.grad(sin_loss(x))(model)
    # Our Linen adapter shares the custom derivative: bitwise. flax.linen's autodiff: rounding.
    for module, same in (
        (wl.WeightNorm(nn.Dense(4)), assert_bitwise_equal),
        (nn.WeightNorm(nn.Dense(4)), assert_trees_close),
    ):
        loss = lambda v, module=module: jnp.sum(jnp.sin(module.apply(v, x)))  # noqa: E731
        theirs = jax.grad(loss)(variables)["params"]
        same(grads["layer_instance"]["kernel"][...], theirs["layer_instance"]["kernel"])
        same(grads["layer_instance"]["bias"][...], theirs["layer_instance"]["bias"])
        same(grads["scales"]["kernel/scale"][...], theirs["layer_instance/kernel/scale"])


# --- trainable scales, transforms, state passing through ------------------------------


def test_scales_are_params_and_an_optimizer_trains_them():
    x = normal(1, 5, 3)
    ours = wn.WeightNorm(nnx.Linear(3, 4, rngs=nnx.Rngs(0)))
    theirs = nnx.WeightNorm(nnx.Linear(3, 4, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(0))
    assert sorted(wn.flatten(nnx.state(ours, nnx.Param))) == [
        "layer_instance/bias",
        "layer_instance/kernel",
        "scales/kernel/scale",
    ]
    # flax's scales are plain arrays, so no optimizer over nnx.Param sees them.
    assert sorted(wn.flatten(nnx.state(theirs, nnx.Param))) == [
        "layer_instance/bias",
        "layer_instance/kernel",
    ]
    optimizer = nnx.Optimizer(ours, optax.sgd(0.1), wrt=nnx.Param)
    before = wn.flatten(nnx.state(ours, nnx.Param))

    @nnx.jit
    def step(model, optimizer):
        optimizer.update(model, nnx.grad(sin_loss(x))(model))

    step(ours, optimizer)
    after = wn.flatten(nnx.state(ours, nnx.Param))
    for key in before:  # every param moved, the scale included
        assert not np.array_equal(after[key], before[key]), key


def test_jit_split_merge_and_eager_agree():
    x = normal(1, 5, 3)
    model = wn.WeightNorm(
        nnx.Sequential(
            nnx.Linear(3, 6, rngs=nnx.Rngs(0)), nnx.relu, nnx.Linear(6, 2, rngs=nnx.Rngs(1))
        )
    )
    assert sorted(model.scales) == ["layers/0/kernel/scale", "layers/2/kernel/scale"]
    before = wn.flatten(model)
    eager = model(x)
    assert_bitwise_equal(nnx.jit(lambda m, x: m(x))(model, x), eager)
    graphdef, state = nnx.split(model)
    assert_bitwise_equal(jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))(state, x), eager)
    assert_bitwise_equal(nnx.merge(graphdef, state)(x), eager)
    assert_same_tree(wn.flatten(model), before)  # nothing was written back


def test_vmapped_ensemble_has_per_member_scales_like_flax():
    def ensemble(weight_norm):
        @nnx.vmap
        def make(key):
            return weight_norm(nnx.Linear(3, 4, rngs=nnx.Rngs(key)))

        return make(jax.random.split(jax.random.key(0), 3))

    ours = ensemble(wn.WeightNorm)
    theirs = ensemble(lambda layer: nnx.WeightNorm(layer, rngs=nnx.Rngs(0)))
    assert ours.scales["kernel/scale"][...].shape == (3, 4)
    forward = nnx.vmap(lambda m, x: m(x), in_axes=(0, None))
    x = normal(1, 2, 3)
    assert_bitwise_equal(forward(ours, x), forward(theirs, x))


def test_batch_stats_and_dropout_rngs_pass_through():
    x = normal(1, 8, 3) * 3 + 1
    ours = wn.WeightNorm(Block(nnx.Rngs(0)))
    # The same function with flax's wrapper around the Linear alone (right on a first call).
    reference = Block(nnx.Rngs(0))
    reference.linear = nnx.WeightNorm(reference.linear, rngs=nnx.Rngs(0))
    assert sorted(ours.scales) == ["linear/kernel/scale"]

    step = nnx.jit(lambda m, x: m(x))
    assert_bitwise_equal(step(ours, x), step(reference, x))
    layer = ours.layer_instance
    assert_bitwise_equal(layer.norm.mean[...], reference.norm.mean[...])
    assert_bitwise_equal(layer.norm.var[...], reference.norm.var[...])
    assert int(layer.drop.rngs.count[...]) == int(reference.drop.rngs.count[...]) == 1
    assert_bitwise_equal(layer.linear.kernel[...], Block(nnx.Rngs(0)).linear.kernel[...])

    # A second step draws a new dropout mask, as the bare block would.
    assert not np.array_equal(step(ours, x), step(ours, x))
    ours.eval()  # flips the wrapped BatchNorm and Dropout
    assert_bitwise_equal(ours(x), ours(x))


def test_scale_of_a_partitioned_kernel_is_sharded_like_its_feature_axes():
    mesh = jax.make_mesh((1,), ("model",), axis_types=(jax.sharding.AxisType.Explicit,))
    init = nnx.with_partitioning(nnx.initializers.lecun_normal(), (None, "model"))
    with jax.set_mesh(mesh):
        layers = [nnx.Linear(3, 4, kernel_init=init, rngs=nnx.Rngs(0)) for _ in range(2)]
    ours = wn.WeightNorm(layers[0])  # made outside the mesh's context
    theirs = nnx.WeightNorm(layers[1], rngs=nnx.Rngs(0))
    specs = nnx.get_partition_spec(nnx.state(ours))
    assert specs["layer_instance"]["kernel"].get_value() == P(None, "model")
    assert specs["scales"]["kernel/scale"].get_value() == P("model")
    assert ours.scales["kernel/scale"][...].sharding.spec == P("model")
    # flax leaves the scale unannotated (replicated).
    assert not isinstance(theirs.scales[("kernel",)], nnx.Variable)
    x = normal(1, 2, 3)
    with jax.set_mesh(mesh):
        assert_bitwise_equal(nnx.jit(lambda m, x: m(x))(ours, x), theirs(x))


def test_filter_spellings():
    def scales(**kwargs):
        return sorted(wn.WeightNorm(Block(nnx.Rngs(0)), **kwargs).scales)

    kernels = ["linear/kernel/scale"]
    every_param = [
        "linear/bias/scale",
        "linear/kernel/scale",
        "norm/bias/scale",
        "norm/scale/scale",
    ]
    assert scales() == kernels
    assert scales(variable_filter="kern") == kernels  # substring, as in every adapter
    with pytest.warns(NoVariableSelectedWarning, match=r"PathContains\('kern'") as caught:
        assert scales(variable_filter=nnx.PathContains("kern")) == []  # NNX: an exact component
    assert [w.filename for w in caught] == [__file__]  # once, pointing at the caller's line
    assert scales(variable_filter=None, feature_axes=None) == every_param
    assert scales(variable_filter=nnx.Everything(), feature_axes=None) == every_param
    assert scales(variable_filter=nnx.Param, feature_axes=None) == every_param
    assert scales(variable_filter=[nnx.PathContains("norm"), nnx.PathContains("bias")]) == [
        "linear/bias/scale",
        "norm/bias/scale",
        "norm/scale/scale",
    ]
    assert scales(variable_filter=lambda path: path.endswith("/bias")) == [
        "linear/bias/scale",
        "norm/bias/scale",
    ]
    # Batch stats are never normalized; flax creates no scale for them but then fails.
    theirs = nnx.WeightNorm(Block(nnx.Rngs(0)), variable_filter=nnx.Everything(), rngs=nnx.Rngs(0))
    with pytest.raises(RuntimeError, match="Could not find the scale"):
        theirs(jnp.ones((2, 3)))
    ours = wn.WeightNorm(Block(nnx.Rngs(0)), variable_filter=nnx.Everything(), feature_axes=None)
    assert ours(jnp.ones((2, 3))).shape == (2, 4)


# --- init, dtypes, zero weights, errors ------------------------------------------------


def test_random_scale_init_takes_a_key_from_rngs_where_flax_fails():
    init = nnx.initializers.normal(1.0)
    with pytest.raises(TypeError, match="PRNG key"):
        nnx.WeightNorm(nnx.Linear(3, 4, rngs=nnx.Rngs(0)), scale_init=init, rngs=nnx.Rngs(0))

    def scale(seed):
        rngs = nnx.Rngs(seed)
        model = wn.WeightNorm(nnx.Linear(3, 4, rngs=nnx.Rngs(0)), scale_init=init, rngs=rngs)
        assert int(rngs.params.count[...]) == 1  # one key drawn
        return model.scales["kernel/scale"][...]

    assert len(set(scale(7).tolist())) == 4
    assert_bitwise_equal(scale(7), scale(7))
    assert not np.array_equal(scale(7), scale(8))
    with pytest.raises(
        ValueError, match=r"needs randomness to make \['kernel/scale'\]: pass `rngs=nnx.Rngs\(0\)`"
    ):
        wn.WeightNorm(nnx.Linear(3, 4, rngs=nnx.Rngs(0)), scale_init=init)


def test_deterministic_scale_init_draws_no_key():
    rngs = nnx.Rngs(0)
    wn.WeightNorm(nnx.Linear(3, 4, rngs=rngs), rngs=rngs)
    after_wrapper = nnx.Linear(3, 4, rngs=rngs).kernel[...]
    plain = nnx.Rngs(0)
    nnx.Linear(3, 4, rngs=plain)
    assert_bitwise_equal(after_wrapper, nnx.Linear(3, 4, rngs=plain).kernel[...])


def test_param_dtype_is_the_scales_dtype_where_flax_ignores_it():
    layer = lambda: nnx.Linear(3, 4, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0))  # noqa: E731
    ours = wn.WeightNorm(layer(), param_dtype=jnp.bfloat16)
    theirs = nnx.WeightNorm(layer(), param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    assert ours.scales["kernel/scale"][...].dtype == jnp.bfloat16
    assert theirs.scales[("kernel",)].dtype == jnp.float32


def test_zero_kernel_gives_finite_outputs_and_gradients():
    x = normal(1, 2, 3)
    zero = lambda: nnx.Linear(3, 4, kernel_init=nnx.initializers.zeros, rngs=nnx.Rngs(0))  # noqa: E731
    ours = wn.WeightNorm(zero())
    grads = nnx.grad(sin_loss(x))(ours)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    assert np.all(np.isfinite(ours(x)))
    theirs = nnx.grad(sin_loss(x))(nnx.WeightNorm(zero(), rngs=nnx.Rngs(0)))
    assert_close_gradients(grads["layer_instance"], theirs["layer_instance"])


class IntegerKernel(nnx.Module):
    def __init__(self):
        self.kernel = nnx.Param(jnp.arange(6, dtype=jnp.int32).reshape(2, 3))

    def __call__(self, x):
        return self.kernel[...] * x


def test_errors_name_the_offending_path():
    with pytest.raises(IndexError):  # flax's own error
        nnx.WeightNorm(nnx.Linear(3, 4, rngs=nnx.Rngs(0)), feature_axes=2, rngs=nnx.Rngs(0))
    theirs = nnx.WeightNorm(IntegerKernel(), rngs=nnx.Rngs(0))
    assert theirs(1).dtype == jnp.float32  # flax silently casts an integer param
    with pytest.raises(ValueError, match=r"'kernel' has dtype int32"):
        wn.WeightNorm(IntegerKernel())
    with pytest.raises(
        ValueError, match=r"axis 2 is out of range for variable 'kernel' with shape \(3, 4\)"
    ):
        wn.WeightNorm(nnx.Linear(3, 4, rngs=nnx.Rngs(0)), feature_axes=2)
    with pytest.raises(TypeError, match=r"must be an nnx\.Module"):
        wn.WeightNorm(lambda x: x)
    with pytest.raises(TypeError, match="`variable_filter` items must be strings"):
        wn.WeightNorm(nnx.Linear(3, 4, rngs=nnx.Rngs(0)), variable_filter=["kernel", 3])


# --- flatten / unflatten ----------------------------------------------------------------


def test_flatten_unflatten_round_trip_every_variable_type():
    model = wn.WeightNorm(Block(nnx.Rngs(0)))
    model(normal(1, 4, 3))  # advance the rng count and batch stats
    flat = wn.flatten(model)
    assert sorted(flat) == [
        "layer_instance/drop/rngs/count",
        "layer_instance/drop/rngs/key",
        "layer_instance/linear/bias",
        "layer_instance/linear/kernel",
        "layer_instance/norm/bias",
        "layer_instance/norm/mean",
        "layer_instance/norm/scale",
        "layer_instance/norm/var",
        "scales/linear/kernel/scale",
    ]
    state = nnx.state(model)
    assert_same_tree(wn.unflatten(flat, like=state), state)
    rebuilt = wn.unflatten(flat, like=model)
    assert rebuilt is not model and isinstance(rebuilt, wn.WeightNorm)
    assert_same_tree(nnx.state(rebuilt), state)
    # Variable types survive: the scales are still Params, the stats BatchStats.
    assert isinstance(rebuilt.scales["linear/kernel/scale"], nnx.Param)
    assert isinstance(rebuilt.layer_instance.norm.mean, nnx.BatchStat)
    x = normal(2, 4, 3)
    model.eval(), rebuilt.eval()
    assert_bitwise_equal(rebuilt(x), model(x))


def test_unflatten_loads_into_a_model_and_leaves_like_alone():
    model = wn.WeightNorm(nnx.Linear(3, 4, rngs=nnx.Rngs(0)))
    params = nnx.state(model, nnx.Param)
    flat = {key: value + 1 for key, value in wn.flatten(params).items()}
    loaded = wn.unflatten(flat, like=params)
    assert_bitwise_equal(
        params["layer_instance"]["kernel"][...] + 1, loaded["layer_instance"]["kernel"][...]
    )
    nnx.update(model, loaded)
    assert_same_tree(wn.flatten(model), flat)


def test_unflatten_names_missing_and_extra_keys():
    model = wn.WeightNorm(nnx.Linear(3, 4, rngs=nnx.Rngs(0)))
    flat = wn.flatten(model)
    flat["scales/bias/scale"] = flat.pop("scales/kernel/scale")
    with pytest.raises(
        ValueError,
        match=r"missing keys \['scales/kernel/scale'\], unexpected keys \['scales/bias/scale'\]",
    ):
        wn.unflatten(flat, like=model)
    with pytest.raises(TypeError, match=r"nnx\.Module or an nnx\.State"):
        wn.flatten({"kernel": jnp.ones(2)})


def test_normalized_layer_exports_a_plain_module():
    model = wn.WeightNorm(
        nnx.Linear(3, 4, rngs=nnx.Rngs(0)), scale_init=nnx.initializers.constant(3.0)
    )
    plain = nnx.clone(model.normalized_layer())
    assert type(plain) is nnx.Linear
    np.testing.assert_allclose(np.linalg.norm(plain.kernel[...], axis=0), 3.0, rtol=1e-6)
    x = normal(1, 2, 3)
    assert_bitwise_equal(plain(x), model(x))


# --- fold and data-dependent init with state, containers and transforms ------------------


def test_data_dependent_init_leaves_batch_stats_and_rng_counts_and_the_input_alone():
    x = normal(1, 16, 3) * 3 + 1
    model = wn.WeightNorm(Block(nnx.Rngs(0)))
    before = wn.flatten(model)
    initialized = wn.data_dependent_init(model, x)
    assert_same_tree(wn.flatten(model), before)
    after = {key: raw(value) for key, value in wn.flatten(initialized).items()}
    changed = sorted(key for key in before if not np.array_equal(after[key], raw(before[key])))
    assert changed == ["layer_instance/linear/bias", "scales/linear/kernel/scale"]
    # The Linear's outputs (pre-activations) are standardized on the batch.
    t = wn.fold(initialized).linear(x)
    np.testing.assert_allclose(t.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(t.std(0), 1.0, rtol=1e-4)


def test_fold_and_data_dependent_init_find_wrappers_in_nnx_dicts_and_use_scale_false():
    class Heads(nnx.Module):
        def __init__(self):
            self.heads = nnx.Dict(
                a=wn.WeightNorm(nnx.Linear(3, 2, rngs=nnx.Rngs(0))),
                b=wn.WeightNorm(nnx.Linear(3, 2, rngs=nnx.Rngs(1)), use_scale=False),
            )

        def __call__(self, x):
            return self.heads["a"](x) + self.heads["b"](x)

    x = normal(1, 32, 3)
    model = Heads()
    plain = wn.fold(model)
    assert all(type(head) is nnx.Linear for head in plain.heads.values())
    np.testing.assert_allclose(plain(x), model(x), rtol=1e-5, atol=1e-6)
    initialized = wn.data_dependent_init(model, x)  # b has no scale: only a is set
    np.testing.assert_allclose(wn.fold(initialized).heads["a"](x).std(0), 1.0, rtol=1e-4)
    assert_same_tree(wn.flatten(initialized.heads["b"]), wn.flatten(model.heads["b"]))
