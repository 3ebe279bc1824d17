"""Layers read from a flat dict: which leaves form a layer, its kind, its weight norm."""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ..core._layouts import DEFAULT_FEATURE_AXIS, KIND_NAMES, LAYOUTS, axis_names, layout_axes

__all__ = [
    "Layer",
    "Param",
    "read_layers",
    "pairing_class",
    "PortError",
    "feature_axes",
    "shapes_fit",
    "canonical_shape",
    "canonical_axes",
]

#: Roles a layer may lack without changing what it computes.
_OPTIONAL = {"bias", "count"}
_RANK = {"dense": (2,), "embed": (2,), "conv": (3, 4, 5), "conv_transpose": (3, 4, 5)}


class PortError(ValueError):
    """A port that cannot be done exactly; the message lists every offending path."""


@dataclasses.dataclass
class Param:
    """One parameter (role) of a layer: where it is, its layout, its weight norm."""

    key: str  # the flat key of the array (the direction v when weight-normed)
    shape: tuple[int, ...]
    scale_key: str | None = None  # the flat key of its weight-norm scale g
    scale_shape: tuple[int, ...] | None = None
    known_axes: tuple[int, ...] | None = None  # feature axes, where the model says


@dataclasses.dataclass
class Layer:
    """One layer of one model: its path, candidate kinds and parameters by role."""

    path: str
    framework: str
    kinds: tuple[str, ...]
    params: dict[str, Param]

    @property
    def kind(self) -> str:
        return self.kinds[0]

    @property
    def spatial(self) -> int:
        return max(len(self.params["weight"].shape) - 2, 0)

    def layout(self, role: str) -> str:
        return LAYOUTS[self.kind][self.framework][role].layout

    def canonical(self, role: str) -> str:
        return LAYOUTS[self.kind]["torch"][role].layout


def pairing_class(kind: str) -> str:
    """The group a layer is paired within, in order.

    Each kind is its own group, even where two kinds store their parameters
    alike (LayerNorm and GroupNorm): pairing them across kinds by order could
    silently swap two layers of the same shape.
    """
    return kind


def _shape(value: Any) -> tuple[int, ...]:
    """An array's shape; also of a `jax.ShapeDtypeStruct` (a `like` made by `jax.eval_shape`)."""
    shape = getattr(value, "shape", None)
    return tuple(shape) if shape is not None else tuple(np.shape(value))


def _natural_key(path: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path)]


def _name_kind(framework: str, path: str, sep: str) -> str | None:
    """The kind an auto-generated module name says (`Conv_3`, `conv1_d_transpose_1`)."""
    names = KIND_NAMES.get("linen" if framework == "nnx" else framework, {})
    last = path.split(sep)[-1] if path else ""
    match = re.fullmatch(r"(.+?)(?:_\d+)?", last)
    return names.get(match.group(1)) if match else None


def _candidate_kinds(framework: str, leaves: Mapping[str, tuple[int, ...]]) -> list[str]:
    """Kinds whose leaf names (in `framework`) and ranks fit a group of leaves."""
    found = []
    for kind, frameworks in LAYOUTS.items():
        table = frameworks.get(framework)
        if table is None:
            continue
        by_name = {leaf.name: role for role, leaf in table.items()}
        if not set(leaves) <= set(by_name):
            continue
        roles = {by_name[name] for name in leaves}
        if "weight" not in roles or not set(table) - _OPTIONAL <= roles:
            continue
        rank = len(leaves[table["weight"].name])
        if rank not in _RANK.get(kind, (1,)):
            continue
        found.append(kind)
    return found


