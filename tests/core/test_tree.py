"""flatten / unflatten: lossless, ordered, loud on ambiguity."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import FrozenDict, freeze
from hypothesis import given
from hypothesis import strategies as st

from weightnorm.core import flatten, unflatten


def _same_tree(a, b) -> bool:
    """Same structure (container types and keys) and identical leaves."""
    if jax.tree.structure(a) != jax.tree.structure(b):
        return False
    return all(
        np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def test_flatten_joins_paths_in_tree_order():
    tree = {"b": {"kernel": 1.0, "bias": 2.0}, "a": [3.0, {"x": 4.0}]}
    assert list(flatten(tree).items()) == [
        ("a/0", 3.0),
        ("a/1/x", 4.0),
        ("b/bias", 2.0),
        ("b/kernel", 1.0),
    ]


def test_flatten_custom_separator():
    assert flatten({"a": {"b": 1}}, sep=".") == {"a.b": 1}


def test_flatten_frozendict_and_haiku_bundles():
    assert flatten(freeze({"params": {"Dense_0": {"kernel": 1}}})) == {"params/Dense_0/kernel": 1}
    haiku_params = {"mlp/~/linear_0": {"w": 1, "b": 2}, "~": {"top": 3}}
    assert flatten(haiku_params) == {
        "mlp/~/linear_0/b": 2,
        "mlp/~/linear_0/w": 1,
        "~/top": 3,
    }


def test_flatten_collision_names_both_paths():
    with pytest.raises(ValueError, match=r"'a/b': \['a'\]\['b'\] and \['a/b'\]"):
        flatten({"a/b": 1, "a": {"b": 2}})


@pytest.mark.parametrize("sep", ["", None])
def test_empty_separator_is_rejected(sep):
    with pytest.raises(ValueError, match="sep"):
        flatten({"a": 1}, sep=sep)


def test_unflatten_without_like_splits_on_separator():
    assert unflatten({"a/b": 1, "a/c/d": 2, "e": 3}) == {"a": {"b": 1, "c": {"d": 2}}, "e": 3}


def test_unflatten_without_like_rejects_leaf_that_is_also_a_subtree():
    with pytest.raises(ValueError, match=r"'a'.*leaf"):
        unflatten({"a": 1, "a/b": 2})
    with pytest.raises(ValueError, match="both a leaf and a subtree"):
        unflatten({"a/b": 2, "a": 1})


def test_unflatten_with_like_keeps_keys_that_contain_the_separator():
    like = {"WeightNorm_0": {"Dense_1/kernel/scale": 0}, "mlp/~/linear_0": {"w": 0}}
    flat = {"WeightNorm_0/Dense_1/kernel/scale": 7, "mlp/~/linear_0/w": 8}
    assert unflatten(flat, like=like) == {
        "WeightNorm_0": {"Dense_1/kernel/scale": 7},
        "mlp/~/linear_0": {"w": 8},
    }


def test_unflatten_with_like_keeps_container_types():
    like = freeze({"a": {"b": 0}})
    out = unflatten({"a/b": 1}, like=like)
    assert isinstance(out, FrozenDict)
    assert out == freeze({"a": {"b": 1}})


def test_unflatten_with_like_lists_missing_and_extra_keys():
    like = {"a": {"b": 0, "c": 0}}
    with pytest.raises(ValueError, match=r"missing keys \['a/c'\], unexpected keys \['a/x'\]"):
        unflatten({"a/b": 1, "a/x": 2}, like=like)


def test_unflatten_rejects_non_mappings_and_non_string_keys():
    with pytest.raises(TypeError, match="flat dict"):
        unflatten([("a", 1)])
    with pytest.raises(TypeError, match="strings, got 3"):
        unflatten({3: 1})


def test_round_trip_of_real_linen_weight_norm_variables():
    class Model(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.WeightNorm(nn.Dense(3), variable_filter=None)(x)
            return nn.BatchNorm(use_running_average=True)(x)

    variables = Model().init(jax.random.key(0), jnp.ones((1, 2)))
    flat = flatten(variables)
    assert "params/WeightNorm_0/Dense_0/kernel/scale" in flat
    assert _same_tree(unflatten(flat, like=variables), variables)


_names = st.text(alphabet="abcxyz_0~.", min_size=1, max_size=4)
_leaves = st.integers(-5, 5).map(lambda i: np.full((2,), i, np.float32))
_trees = st.recursive(
    st.dictionaries(_names, _leaves, min_size=1, max_size=3),
    lambda children: st.dictionaries(_names, children, min_size=1, max_size=3),
    max_leaves=12,
)


@given(_trees)
def test_round_trip_without_like(tree):
    assert _same_tree(unflatten(flatten(tree)), tree)


@given(_trees, st.sampled_from(["/", ".", "::"]))
def test_round_trip_with_like_and_any_separator(tree, sep):
    assert _same_tree(unflatten(flatten(tree, sep=sep), like=tree, sep=sep), tree)


@given(st.dictionaries(st.text(alphabet="ab/~", min_size=1, max_size=5), _leaves, max_size=6))
def test_round_trip_with_like_when_keys_contain_the_separator(bundle):
    tree = {"outer": bundle}  # one level: distinct keys cannot collide
    assert _same_tree(unflatten(flatten(tree), like=tree), tree)
