"""A model's leaves grouped into layers: which leaves form a layer, its kind, its weight norm.

Leaves of no layer kind the registry knows (buffers, a learned scalar, Snake's
`alpha`) become one `tensor` pseudo-layer each: they are carried over by name,
as they are, never dropped.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from typing import Any

import numpy as np

from ._frameworks import FRAMEWORKS, ModelView, PortError
from ._layouts import KIND_SPECS, TENSOR, axis_names, layout_axes

__all__ = [
    "Layer",
    "Param",
    "read_layers",
    "feature_axes",
    "canonical_shape",
    "canonical_axes",
    "shapes_fit",
    "same_transform",
    "essential_axes",
]


@dataclasses.dataclass
class Param:
    """One parameter (role) of a layer: where it is, its shape, its weight norm."""

    key: str  # the flat key of the array (the direction v when weight-normed)
    shape: tuple[int, ...]
    dtype: np.dtype
    scale_key: str | None = None  # the flat key of its weight-norm scale g
    scale_shape: tuple[int, ...] | None = None
    known_axes: tuple[int, ...] | None = None  # feature axes, where the model says
    epsilon: float | None = None  # its wrapper's epsilon, where the model says


@dataclasses.dataclass
class Layer:
    """One layer of one model: its module path, candidate kinds and parameters by role."""

    path: str
    framework: str
    kinds: tuple[str, ...]
    params: dict[str, Param]
    order: int | None = None  # its place in the model's own order, where that is known
    named: str | None = None  # the kind its default module name says (`Conv_3`), if any
    order_kind: str | None = None  # "declaration" or "call": what `order` counts

    @property
    def kind(self) -> str:
        return self.kinds[0]

    @property
    def spatial(self) -> int:
        if self.kind == TENSOR:
            return 0
        return max(len(self.params["weight"].shape) - 2, 0)

    def layout(self, role: str, kind: str | None = None) -> str:
        return FRAMEWORKS[self.framework].layouts[kind or self.kind][role].layout

    def canonical(self, role: str, kind: str | None = None) -> str:
        return FRAMEWORKS["torch"].layouts[kind or self.kind][role].layout


def _candidate_kinds(framework: str, leaves: dict[str, tuple[int, ...]]) -> list[str]:
    """Kinds whose leaf names (in `framework`) and ranks fit a group of leaves."""
    found = []
    for kind, table in FRAMEWORKS[framework].layouts.items():
        by_name = {leaf.name: role for role, leaf in table.items()}
        if not set(leaves) <= set(by_name):
            continue
        roles = {by_name[name] for name in leaves}
        if "weight" not in roles or not set(table) - KIND_SPECS[kind].optional <= roles:
            continue
        if len(leaves[table["weight"].name]) not in KIND_SPECS[kind].ranks:
            continue
        found.append(kind)
    return found


def _name_kind(framework: str, path: str) -> str | None:
    """The kind a default module name says (`Conv_3`, `conv1_d_transpose_1`)."""
    names = FRAMEWORKS[framework].module_names
    last = path.split(FRAMEWORKS[framework].separator)[-1] if path else ""
    match = re.fullmatch(r"(.+?)(?:_\d+)?", last)
    return names.get(match.group(1)) if match else None


def read_layers(view: ModelView) -> list[Layer]:
    """Groups a view's leaves into layers, in the model's order where it has one."""
    scales = {w.scale for w in view.weight_norms.values() if w.scale is not None}
    groups: dict[str, dict[str, str]] = {}
    for key in view.flat:
        if key in scales:
            continue
        path, name = view.locate(key)
        groups.setdefault(path, {})[name] = key
    layers = []
    for path, leaves in groups.items():
        shapes = {name: view.specs[key][0] for name, key in leaves.items()}
        kinds = _candidate_kinds(view.framework, shapes)
        hint = view.kinds.get(path)
        if hint is not None:
            # The model's own class decides; leaves that do not fit it (an Equinox
            # BatchNorm, whose statistics are state) are not guessed at.
            kinds = [hint] if hint in kinds else []
        named = _name_kind(view.framework, path) if len(kinds) > 1 else None
        order = None if view.order is None else view.order.get(path)
        if not kinds:
            separator = FRAMEWORKS[view.framework].separator
            for name, key in leaves.items():
                layers.append(_tensor(view, key, separator.join(filter(None, (path, name))), order))
            continue
        table = FRAMEWORKS[view.framework].layouts[kinds[0]]
        by_name = {leaf.name: role for role, leaf in table.items()}
        params = {}
        for name, key in leaves.items():
            shape, dtype = view.specs[key]
            param = Param(key, shape, dtype)
            record = view.weight_norms.get(key)
            if record is not None and record.scale is not None:
                param.scale_key = record.scale
                param.scale_shape = view.specs[record.scale][0]
                param.known_axes = record.feature_axes
                param.epsilon = record.epsilon
            params[by_name[name]] = param
        layers.append(
            Layer(path, view.framework, tuple(kinds), params, order, named, view.order_kind)
        )
    return layers


def _tensor(view: ModelView, key: str, path: str, order: int | None) -> Layer:
    shape, dtype = view.specs[key]
    param = Param(key, shape, dtype)
    record = view.weight_norms.get(key)
    if record is not None and record.scale is not None:
        param.scale_key, param.scale_shape = record.scale, view.specs[record.scale][0]
        param.known_axes, param.epsilon = record.feature_axes, record.epsilon
    return Layer(path, view.framework, (TENSOR,), {"value": param}, order, None, view.order_kind)


def feature_axes(layer: Layer, role: str, other: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """The feature axes of a weight-normed parameter, in its own layout.

    Read exactly where the model says them (torch's `g`, Equinox and NNX
    wrappers, a traced Linen or Haiku model, a file weightnorm wrote). A Linen
    or Haiku scale on its own records only the sizes of its axes: when one
    choice of axes fits, it is taken; when several do, the framework's default
    is taken only if `other` (the other side's axes, canonical) agrees with it
    or is unknown, and the choice is refused when the other side states
    different axes that also fit (wav2vec2's positional conv: hidden size ==
    kernel size).

    Raises:
      PortError: when no axes fit, or several fit and the two sides disagree.
    """
    param = layer.params[role]
    if param.known_axes is not None:
        return param.known_axes
    shape, scale = param.shape, tuple(param.scale_shape or ())
    candidates = [
        axes
        for axes in itertools.combinations(range(len(shape)), len(scale))
        if tuple(shape[a] for a in axes) == scale
    ]
    default = (FRAMEWORKS[layer.framework].feature_axis % max(len(shape), 1),)
    mine = None if other is None else _own_axes(layer, role, other)
    # Axes of size 1 make no difference (a norm over one element more or less of
    # size 1 is the same norm): choices alike but for those are one choice.
    distinct = {essential_axes(axes, shape) for axes in candidates}
    if len(distinct) == 1:
        return default if default in candidates else candidates[0]
    agrees = mine is None or essential_axes(mine, shape) == essential_axes(default, shape)
    if default in candidates and (agrees or mine not in candidates):
        return default
    fix = (
        f"pass `feature_axes={{{param.key!r}: <axes>}}`, or the model itself (its wrappers "
        "say their axes: `like=model, example=x`, or `weightnorm.adapters.*.trace`)"
    )
    if not candidates:
        raise PortError(
            f"the weight-norm scale {param.scale_key!r} (shape {scale}) fits no axes of "
            f"{param.key!r} (shape {shape})"
        )
    raise PortError(
        f"cannot tell the feature axes of the weight norm of {param.key!r} (shape {shape}) from "
        f"its scale {param.scale_key!r} (shape {scale}): {candidates} all fit"
        + (f", and the other side normalizes over {mine}" if mine is not None else "")
        + f"; {fix}"
    )


def essential_axes(axes: tuple[int, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    """The axes among `axes` that make a difference: those of size other than 1."""
    return tuple(axis for axis in axes if shape[axis] != 1)


def _own_axes(layer: Layer, role: str, canonical: tuple[int, ...]) -> tuple[int, ...]:
    held = layout_axes(layer.canonical(role), layer.layout(role), layer.spatial)
    return tuple(sorted(held.index(a) for a in canonical if a in held))


def canonical_shape(layer: Layer, role: str, kind: str) -> tuple[int, ...] | None:
    """A parameter's shape in the canonical layout if the layer is a `kind` (None: cannot be)."""
    if kind == TENSOR:
        return layer.params[role].shape
    table = FRAMEWORKS[layer.framework].layouts.get(kind, {})
    if role not in table:
        return None
    shape = layer.params[role].shape
    names = axis_names(table[role].layout, layer.spatial)
    if len(names) != len(shape):
        return None
    sizes = {name: size for name, size in zip(names, shape, strict=True) if name != "1"}
    if any(size != 1 for name, size in zip(names, shape, strict=True) if name == "1"):
        return None
    canonical = axis_names(layer.canonical(role, kind), layer.spatial)
    return tuple(sizes[name] for name in canonical)


def _squeezed(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(size for size in shape if size != 1)


def shapes_fit(a: Layer, b: Layer, kind: str) -> bool:
    """Whether two layers, both read as `kind`, hold parameters of the same canonical shapes.

    Tensors fit when their shapes are equal up to size-1 axes (Snake's `alpha` is
    `(1, C, 1)` in torch and may be `(C,)` elsewhere): such a reshape moves no value.
    """
    if kind == TENSOR:
        return _squeezed(a.params["value"].shape) == _squeezed(b.params["value"].shape)
    common = set(a.params) & set(b.params)
    return all(
        canonical_shape(a, role, kind) is not None
        and canonical_shape(a, role, kind) == canonical_shape(b, role, kind)
        for role in common
    )


def same_transform(a: Layer, b: Layer, kinds: list[str]) -> bool:
    """Whether reading the pair as any of `kinds` moves every array the same way.

    A LayerNorm and a GroupNorm store the same vectors alike, so which of them a
    pair of name-matched layers is does not matter; a Conv1d and a ConvTranspose1d
    do not (a flip and a transpose differ), unless both sides use one layout (a
    port within one framework moves nothing).
    """

    def moves(kind: str) -> tuple[Any, ...]:
        roles = sorted(set(a.params) & set(b.params))
        return tuple(
            # The same layout on both sides moves nothing, whatever the kind says it holds.
            (role, "as it is")
            if a.layout(role, kind) == b.layout(role, kind)
            else (role, a.canonical(role, kind), a.layout(role, kind), b.layout(role, kind))
            for role in roles
        )

    return len({moves(kind) for kind in kinds}) == 1


def canonical_axes(layer: Layer, role: str, axes: tuple[int, ...]) -> tuple[int, ...]:
    """Feature axes of the framework layout, as axes of the canonical (torch) layout."""
    if layer.kind == TENSOR:
        return axes
    held = layout_axes(layer.canonical(role), layer.layout(role), layer.spatial)
    return tuple(sorted(held[axis] for axis in axes if held[axis] is not None))