def read_layers(
    flat: Mapping[str, Any],
    framework: str,
    *,
    split: Callable[[str], tuple[str, str, str | None]],
    kind_hints: Mapping[str, str],
    scale_of: Mapping[str, str],
    natural_order: bool,
    scale_axes: Mapping[str, tuple[int, ...]] | None = None,
) -> tuple[list[Layer], list[str]]:
    """Groups a flat dict into layers.

    Args:
      flat: `{key: array}` of every leaf.
      framework: whose names and layouts the leaves use.
      split: key -> (layer path, leaf name, weight-norm part "g"/"v" or None).
      kind_hints: layer path -> kind, where the model says (module types, names).
      scale_of: scale key -> key of the variable it scales (JAX wrappers).
      natural_order: order layers by the natural order of their paths
        (auto-named Linen/Haiku layers whose dict order was lost).
      scale_axes: scale key -> feature axes, where the model records them.

    Returns:
      (layers in model order, keys that belong to no layer the table knows).
    """
    scales = {variable: scale for scale, variable in scale_of.items()}
    groups: dict[str, dict[str, dict[str, str]]] = {}
    for key in flat:
        if key in scale_of:
            continue
        path, name, part = split(key)
        groups.setdefault(path, {}).setdefault(name, {})[part or "w"] = key
    if natural_order:
        groups = dict(sorted(groups.items(), key=lambda item: _natural_key(item[0])))

    layers, unknown = [], []
    for path, leaves in groups.items():
        shapes = {
            name: _shape(flat[parts.get("v", parts.get("w"))]) for name, parts in leaves.items()
        }
        kinds = _candidate_kinds(framework, shapes)
        hint = kind_hints.get(path)
        if hint is not None:
            # The model's own type decides; leaves that do not fit it (an
            # Equinox BatchNorm, whose statistics are state) are not guessed at.
            kinds = [hint] if hint in kinds else []
        elif len(kinds) > 1:
            named = _name_kind(framework, path, "." if framework == "torch" else "/")
            kinds = [named] if named in kinds else kinds
        malformed = any(set(parts) not in ({"w"}, {"g", "v"}) for parts in leaves.values())
        if not kinds or malformed:
            unknown += sorted(key for parts in leaves.values() for key in parts.values())
            continue
        table = LAYOUTS[kinds[0]][framework]
        by_name = {leaf.name: role for role, leaf in table.items()}
        params = {}
        for name, parts in leaves.items():
            key = parts.get("v", parts.get("w"))
            param = Param(key, _shape(flat[key]))
            scale_key = parts.get("g", scales.get(key))
            if scale_key is not None:
                param.scale_key = scale_key
                param.scale_shape = _shape(flat[scale_key])
                param.known_axes = (scale_axes or {}).get(scale_key)
            params[by_name[name]] = param
        layers.append(Layer(path, framework, tuple(kinds), params))
    return layers, unknown


def feature_axes(layer: Layer, role: str, other: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """The feature axes a scale's shape implies.

    torch keeps the reduced axes (size 1); the JAX wrappers store only the sizes
    of the feature axes, so several axis choices can fit a shape: the
    framework's default axis wins, then the output-channel axis, then `other`
    (the other model's feature axes, in the canonical layout); any other tie is
    refused.
    """
    param = layer.params[role]
    if param.known_axes is not None:
        return param.known_axes
    shape, scale = param.shape, tuple(param.scale_shape or ())
    if layer.framework == "torch":
        if scale == ():
            return ()
        if len(scale) != len(shape):
            raise PortError(
                f"Weight-norm scale {param.scale_key!r} has shape {scale}, which does not "
                f"fit its direction {param.key!r} of shape {shape}: expected the "
                "direction's rank with size 1 at the reduced axes."
            )
        fits = [
            axis
            for axis in range(len(shape))
            if scale[axis] == shape[axis] and all(s == 1 for i, s in enumerate(scale) if i != axis)
        ]
        candidates = [(axis,) for axis in fits]
    else:
        candidates = [
            axes
            for axes in itertools.combinations(range(len(shape)), len(scale))
            if tuple(shape[a] for a in axes) == scale
        ]
    default = DEFAULT_FEATURE_AXIS[layer.framework] % max(len(shape), 1)
    names = axis_names(layer.layout(role), layer.spatial)
    output = (names.index("O"),) if "O" in names else None
    held = layout_axes(layer.canonical(role), layer.layout(role), layer.spatial)
    mine = None if other is None else tuple(sorted(held.index(a) for a in other))
    for preferred in ((default,), output, mine):
        if preferred in candidates:
            return preferred
    if len(candidates) == 1:
        return candidates[0]
    raise PortError(
        f"Cannot tell the feature axes of the weight norm of {param.key!r} (shape "
        f"{shape}) from its scale {param.scale_key!r} (shape {scale}): "
        + ("no axes fit." if not candidates else f"{candidates} all fit.")
        + " Give the scale a shape that fits the direction."
    )


def canonical_shape(layer: Layer, role: str, kind: str) -> tuple[int, ...] | None:
    """A parameter's shape in the canonical layout if the layer is a `kind` (None: cannot be)."""
    table = LAYOUTS[kind].get(layer.framework, {})
    if role not in table:
        return None
    shape = layer.params[role].shape
    names = axis_names(table[role].layout, layer.spatial)
    if len(names) != len(shape):
        return None
    sizes = {name: size for name, size in zip(names, shape, strict=True) if name != "1"}
    canonical = axis_names(LAYOUTS[kind]["torch"][role].layout, layer.spatial)
    return tuple(sizes[name] for name in canonical)


def shapes_fit(a: Layer, b: Layer, kind: str) -> bool:
    """Whether two layers, both read as `kind`, hold parameters of the same canonical shapes."""
    common = set(a.params) & set(b.params)
    return all(
        canonical_shape(a, role, kind) is not None
        and canonical_shape(a, role, kind) == canonical_shape(b, role, kind)
        for role in common
    )


def canonical_axes(layer: Layer, role: str, axes: tuple[int, ...]) -> tuple[int, ...]:
    """Feature axes of the framework layout, as axes of the canonical (torch) layout."""
    held = layout_axes(layer.canonical(role), layer.layout(role), layer.spatial)
    return tuple(sorted(held[axis] for axis in axes if held[axis] is not None))
