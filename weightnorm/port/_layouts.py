"""Layer kinds, and layouts as strings of axis names: how one array moves between frameworks.

Every layer kind has a canonical layout, PyTorch's (`weight (out, in, *spatial)`),
and each framework stores each of the kind's parameters (its *roles*) under a
leaf name in a layout (the registry in `_frameworks.py`). A layout is a string
of axis names: `"O I *"` is out, in, then the spatial axes in order; `"~*"` is
the spatial axes reversed (flipped); `"1*"` is one size-1 axis per spatial axis
(Equinox's conv bias `(out, 1, ..., 1)`). Plain data and numpy only.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = [
    "Leaf",
    "Kind",
    "KIND_SPECS",
    "TENSOR",
    "to_layout",
    "from_layout",
    "layout_axes",
    "axis_names",
]


@dataclasses.dataclass(frozen=True)
class Leaf:
    """One parameter (role) of one layer kind in one framework: its leaf name and layout.

    Attributes:
      name: the leaf's name in the framework (`"kernel"`, `"w"`, `"weight"`).
      layout: its axes, as a layout string (`"* I O"`).
      collection: the Linen/NNX variable collection it lives in.
    """

    name: str
    layout: str
    collection: str = "params"


@dataclasses.dataclass(frozen=True)
class Kind:
    """What every framework agrees on about a layer kind.

    Attributes:
      ranks: the ranks its `weight` may have.
      optional: roles a layer may lack without changing what it computes
        (`bias`; BatchNorm's step counter, which no JAX framework keeps).
    """

    ranks: tuple[int, ...] = (1,)
    optional: frozenset[str] = frozenset({"bias"})


#: Every layer kind the port knows, by name. Each framework's registry entry says
#: how it stores each of them (a kind it lacks, it cannot hold).
KIND_SPECS: dict[str, Kind] = {
    "dense": Kind(ranks=(2,)),
    "conv": Kind(ranks=(3, 4, 5)),
    "conv_transpose": Kind(ranks=(3, 4, 5)),
    "embed": Kind(ranks=(2,)),
    "layer_norm": Kind(),
    "group_norm": Kind(),
    "rms_norm": Kind(),  # Equinox's RMSNorm may have a bias, torch's and flax's never
    "batch_norm": Kind(optional=frozenset({"bias", "count"})),
}

#: The pseudo-kind of a leaf of no known layer (a buffer, a learned scalar, Snake's
#: `alpha`): carried over by name as it is, its shape checked.
TENSOR = "tensor"


def _tokens(layout: str, spatial: int) -> tuple[list[str], bool]:
    """Axis names of a layout with `*` expanded, and whether the spatial axes flip."""
    names: list[str] = []
    flip = False
    for token in layout.split():
        if token in ("*", "~*"):
            names += [f"s{i}" for i in range(spatial)]
            flip = flip or token == "~*"
        elif token == "1*":
            names += ["1"] * spatial
        else:
            names.append(token)
    return names, flip


def axis_names(layout: str, spatial: int) -> list[str]:
    """The name of each axis of a layout (`"s0"`... spatial, `"1"` size-1).

    Examples:
      >>> axis_names("~* O I", spatial=2)
      ['s0', 's1', 'O', 'I']
    """
    return _tokens(layout, spatial)[0]


def layout_axes(canonical: str, layout: str, spatial: int) -> list[int | None]:
    """For each axis of `layout`, the canonical axis it holds (None for a size-1 axis)."""
    source, _ = _tokens(canonical, spatial)
    target, _ = _tokens(layout, spatial)
    return [None if name == "1" else source.index(name) for name in target]


def _spatial_axes(names: list[str]) -> tuple[int, ...]:
    return tuple(i for i, name in enumerate(names) if name.startswith("s"))


def to_layout(value: np.ndarray, canonical: str, layout: str, spatial: int) -> np.ndarray:
    """Moves an array from the `canonical` layout into `layout` (transpose, flip, reshape).

    The result is a new C-contiguous array; `value` is not changed.

    Examples:
      >>> to_layout(np.zeros((5, 3, 4)), "O I *", "* I O", spatial=1).shape
      (4, 3, 5)
      >>> to_layout(np.zeros(5), "O", "O 1*", spatial=2).shape
      (5, 1, 1)
    """
    source, _ = _tokens(canonical, spatial)
    target, flip = _tokens(layout, spatial)
    perm = [source.index(name) for name in target if name != "1"]
    moved = np.transpose(value, perm)
    if flip:
        moved = np.flip(moved, _spatial_axes([n for n in target if n != "1"]))
    shape = [1 if name == "1" else moved.shape[i] for i, name in _real_positions(target)]
    return np.array(moved, order="C").reshape(shape)


def _real_positions(names: list[str]) -> list[tuple[int, str]]:
    """(index among the non-size-1 axes, name) for every axis of a layout."""
    out, real = [], 0
    for name in names:
        out.append((real, name))
        real += name != "1"
    return out


def from_layout(value: np.ndarray, canonical: str, layout: str, spatial: int) -> np.ndarray:
    """The inverse of `to_layout`: an array in `layout` back in the canonical layout.

    A view of `value` where it can be (no copy): a port reads an array, views it
    canonically and copies it once, into the destination's layout.
    """
    source, _ = _tokens(canonical, spatial)
    target, flip = _tokens(layout, spatial)
    real = [name for name in target if name != "1"]
    squeezed = np.reshape(value, [np.shape(value)[i] for i, n in enumerate(target) if n != "1"])
    if flip:
        squeezed = np.flip(squeezed, _spatial_axes(real))
    perm = [real.index(name) for name in source]
    return np.transpose(squeezed, perm)  # a view: `to_layout` makes the one copy
