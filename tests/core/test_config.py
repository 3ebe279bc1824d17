"""WeightNormConfig: flax's defaults, canonical and hashable, loud on bad values."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from weightnorm.core import WeightNormConfig


def test_defaults_are_flax_linen_weight_norm_defaults():
    flax_fields = {f.name: f for f in dataclasses.fields(nn.WeightNorm)}
    ours = WeightNormConfig()
    # Fields flax lacks are extensions whose defaults leave flax's behaviour unchanged.
    extensions = {"stack_axes": 0}
    for field in dataclasses.fields(WeightNormConfig):
        if field.name in extensions:
            assert getattr(ours, field.name) == extensions[field.name]
            continue
        flax_field = flax_fields[field.name]
        if field.name == "scale_init":  # spelled "ones"; init_scales gives flax's ones
            assert ours.scale_init == "ones"
            continue
        flax_default = (
            flax_field.default_factory()
            if flax_field.default is dataclasses.MISSING
            else flax_field.default
        )
        assert getattr(ours, field.name) == flax_default, field.name


def test_config_is_hashable_and_equal_by_value():
    a = WeightNormConfig(feature_axes=[0, -1], variable_filter=["kernel", "Baz"])
    b = WeightNormConfig(feature_axes=(0, -1), variable_filter={"Baz", "kernel"})
    assert a == b
    assert hash(a) == hash(b)
    assert WeightNormConfig(param_dtype="bfloat16") == WeightNormConfig(param_dtype=jnp.bfloat16)


def test_config_is_a_valid_static_jit_argument():
    traces = []

    def f(x, config):
        traces.append(config)
        return x * config.epsilon

    jitted = jax.jit(f, static_argnums=1)
    jitted(1.0, WeightNormConfig(variable_filter="kernel"))
    jitted(1.0, WeightNormConfig(variable_filter={"kernel"}))
    assert len(traces) == 1


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"variable_filter": {"kernel", 3}}, TypeError, r"must be strings .*got 3 \(int\)"),
        ({"variable_filter": 3}, TypeError, "variable_filter"),
        ({"variable_filter": {"kernel": 1}}, TypeError, "variable_filter"),
        ({"feature_axes": (0, 0)}, ValueError, "names an axis twice"),
        ({"feature_axes": 1.0}, TypeError, "feature_axes"),
        ({"feature_axes": (0, "1")}, TypeError, "must hold ints"),
        ({"feature_axes": True}, TypeError, "feature_axes"),
        ({"epsilon": -1e-3}, ValueError, "epsilon"),
        ({"epsilon": float("nan")}, ValueError, "epsilon"),
        ({"epsilon": "small"}, TypeError, "epsilon"),
        ({"param_dtype": jnp.int32}, ValueError, "param_dtype.*floating"),
        ({"dtype": "not-a-dtype"}, TypeError, "`dtype` must be a dtype"),
        ({"use_scale": 1}, TypeError, "use_scale"),
        ({"scale_init": 1.0}, TypeError, "scale_init"),
    ],
)
def test_invalid_values_raise_clear_errors(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        WeightNormConfig(**kwargs)


def test_replace_checks_again():
    config = WeightNormConfig()
    assert config.replace(feature_axes=[1]).feature_axes == (1,)
    with pytest.raises(ValueError, match="epsilon"):
        config.replace(epsilon=-1.0)


def test_dtypes_are_canonical_numpy_dtypes():
    config = WeightNormConfig(dtype=jnp.bfloat16)
    assert config.dtype == np.dtype(jnp.bfloat16)
    assert config.param_dtype == np.dtype("float32")


def test_numpy_and_zero_dimensional_values_are_accepted():
    config = WeightNormConfig(feature_axes=np.array(1), epsilon=jnp.float32(1e-6))
    assert config.feature_axes == 1
    assert config.epsilon == pytest.approx(1e-6)
    assert WeightNormConfig(feature_axes=np.array([0, 2])).feature_axes == (0, 2)


def test_no_feature_axes_is_the_same_as_none():
    assert WeightNormConfig(feature_axes=()) == WeightNormConfig(feature_axes=None)
