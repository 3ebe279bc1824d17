"""How each framework stores each layer's parameters: one table of data.

Every layer kind has a canonical layout, PyTorch's (`weight (out, in, *spatial)`),
and per framework the leaf name and the layout of each of its parameters (its
*roles*). A layout is a string of axis names: `"O I *"` is out, in, then the
spatial axes in order; `"~*"` is the spatial axes reversed (flipped); `"1*"`
is one size-1 axis per spatial axis (Equinox's conv bias `(out, 1, ..., 1)`).
`weightnorm.port` reads this table to rename, transpose, flip and reshape.

Framework-free: plain data and numpy only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

__all__ = [
    "FRAMEWORKS",
    "KINDS",
    "LAYOUTS",
    "KIND_NAMES",
    "DEFAULT_FEATURE_AXIS",
    "Leaf",
    "to_layout",
    "from_layout",
    "layout_axes",
    "axis_names",
]

FRAMEWORKS = ("linen", "nnx", "haiku", "equinox", "torch")


@dataclasses.dataclass(frozen=True)
class Leaf:
    """One parameter of one layer in one framework: its leaf name and layout."""

    name: str
    layout: str
    collection: str = "params"


def _table(**frameworks: dict[str, Leaf]) -> dict[str, dict[str, Leaf]]:
    if "nnx" not in frameworks:
        frameworks["nnx"] = frameworks["linen"]
    return frameworks


_DENSE = _table(
    torch={"weight": Leaf("weight", "O I"), "bias": Leaf("bias", "O")},
    linen={"weight": Leaf("kernel", "I O"), "bias": Leaf("bias", "O")},
    haiku={"weight": Leaf("w", "I O"), "bias": Leaf("b", "O")},
    equinox={"weight": Leaf("weight", "O I"), "bias": Leaf("bias", "O")},
)
_CONV = _table(
    torch={"weight": Leaf("weight", "O I *"), "bias": Leaf("bias", "O")},
    linen={"weight": Leaf("kernel", "* I O"), "bias": Leaf("bias", "O")},
    haiku={"weight": Leaf("w", "* I O"), "bias": Leaf("b", "O")},
    equinox={"weight": Leaf("weight", "O I *"), "bias": Leaf("bias", "O 1*")},
)
# torch stores transposed-conv weights (in, out, *k) and applies them flipped
# relative to lax; Linen (transpose_kernel=False), Haiku and Equinox do not flip.
_CONV_TRANSPOSE = _table(
    torch={"weight": Leaf("weight", "I O *"), "bias": Leaf("bias", "O")},
    linen={"weight": Leaf("kernel", "~* I O"), "bias": Leaf("bias", "O")},
    haiku={"weight": Leaf("w", "~* O I"), "bias": Leaf("b", "O")},
    equinox={"weight": Leaf("weight", "O I ~*"), "bias": Leaf("bias", "O 1*")},
)
_EMBED = _table(
    torch={"weight": Leaf("weight", "V D")},
    linen={"weight": Leaf("embedding", "V D")},
    haiku={"weight": Leaf("embeddings", "V D")},
    equinox={"weight": Leaf("weight", "V D")},
)
_AFFINE_NORM = _table(
    torch={"weight": Leaf("weight", "C"), "bias": Leaf("bias", "C")},
    linen={"weight": Leaf("scale", "C"), "bias": Leaf("bias", "C")},
    haiku={"weight": Leaf("scale", "C"), "bias": Leaf("offset", "C")},
    equinox={"weight": Leaf("weight", "C"), "bias": Leaf("bias", "C")},
)
_BATCH_NORM = _table(
    torch={
        "weight": Leaf("weight", "C"),
        "bias": Leaf("bias", "C"),
        "mean": Leaf("running_mean", "C", "buffers"),
        "var": Leaf("running_var", "C", "buffers"),
        "count": Leaf("num_batches_tracked", "", "buffers"),  # dropped when ported
    },
    linen={
        "weight": Leaf("scale", "C"),
        "bias": Leaf("bias", "C"),
        "mean": Leaf("mean", "C", "batch_stats"),
        "var": Leaf("var", "C", "batch_stats"),
    },
)

#: kind -> framework -> role -> Leaf. A framework missing from a kind's entry
#: cannot hold that kind (e.g. BatchNorm statistics outside Linen/NNX/torch).
LAYOUTS: Mapping[str, Mapping[str, Mapping[str, Leaf]]] = {
    "dense": _DENSE,
    "conv": _CONV,
    "conv_transpose": _CONV_TRANSPOSE,
    "embed": _EMBED,
    "layer_norm": _AFFINE_NORM,
    "group_norm": _AFFINE_NORM,
    "rms_norm": _AFFINE_NORM,  # the bias role is optional (Equinox's RMSNorm has one)
    "batch_norm": _BATCH_NORM,
}
KINDS = tuple(LAYOUTS)

#: The module names each framework gives a kind by default (Linen/NNX class
#: names, Haiku's snake_case module names), used to recognise a layer's kind
#: from its path when its leaves alone do not tell.
KIND_NAMES: Mapping[str, Mapping[str, str]] = {
    "linen": {
        "Dense": "dense",
        "Conv": "conv",
        "ConvTranspose": "conv_transpose",
        "Embed": "embed",
        "LayerNorm": "layer_norm",
        "GroupNorm": "group_norm",
        "RMSNorm": "rms_norm",
        "BatchNorm": "batch_norm",
    },
    "haiku": {
        "linear": "dense",
        "conv1_d": "conv",
        "conv2_d": "conv",
        "conv3_d": "conv",
        "conv1_d_transpose": "conv_transpose",
        "conv2_d_transpose": "conv_transpose",
        "conv3_d_transpose": "conv_transpose",
        "conv_nd": "conv",
        "conv_nd_transpose": "conv_transpose",
        "embed": "embed",
        "layer_norm": "layer_norm",
        "group_norm": "group_norm",
        "rms_norm": "rms_norm",
        "batch_norm": "batch_norm",
    },
}

#: The feature axis each framework's weight-norm wrapper uses by default
#: (`weightnorm.adapters.*`, `flax.linen.WeightNorm`, torch's `dim=0`).
DEFAULT_FEATURE_AXIS: Mapping[str, int] = {
    "linen": -1,
    "nnx": -1,
    "haiku": -1,
    "equinox": 0,
    "torch": 0,
}


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
    return moved.copy(order="C").reshape(shape)


def _real_positions(names: list[str]) -> list[tuple[int, str]]:
    """(index among the non-size-1 axes, name) for every axis of a layout."""
    out, real = [], 0
    for name in names:
        out.append((real, name))
        real += name != "1"
    return out


def from_layout(value: np.ndarray, canonical: str, layout: str, spatial: int) -> np.ndarray:
    """The inverse of `to_layout`: an array in `layout` back in the canonical layout."""
    source, _ = _tokens(canonical, spatial)
    target, flip = _tokens(layout, spatial)
    real = [name for name in target if name != "1"]
    squeezed = np.reshape(value, [np.shape(value)[i] for i, n in enumerate(target) if n != "1"])
    if flip:
        squeezed = np.flip(squeezed, _spatial_axes(real))
    perm = [real.index(name) for name in source]
    return np.transpose(squeezed, perm).copy(order="C")
