"""Variable filters: flax's substring rule, checked against flax's own choices."""

from __future__ import annotations

import flax.linen as nn
import jax
import pytest
from hypothesis import given
from hypothesis import strategies as st

from weightnorm.core import WeightNormConfig, select


class _Params(nn.Module):
    """A Linen module with one parameter per given '/'-joined path."""

    paths: tuple[str, ...]

    @nn.compact
    def __call__(self):
        return [self.param(path, nn.initializers.zeros, (2,)) for path in self.paths]


_parts = st.text(alphabet="abke_", min_size=1, max_size=3)
_paths = st.lists(
    st.lists(_parts, min_size=1, max_size=3).map("/".join), unique=True, min_size=1, max_size=6
)


@given(paths=_paths, items=st.sets(st.text(alphabet="abke_/", min_size=1, max_size=3), max_size=3))
def test_select_chooses_what_flax_weight_norm_chooses(paths, items):
    """flax creates a scale for exactly the variables its filter selects."""
    variables = jax.eval_shape(
        nn.WeightNorm(_Params(tuple(paths)), variable_filter=items, feature_axes=None).init,
        jax.random.key(0),
    )
    flax_selected = {
        name.removesuffix("/scale") for name in variables["params"] if name.endswith("/scale")
    }
    flat = {f"layer_instance/{path}": 0.0 for path in paths}
    assert set(select(flat, items)) == flax_selected


def test_bare_string_filter_is_one_item_not_its_characters():
    config = WeightNormConfig(variable_filter="kernel")
    assert config.variable_filter == frozenset({"kernel"})
    assert select({"Dense_0/kernel": 0, "Dense_0/bias": 0}, "kernel") == ["Dense_0/kernel"]


@pytest.mark.parametrize("empty", [None, set(), (), []])
def test_empty_filter_selects_every_variable(empty):
    assert WeightNormConfig(variable_filter=empty).variable_filter is None
    assert select({"a/kernel": 0, "a/bias": 0}, empty) == ["a/kernel", "a/bias"]


def test_filter_uses_flax_substring_rule_including_module_names():
    flat = {"kernel_proj/bias": 0, "Dense_0/kernel": 0, "Baz_0/Dense_0/bias": 0, "x/bias": 0}
    assert select(flat, {"kernel", "Baz"}) == [
        "kernel_proj/bias",
        "Dense_0/kernel",
        "Baz_0/Dense_0/bias",
    ]


def test_predicate_filter():
    flat = {"mlp/~/linear_0/w": 0, "wide/b": 0}
    assert select(flat, lambda path: path.rsplit("/", 1)[-1] == "w") == ["mlp/~/linear_0/w"]
