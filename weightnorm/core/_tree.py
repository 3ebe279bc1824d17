"""Lossless conversion between nested parameter trees and flat path-keyed dicts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax

__all__ = ["flatten", "unflatten", "path_key", "check_flat"]


def path_key(key_path: tuple[Any, ...], sep: str = "/") -> str:
    """The string key of one leaf: its key path's entries joined by `sep`.

    Dict keys, sequence indices and attribute names all become plain strings
    (`("Dense_0", "kernel")` -> `"Dense_0/kernel"`, `layers[0].weight` ->
    `"layers/0/weight"`), using `jax.tree_util.keystr`.
    """
    return jax.tree_util.keystr(key_path, simple=True, separator=sep)


def _keyed_leaves(tree: Any, sep: str) -> tuple[list[tuple[str, Any]], Any]:
    """(key, leaf) pairs in the tree's order and the treedef; raises on key collisions."""
    leaves_with_paths, treedef = jax.tree_util.tree_flatten_with_path(tree)
    pairs: list[tuple[str, Any]] = []
    first_path: dict[str, tuple[Any, ...]] = {}
    for key_path, leaf in leaves_with_paths:
        key = path_key(key_path, sep)
        if key in first_path:
            raise ValueError(
                f"Two different paths give the same flat key {key!r}: "
                f"{jax.tree_util.keystr(first_path[key])} and "
                f"{jax.tree_util.keystr(key_path)}. Rename one of them, or "
                f"flatten with a separator that neither contains (sep={sep!r})."
            )
        first_path[key] = key_path
        pairs.append((key, leaf))
    return pairs, treedef


def flatten(tree: Any, sep: str = "/") -> dict[str, Any]:
    """Flattens a nested parameter tree into a dict keyed by `sep`-joined paths.

    Works on any JAX pytree: nested dicts and frozen dicts, two-level
    `{"module/~/name": {"w": ...}}` dicts, lists and tuples, pytree modules.
    Keys come out in the tree's own (JAX) order. Leaves are kept as they are, and
    `None` leaves and empty containers hold no leaf, so they give no key.

    Args:
      tree: the nested parameters.
      sep: the separator placed between path entries.

    Returns:
      A flat `{path: leaf}` dict.

    Raises:
      ValueError: when two different paths would give the same key (e.g.
        `{"a/b": x, "a": {"b": y}}`), naming both paths.

    Examples:
      >>> import jax.numpy as jnp
      >>> flat = flatten({"Dense_0": {"kernel": jnp.ones((2, 3)), "bias": jnp.zeros(3)}})
      >>> {path: value.shape for path, value in flat.items()}
      {'Dense_0/bias': (3,), 'Dense_0/kernel': (2, 3)}
    """
    _check_sep(sep)
    pairs, _ = _keyed_leaves(tree, sep)
    return dict(pairs)


def unflatten(flat: Mapping[str, Any], like: Any = None, sep: str = "/") -> Any:
    """Rebuilds a nested tree from a flat path-keyed dict; the inverse of `flatten`.

    With `like`, the result has exactly `like`'s structure (its container types,
    its keys, its order), so keys that themselves contain `sep` round-trip:
    `unflatten(flatten(t), like=t)` equals `t` for every tree `t`. Only `like`'s
    structure is used, never its values. Without `like`, every key is split on
    `sep` and nested plain dicts are built.

    Args:
      flat: a `{path: leaf}` dict, as made by `flatten`.
      like: optional tree of the wanted structure.
      sep: the separator used when the dict was flattened.

    Returns:
      The nested tree.

    Raises:
      ValueError: with `like`, when `flat` lacks keys that `like` has or has keys
        that `like` lacks (both listed); without `like`, when one key is a prefix
        of another so that a leaf would have to be a dict too.
      TypeError: when `flat` is not a mapping or a key is not a string.

    Examples:
      >>> unflatten({"a/b": 1, "a/c": 2})
      {'a': {'b': 1, 'c': 2}}
      >>> unflatten({"mlp/~/linear_0/w": 1}, like={"mlp/~/linear_0": {"w": 0}})
      {'mlp/~/linear_0': {'w': 1}}
    """
    _check_sep(sep)
    check_flat(flat)
    if like is not None:
        pairs, treedef = _keyed_leaves(like, sep)
        wanted = [key for key, _ in pairs]
        missing = [key for key in wanted if key not in flat]
        extra = sorted(set(flat) - set(wanted))
        if missing or extra:
            raise ValueError(
                "The flat dict does not match the structure of `like`: "
                f"missing keys {missing}, unexpected keys {extra}. Every leaf of "
                "`like` needs exactly one entry and every entry needs a leaf."
            )
        return jax.tree_util.tree_unflatten(treedef, [flat[key] for key in wanted])

    nested: dict[str, Any] = {}
    for key, leaf in flat.items():
        *parents, name = key.split(sep)
        node = nested
        for depth, part in enumerate(parents):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                prefix = sep.join(parents[: depth + 1])
                raise ValueError(
                    f"Key {key!r} needs {prefix!r} to be a subtree, but {prefix!r} "
                    "is itself a leaf. Pass `like=` to rebuild trees whose keys "
                    f"contain {sep!r}."
                )
            node = child
        if name in node:
            raise ValueError(
                f"Key {key!r} is both a leaf and a subtree. Pass `like=` to rebuild "
                f"trees whose keys contain {sep!r}."
            )
        node[name] = leaf
    return nested


def _check_sep(sep: str) -> None:
    if not isinstance(sep, str) or not sep:
        raise ValueError(f"`sep` must be a non-empty string, got {sep!r}.")


def check_flat(flat: Any) -> None:
    """Raises unless `flat` is a mapping with string keys."""
    if not isinstance(flat, Mapping):
        raise TypeError(
            f"Expected a flat dict of {{path: array}}, got {type(flat).__name__}. "
            "Use `flatten(tree)` to make one."
        )
    for key in flat:
        if not isinstance(key, str):
            raise TypeError(
                f"Flat dict keys must be strings, got {key!r} "
                f"({type(key).__name__}). Use `flatten(tree)` to make one."
            )
