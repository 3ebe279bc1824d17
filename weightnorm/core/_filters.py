"""Which variables get weight-normalized: the substring rule, or a predicate."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ._tree import check_flat

__all__ = ["VariableFilter", "PathFilter", "canonical_filter", "matches", "select"]

VariableFilter = str | Iterable[str] | Callable[[str], bool] | None
"""The spellings a filter may take: `None` (every variable), one string or an
iterable of strings (a path matches when one of them is a substring of it,
the usual rule), or a predicate called with the '/'-joined path."""

# Canonical form: None (every variable), a frozenset of substrings, or a predicate.
CanonicalFilter = frozenset | Callable[[str], bool] | None


@dataclasses.dataclass(frozen=True)
class PathFilter:
    """A variable filter that selects an exact set of '/'-joined paths.

    Hashable and equal by value, so a config holding it can be a static field:
    two wrappers built alike compare equal and `jax.jit`/`eqx.filter_jit` reuse
    their trace. Adapters use it wherever a selection is fixed once (a default
    filter resolved when a wrapper is made, the weights read back from a model).

    Attributes:
      paths: the selected paths, e.g. `frozenset({"layers/0/weight"})`.
      description: how the selection was made, shown in its repr only (not
        compared).

    Examples:
      >>> only = PathFilter(frozenset({"Dense_0/kernel"}))
      >>> only("Dense_0/kernel"), only("Dense_0/bias")
      (True, False)
    """

    paths: frozenset[str]
    description: str = dataclasses.field(default="", compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.paths, str):
            raise TypeError(
                f"`PathFilter` takes a collection of paths, got the string {self.paths!r}; "
                "wrap it: `PathFilter(frozenset({path}))`."
            )
        paths = frozenset(self.paths)
        for path in paths:
            if not isinstance(path, str):
                raise TypeError(f"`PathFilter` paths must be strings, got {path!r}.")
        object.__setattr__(self, "paths", paths)

    def __call__(self, path: str) -> bool:
        return path in self.paths

    def __repr__(self) -> str:
        shown = f"PathFilter({sorted(self.paths)!r})"
        return f"{shown} <{self.description}>" if self.description else shown


def canonical_filter(variable_filter: Any) -> CanonicalFilter:
    """Turns any accepted filter spelling into a hashable canonical form.

    A bare string is one item (`"kernel"`, not its characters). An empty
    iterable means every variable, and so does an empty mapping (`{}`); a
    non-empty mapping is refused, since which of its parts is meant cannot be
    told.

    Raises:
      TypeError: when an item of an iterable is not a string, or the filter is
        neither None, a string, an iterable of strings nor a callable.
    """
    if variable_filter is None:
        return None
    if isinstance(variable_filter, str):
        return frozenset({variable_filter})
    if callable(variable_filter) and not isinstance(variable_filter, (frozenset, set)):
        return variable_filter
    if isinstance(variable_filter, Mapping) and not variable_filter:
        return None
    if isinstance(variable_filter, Mapping) or not isinstance(variable_filter, Iterable):
        raise TypeError(
            "`variable_filter` must be None, a string, an iterable of strings "
            f"or a predicate on the path, got {variable_filter!r}."
        )
    items = tuple(variable_filter)
    for item in items:
        if not isinstance(item, str):
            raise TypeError(
                f"`variable_filter` items must be strings (substrings of a "
                f"variable's '/'-joined path), got {item!r} "
                f"({type(item).__name__}) in {variable_filter!r}."
            )
    return frozenset(items) or None


def matches(canonical: CanonicalFilter, path: str) -> bool:
    """Whether the variable at `path` is selected by a canonical filter."""
    if canonical is None:
        return True
    if isinstance(canonical, frozenset):
        return any(item in path for item in canonical)
    return bool(canonical(path))


def select(flat: Mapping[str, Any], variable_filter: VariableFilter) -> list[str]:
    """The paths of `flat` that a variable filter selects, in `flat`'s order.

    An item matches a variable when it is a substring of
    the variable's path, so `{"kernel"}` selects `"Dense_0/kernel"` and also
    every variable of a module named `"kernel_proj"`. `None` or an empty
    iterable selects every variable; a callable is called with each path.

    Args:
      flat: a flat `{path: array}` dict.
      variable_filter: None, a string, an iterable of strings, or a predicate.

    Returns:
      The selected paths.

    Raises:
      TypeError: for a filter of the wrong type or with a non-string item.

    Examples:
      >>> select({"Dense_0/kernel": 0, "Dense_0/bias": 0}, {"kernel"})
      ['Dense_0/kernel']
    """
    check_flat(flat)
    canonical = canonical_filter(variable_filter)
    return [path for path in flat if matches(canonical, path)]
