"""`convert`: one model's parameters into another framework's model of the same architecture."""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import core
from ._checkpoint import Checkpoint
from ._frameworks import FRAMEWORKS, ModelView, PortError, read_model
from ._layers import (
    Layer,
    canonical_axes,
    canonical_shape,
    essential_axes,
    feature_axes,
    read_layers,
)
from ._layouts import TENSOR, from_layout, to_layout
from ._pairing import PYTHON, Mapping_, Spelling, pair_kind, pair_layers

__all__ = [
    "convert",
    "load",
    "save",
    "port_views",
    "apply_kinds",
    "Pairing",
    "Plan",
    "format_report",
    "Spelling",
]


@dataclasses.dataclass(frozen=True)
class Pairing:
    """One ported layer: where it came from, where it went, how it was paired, what was done.

    Attributes:
      src: the layer's path in the source (torch: dotted module path); for a
        leaf of no known layer kind, the leaf's own path.
      dst: the layer's path in the destination.
      kind: the layer kind (`"conv"`, `"dense"`, ...; `"tensor"` for a leaf of
        no known layer kind, carried over as it is).
      transform: per parameter, the moves made (e.g. `"weight: O I * -> * I O"`),
        what became of weight norm (`copied`, `folded`, `decomposed`,
        `refolded` when the two sides normalize over different axes, each with
        the feature axes of both sides) and every dtype change.
      by: how the pair was found: `"mapping"`, `"names"`, `"shapes"` (the only
        layers of their kind and shapes) or `"order"`.
    """

    src: str
    dst: str
    kind: str
    transform: str
    by: str = "names"


def format_report(pairings: Sequence[Pairing]) -> str:
    """The pairing as an aligned text table, one layer a line.

    A layer that is the whole model (a bare `torch.nn.Linear`, whose path is
    `""`) is shown as `(top level)`.

    Examples:
      >>> print(format_report([Pairing("", "Dense_0", "dense", "weight: O I -> I O", "shapes")]))
      source       destination  kind   by      transform
      (top level)  Dense_0      dense  shapes  weight: O I -> I O
    """
    rows = [("source", "destination", "kind", "by", "transform")]
    rows += [(_shown(p.src), _shown(p.dst), p.kind, p.by, p.transform) for p in pairings]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True))
        + "  "
        + row[4]
        for row in rows
    )


def _shown(path: str) -> str:
    return path or "(top level)"


# --- options ---------------------------------------------------------------------------------


def apply_kinds(
    layers: list[Layer], kinds: Mapping[str, str] | None, spelling: Spelling = PYTHON
) -> list[str]:
    """Narrows each layer's kinds to the first `kinds` rule matching its path, in full.

    The first matching rule wins (later ones do not apply to that layer, as in a
    routing table); a rule that matches no layer at all, names no kind, is no
    regular expression, or names a kind the layer's parameters do not fit is a
    problem.
    """
    problems, compiled = [], []
    for pattern, kind in (kinds or {}).items():
        if kind not in FRAMEWORKS["torch"].layouts:
            problems.append(
                f"{spelling.kinds} names {kind!r}, which is not one of "
                f"{list(FRAMEWORKS['torch'].layouts)}"
            )
            continue
        try:
            compiled.append((pattern, re.compile(pattern), kind))
        except re.error as error:
            problems.append(
                f"{spelling.kinds} rule {pattern!r} is not a regular expression ({error})"
            )
    layers = [layer for layer in layers if layer.kind != TENSOR]  # kinds are of layers
    used = {
        pattern for pattern, regex, _ in compiled if any(regex.fullmatch(x.path) for x in layers)
    }
    for layer in layers:
        for _, regex, kind in compiled:
            if not regex.fullmatch(layer.path):
                continue
            if kind not in layer.kinds:
                problems.append(
                    f"{spelling.kinds} says {layer.path!r} is a {kind!r}, but its parameters "
                    f"fit only {list(layer.kinds)}"
                )
            else:
                layer.kinds = (kind,)
            break
    problems += [
        f"{spelling.kinds} rule {pattern!r} matches no layer"
        for pattern, _, _ in compiled
        if pattern not in used
    ]
    return problems


def _apply_feature_axes(
    layers: list[Layer], given: Mapping[str, core.FeatureAxes] | None, spelling: Spelling
) -> list[str]:
    problems = []
    for pattern, axes in (given or {}).items():
        used = False
        for layer in layers:
            for param in layer.params.values():
                if param.scale_key is None or not re.fullmatch(pattern, param.key):
                    continue
                used = True
                resolved = core.resolve_feature_axes(
                    param.key, param.shape, core.WeightNormConfig(feature_axes=axes).feature_axes
                )
                sizes = tuple(param.shape[a] for a in resolved)
                keepdims = tuple(
                    param.shape[a] if a in resolved else 1 for a in range(len(param.shape))
                )
                if param.scale_shape not in (sizes, keepdims):
                    problems.append(
                        f"{spelling.feature_axes} gives {param.key!r} (shape {param.shape}) the "
                        f"axes {resolved}, but its scale {param.scale_key!r} has shape "
                        f"{param.scale_shape}"
                    )
                param.known_axes = resolved
        if not used:
            problems.append(
                f"{spelling.feature_axes} rule {pattern!r} matches no weight-normed variable"
            )
    return problems


def _apply_ignore(
    layers: list[Layer], ignore: Sequence[str] | None
) -> tuple[list[Layer], list[str]]:
    """The layers left after dropping the source leaves `ignore` names (a layer goes whole)."""
    if not ignore:
        return layers, []
    kept, dropped, problems = [], [], []
    for pattern in ignore:
        if not any(re.fullmatch(pattern, p.key) for layer in layers for p in layer.params.values()):
            problems.append(f"`ignore` rule {pattern!r} matches no source leaf")
    for layer in layers:
        keys = [p.key for p in layer.params.values()]
        if any(re.fullmatch(pattern, key) for pattern in ignore for key in keys):
            dropped.append(layer)
        else:
            kept.append(layer)
    return kept, problems


# --- the arithmetic of one pair ------------------------------------------------------------


@contextlib.contextmanager
def _wide_enough(*dtypes: Any) -> Iterator[None]:
    """64-bit JAX arithmetic while a float64 (or complex128) array is involved."""
    if any(np.dtype(d).itemsize == 8 and np.dtype(d).kind in "fc" for d in dtypes) or any(
        np.dtype(d) == np.complex128 for d in dtypes
    ):
        with jax.enable_x64(True):
            yield
    else:
        yield


def _wn_config(axes: tuple[int, ...], epsilon: float, dtype: Any) -> core.WeightNormConfig:
    return core.WeightNormConfig(
        epsilon=epsilon, feature_axes=axes or None, variable_filter=None, param_dtype=dtype
    )


def _folded(
    key: str, v: np.ndarray, g: np.ndarray, axes: tuple[int, ...], epsilon: float
) -> np.ndarray:
    """`g * v / ||v||` over all but `axes` (`weightnorm.fold`); `key` names `v` in errors."""
    with _wide_enough(v.dtype, g.dtype):
        scale = np.reshape(g, [v.shape[a] for a in axes])
        config = _wn_config(axes, epsilon, g.dtype)
        folded = core.fold({key: jnp.asarray(v)}, {core.scale_path(key): scale}, config)
        return np.asarray(folded[key])


def _norm(key: str, w: np.ndarray, axes: tuple[int, ...], epsilon: float) -> np.ndarray:
    """The scale whose fold gives `w` (`weightnorm.unfold`), size 1 at the reduced axes."""
    with _wide_enough(w.dtype):
        _, scales = core.unfold({key: jnp.asarray(w)}, _wn_config(axes, epsilon, w.dtype))
        shape = [w.shape[a] if a in axes else 1 for a in range(w.ndim)]
        return np.asarray(scales[core.scale_path(key)]).reshape(shape)


def _canonical_shape(layer: Layer, role: str) -> tuple[int, ...]:
    return canonical_shape(layer, role, layer.kind) or layer.params[role].shape


def _scale_keepdims(layer: Layer, role: str, scale: Any, axes: tuple[int, ...]) -> np.ndarray:
    """A framework's scale as an array of the direction's rank (size 1 at reduced axes)."""
    param = layer.params[role]
    shape = [1] * len(param.shape)
    for axis in axes:
        shape[axis] = param.shape[axis]
    return np.reshape(np.asarray(scale), shape)


def _to_canonical(layer: Layer, role: str, value: Any) -> np.ndarray:
    if layer.kind == TENSOR:
        return np.asarray(value)
    return from_layout(np.asarray(value), layer.canonical(role), layer.layout(role), layer.spatial)


def _to_framework(layer: Layer, role: str, value: Any) -> np.ndarray:
    """`value` in the layer's layout, as a new array: the result shares nothing with the source."""
    if layer.kind == TENSOR:
        return np.array(np.reshape(value, layer.params[role].shape))  # only size-1 axes differ
    return to_layout(np.asarray(value), layer.canonical(role), layer.layout(role), layer.spatial)


def _epsilon(view: ModelView, layer: Layer, role: str) -> float:
    """A wrapper's epsilon where the model records it, else its framework's default."""
    param = layer.params[role]
    return FRAMEWORKS[view.framework].epsilon if param.epsilon is None else param.epsilon


def _axes_text(layer: Layer, axes: tuple[int, ...] | None) -> str:
    return "none" if axes is None else f"{axes}"


@dataclasses.dataclass
class _Step:
    """One destination layer's arrays, from one source layer."""

    src: Layer
    dst: Layer
    kind: str
    by: str


_Move = Callable[[np.ndarray, Any], tuple[np.ndarray, Any]]


def _plan_weight_norm(
    src: Layer, dst: Layer, role: str, source: ModelView, target: ModelView
) -> tuple[str, _Move, tuple[int, ...] | None]:
    """What to do with one parameter's weight norm: a note, `(v, g) -> (value, scale)`, and
    the source's feature axes (None without weight norm).

    Works on canonical-layout arrays; `g` is the source's scale with the
    direction's rank, or None.
    """
    p_src, p_dst = src.params[role], dst.params[role]
    axes_src = axes_dst = src_axes = dst_axes = None
    if p_src.scale_key is not None:
        other = None
        if p_dst.scale_key is not None and p_dst.known_axes is not None:
            other = canonical_axes(dst, role, p_dst.known_axes)
        src_axes = feature_axes(src, role, other)
        axes_src = canonical_axes(src, role, src_axes)
    if p_dst.scale_key is not None:
        dst_axes = feature_axes(dst, role, axes_src)
        axes_dst = canonical_axes(dst, role, dst_axes)
    eps_src = None if p_src.scale_key is None else _epsilon(source, src, role)
    eps_dst = None if p_dst.scale_key is None else _epsilon(target, dst, role)
    # Copy g and v when both sides reduce over the same axes and neither records an
    # epsilon the other lacks (torch's 0 against the JAX default 1e-12 copies, and
    # agrees to rounding); two known, different epsilons refold instead.
    same_epsilon = p_src.epsilon is None or p_dst.epsilon is None or eps_src == eps_dst
    same_axes = (
        axes_src is not None
        and axes_dst is not None
        and essential_axes(axes_src, _canonical_shape(src, role))
        == essential_axes(axes_dst, _canonical_shape(src, role))
    )
    if same_axes and same_epsilon:
        note = f"weight norm copied (feature axes {src_axes} -> {dst_axes})"
        return note, lambda v, g: (v, g), src_axes
    if axes_src is not None:

        def fold(v: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
            w = _folded(p_src.key, v, g, axes_src, eps_src)
            return w, None if axes_dst is None else _norm(p_src.key, w, axes_dst, eps_dst)

        if axes_dst is None:
            return f"weight norm folded (feature axes {src_axes})", fold, src_axes
        return f"weight norm refolded (feature axes {src_axes} -> {dst_axes})", fold, src_axes
    if axes_dst is not None:
        note = f"weight norm decomposed (feature axes {dst_axes})"
        return note, lambda v, g: (v, _norm(p_src.key, v, axes_dst, eps_dst)), None
    return "", lambda v, g: (v, g), None


# --- casting -------------------------------------------------------------------------------


def _floating(dtype: Any) -> bool:
    """A floating or complex dtype, bfloat16 and float8 (numpy calls those kind 'V') too."""
    return np.dtype(dtype).kind in "fc" or bool(jnp.issubdtype(dtype, jnp.floating))


def _wide(array: np.ndarray) -> np.ndarray:
    return array.astype(np.complex128 if array.dtype.kind == "c" else np.float64)


def _cast(key: str, value: np.ndarray, dtype: np.dtype, to: str) -> tuple[np.ndarray, str, str]:
    """`value` as `dtype`: (the array, a note for the report, or a problem).

    Between floating dtypes a cast is made when it keeps every finite value finite
    (rounding is named in the report); any other cast only when every value survives
    the way there and back. Complex values never go into a real dtype.
    """
    value = np.asarray(value)
    if value.dtype == dtype:
        return value, "", ""
    note = f"{key}: {value.dtype} -> {dtype}"
    if value.dtype.kind == "c" and np.dtype(dtype).kind != "c":
        return value, note, f"{to} is {dtype}, which cannot hold the complex {key!r}"
    with np.errstate(over="ignore", invalid="ignore"):
        cast = value.astype(dtype)
    if _floating(value.dtype) and _floating(dtype):
        if (np.isfinite(_wide(value)) & ~np.isfinite(_wide(cast))).any():
            return (
                cast,
                note,
                (
                    f"{to} is {dtype}, which turns finite values of {key!r} ({value.dtype}) into "
                    "inf or NaN; give the destination a wider dtype"
                ),
            )
        return cast, note, ""
    with np.errstate(over="ignore", invalid="ignore"):
        back = cast.astype(value.dtype)
    if not np.array_equal(back, value, equal_nan=_floating(value.dtype)):
        return (
            cast,
            note,
            (
                f"{to} is {dtype}, which changes the values of {key!r} ({value.dtype}); give the "
                "destination the source's dtype"
            ),
        )
    return cast, note, ""


# --- the whole port ------------------------------------------------------------------------


@dataclasses.dataclass
class Plan:
    """Every destination array and how to make it, checked before anything is computed."""

    source: ModelView
    target: ModelView
    steps: list[_Step]
    pairings: list[Pairing] = dataclasses.field(default_factory=list)

    def keys(self) -> list[str]:
        return list(self.target.specs)

    def run(self, sink: Callable[[str, np.ndarray], None], progress: Any = None) -> list[Pairing]:
        """Computes each destination layer in turn and hands each array to `sink`.

        Arrays are read from the source one layer at a time, so a lazily read
        checkpoint is never held whole.

        Raises:
          PortError: listing every array whose dtype cannot be changed as asked,
            or whose weight norm cannot be read; nothing is handed to `sink` for
            a layer that fails, and the run stops after the first failing layer.
        """
        self.pairings = []
        for step in self.steps:
            notes, arrays, problems = _port_layer(step, self.source, self.target)
            if problems:
                raise PortError(
                    f"Cannot port {self.source.framework} -> {self.target.framework}:\n  - "
                    + "\n  - ".join(problems)
                )
            done = sum(value.nbytes for value in arrays.values())
            while arrays:  # each array handed on and let go: one layer in memory at a time
                sink(*arrays.popitem())
            self.pairings.append(Pairing(step.src.path, step.dst.path, step.kind, notes, step.by))
            if progress is not None:
                progress(done)
        return self.pairings


def _port_layer(
    step: _Step, source: ModelView, target: ModelView
) -> tuple[str, dict[str, np.ndarray], list[str]]:
    src, dst, kind = step.src, step.dst, step.kind
    src.kinds = dst.kinds = (kind,)
    notes, problems, out = [], [], {}
    table = FRAMEWORKS[dst.framework].layouts.get(kind, {"value": None})
    for role in [r for r in table if r in dst.params and r in src.params]:
        p_src, p_dst = src.params[role], dst.params[role]
        try:
            note, weight_norm, src_axes = _plan_weight_norm(src, dst, role, source, target)
        except PortError as error:
            problems.append(str(error))
            continue
        v = _to_canonical(src, role, source.flat[p_src.key])
        g = None
        if src_axes is not None:
            scale = _scale_keepdims(src, role, source.flat[p_src.scale_key], src_axes)
            g = _to_canonical(src, role, scale)
        try:
            v, g = weight_norm(v, g)
        except ValueError as error:
            problems.append(str(error))
            continue
        moves = (
            ""
            if kind == TENSOR
            else f"{role}: {src.layout(role) or '()'} -> {dst.layout(role) or '()'}"
        )
        if kind == TENSOR and p_src.shape != p_dst.shape:
            moves = f"reshaped {p_src.shape} -> {p_dst.shape}"
        values = {p_dst.key: _to_framework(dst, role, v)}
        if p_dst.scale_key is not None:
            values[p_dst.scale_key] = _to_framework(dst, role, g).reshape(p_dst.scale_shape)
        for key, value in values.items():
            cast, cast_note, problem = _cast(
                key, value, target.specs[key][1], f"the destination {key!r}"
            )
            if problem:
                problems.append(problem)
            out[key] = cast  # new (see `_to_framework`): nothing shared with the source
            if cast_note:
                note += ("; " if note else "") + cast_note
        notes.append(", ".join(filter(None, (moves, note))) or "carried as it is")
    for role in set(src.params) - set(dst.params):
        if role == "count":
            notes.append(f"{src.params[role].key} not kept: the destination keeps no step count")
    for role in set(dst.params) - set(src.params):
        if role == "count":
            p = dst.params[role]
            out[p.key] = np.zeros(p.shape, p.dtype)
            notes.append(f"{p.key} set to 0: the source keeps no step count")
    return "; ".join(notes), out, problems


def port_views(
    source: ModelView,
    target: ModelView,
    *,
    mapping: Mapping_ | None = None,
    kinds: Mapping[str, str] | None = None,
    feature_axes: Mapping[str, core.FeatureAxes] | None = None,
    ignore: Sequence[str] | None = None,
    spelling: Spelling = PYTHON,
) -> Plan:
    """Pairs two models' layers and checks that every array can be moved: the plan of a port.

    Raises:
      PortError: listing every problem at once (layers that do not pair,
        shapes that differ, kinds or feature axes that cannot be told, dtypes
        that cannot hold the values).
    """
    sources, targets = read_layers(source), read_layers(target)
    sources, problems = _apply_ignore(sources, ignore)
    problems += apply_kinds([*sources, *targets], kinds, spelling)
    problems += _apply_feature_axes([*sources, *targets], feature_axes, spelling)
    pairs, pairing_problems = pair_layers(sources, targets, source, target, mapping, spelling)
    problems += pairing_problems
    steps = []
    for src_layer, dst_layer, how in pairs:
        kind, problem = pair_kind(src_layer, dst_layer, spelling)
        if problem is not None:
            problems.append(problem)
            continue
        for role in sorted(set(src_layer.params) ^ set(dst_layer.params)):
            if role == "count":
                continue
            has, lacks = (
                (src_layer, dst_layer) if role in src_layer.params else (dst_layer, src_layer)
            )
            problems.append(
                f"{has.params[role].key!r} has no counterpart in {lacks.path!r} (a {role!r} on "
                "one side only)"
            )
        for role in set(src_layer.params) & set(dst_layer.params):
            s, d = canonical_shape(src_layer, role, kind), canonical_shape(dst_layer, role, kind)
            if s != d and kind != TENSOR:
                problems.append(
                    f"{src_layer.params[role].key!r} has shape {src_layer.params[role].shape} "
                    f"({s} in torch layout) but {dst_layer.params[role].key!r} needs "
                    f"{dst_layer.params[role].shape} ({d} in torch layout)"
                )
        steps.append(_Step(src_layer, dst_layer, kind, how))
    if not problems:
        problems += _check_weight_norms(steps, source, target)
        filled = {
            k for step in steps for p in step.dst.params.values() for k in (p.key, p.scale_key) if k
        }
        missing = [key for key in target.specs if key not in filled]
        if missing:
            problems.append(f"destination leaves left unfilled: {missing}")
    if problems:
        raise PortError(
            f"Cannot port {source.framework} -> {target.framework}:\n  - " + "\n  - ".join(problems)
        )
    return Plan(source, target, steps)


def _check_weight_norms(steps: list[_Step], source: ModelView, target: ModelView) -> list[str]:
    """Every weight norm's axes, decided before any array is read (refusals listed at once)."""
    problems = []
    for step in steps:
        step.src.kinds = step.dst.kinds = (step.kind,)
        for role in set(step.src.params) & set(step.dst.params):
            try:
                _plan_weight_norm(step.src, step.dst, role, source, target)
            except PortError as error:
                problems.append(str(error))
    return problems


def convert(
    params: Any,
    *,
    src: str | None = None,
    dst: str,
    like: Any,
    example: Any = None,
    mapping: Mapping_ | None = None,
    kinds: Mapping[str, str] | None = None,
    feature_axes: Mapping[str, core.FeatureAxes] | None = None,
    ignore: Sequence[str] | None = None,
    report: bool = False,
) -> Any:
    """Ports parameters between Linen, NNX, Haiku, Equinox and PyTorch, exactly or not at all.

    Layers are recognised with the registry's layouts (`weightnorm.port.LAYOUTS`)
    and paired by their names first (torch's `a.0.b`, Linen's `a_0/b`, NNX's
    and Equinox's `a/0/b`, Haiku's `a/~/b` all read alike), then by kind and
    shapes where only one layer of them is left, then by the models' own
    order where both have one; anything else is refused with the candidates
    named. Every array is renamed, transposed, flipped (transposed
    convolutions) and reshaped so that the destination computes what the
    source does; leaves of no known layer (buffers, learned scalars) are
    carried over by name as they are. Weight norm travels with its variable:
    scale and direction are copied when both sides normalize over the same
    axes; otherwise a source's `g * v / ||v||` is folded into the weight, and a
    destination's scale is set to the weight's norm so that outputs are
    unchanged. Dtypes are kept; a change `like` asks for is made only when it
    keeps every value finite (floats) or exact (everything else), and is named
    in the report.

    Args:
      params: the source: Linen variables (or a params dict), Haiku params,
        an Equinox module, an NNX module or state, a PyTorch state dict
        (tensors or numpy arrays) or `nn.Module`, a `Checkpoint` from
        `load_checkpoint`, or a `ModelTrace` from `weightnorm.adapters.linen.
        trace`/`haiku.trace` (a Linen or Haiku model read exactly).
      src: its framework: `"linen"`, `"nnx"`, `"haiku"`, `"equinox"` or
        `"torch"`; for a `Checkpoint`, the file says (default).
      dst: the destination framework, as `src`.
      like: a destination model or params of the same architecture; only its
        structure and dtypes are used, never its values: variables from
        `jax.eval_shape(model.init, ...)`, a module from
        `eqx.filter_eval_shape` or `nnx.eval_shape`, a torch module with
        either weight-norm API. A Linen module or `hk.transform`ed function
        with `example=` is traced abstractly, so its call order, module
        classes and wrappers' feature axes and epsilon are read, not guessed.
      example: inputs to trace a Linen or Haiku `like` with (an array or a
        tuple of them; shapes only are used).
      mapping: optional explicit pairing, source layer path -> destination
        layer path: a dict, or a sequence of `(regex, replacement)` rules
        matched in full against source layer paths (`re.fullmatch`, with
        `\\1` references in the replacement). Layer paths are module paths:
        `"ups.0"` (torch), `"Dense_0"` (Linen, without the collection),
        `"layers/0/layer"` (an Equinox WeightNorm's inner layer),
        `"layers/0/layer_instance"` (an NNX WeightNorm's).
      kinds: optional `{regex: kind}` naming the kind of layers (source or
        destination, by path, matched in full) whose parameters fit several
        kinds: a custom-named Linen `kernel` of rank 3 is a Conv or a
        ConvTranspose, a torch state dict's 2-D `weight` without bias a Linear
        or an Embedding. Kinds are known without it for Equinox, NNX and torch
        modules, traced Linen/Haiku models, default-named Linen/Haiku layers
        (`Conv_0`, `linear_1`), and files weightnorm wrote.
      feature_axes: optional `{regex: axes}` giving the weight-norm feature
        axes of the variables (flat keys, either side, matched in full) whose
        Linen or Haiku scale does not say them (a `(4,)` scale on a `(4, 4)`
        kernel fits either axis). Axes are in that variable's own layout.
      ignore: regexes of source leaves (flat keys, matched in full) to leave
        out on purpose (a head the destination does not have); their whole
        layer is left out.
      report: also return the pairing, a list of `Pairing`s.

    Returns:
      `like`'s structure filled with the ported values (a new Equinox or NNX
      module sharing no variable with `like`; a dict for Linen/Haiku/torch
      state dicts whose leaves are numpy where `like`'s are, else jax arrays;
      for a `ModelTrace`, the same trace holding the new variables; for a
      Linen module or Haiku function with `example=`, its variables; a copy of
      a torch module), or `(that, pairings)` when `report=True`.

    Raises:
      PortError (a ValueError): listing every layer that cannot be paired,
        shape conflict, kind or feature axes that cannot be told, dtype that
        cannot hold the values, leaf left unfilled; for `flax.nnx.WeightNorm`
        (it overwrites its layer's kernel) and NNX wrappers with
        `use_scale=False`; nothing is returned in part.
      TypeError: when `params` or `like` is not of the framework named.
      ValueError: naming a direction that holds NaN or inf when it is folded.

    Examples:
      >>> import numpy as np
      >>> torch_sd = {"fc.weight": np.ones((3, 2), np.float32), "fc.bias": np.zeros(3, np.float32)}
      >>> like = {"params": {"fc": {"kernel": np.zeros((2, 3)), "bias": np.zeros(3)}}}
      >>> out, pairs = convert(torch_sd, src="torch", dst="linen", like=like, report=True)
      >>> out["params"]["fc"]["kernel"].shape, pairs[0].dst, pairs[0].by
      ((2, 3), 'fc', 'names')
    """
    if src is None:
        if not isinstance(params, Checkpoint):
            raise TypeError("`src` is needed unless `params` is a `Checkpoint` (which says it).")
        src = params.framework
    source = read_model(params, src, "src")
    target = read_model(like, dst, "dst", example)
    plan = port_views(
        source, target, mapping=mapping, kinds=kinds, feature_axes=feature_axes, ignore=ignore
    )
    filled: dict[str, np.ndarray] = {}
    pairings = plan.run(filled.__setitem__)
    _check_x64(target, filled)
    result = target.rebuild(filled)
    return (result, pairings) if report else result


def _check_x64(target: ModelView, filled: Mapping[str, np.ndarray]) -> None:
    """Refuses 64-bit values that a JAX destination would silently store as 32-bit."""
    if target.framework == "torch" or jax.config.jax_enable_x64:
        return
    wide = [
        key
        for key, value in filled.items()
        if value.dtype.itemsize == 8 and value.dtype.kind in "fc"
    ]
    wide = [key for key in wide if not isinstance(_leaf(target, key), np.ndarray)]
    if wide:
        raise PortError(
            f"The destination holds 64-bit values at {wide[:5]}{' ...' if len(wide) > 5 else ''}, "
            "but JAX's x64 mode is off, so they would be stored as 32-bit. Enable it "
            "(`jax.config.update('jax_enable_x64', True)`), or give `like` 32-bit leaves (the "
            "change is then named in the report)."
        )


def _leaf(view: ModelView, key: str) -> Any:
    try:
        return view.flat[key]
    except Exception:
        return None


def save(
    params: Any,
    path: Any,
    *,
    src: str,
    example: Any = None,
    overwrite: bool = False,
) -> None:
    """A model's parameters as a safetensors file that says where they came from.

    The file holds every leaf under its flat key, as it is, and records the
    provenance `load` reads back: the framework, each layer's kind, each weight
    norm's direction, scale, feature axes and epsilon where the model says them,
    and whether the keys are in the model's own order. Written atomically, never
    over an existing file unless `overwrite`.

    Args:
      params: a model or params of `src` (as `convert` takes them).
      path: the file to write.
      src: its framework.
      example: inputs to trace a Linen module or Haiku function with.
      overwrite: replace an existing file.

    Examples:
      >>> import jax, tempfile, pathlib, equinox as eqx
      >>> from weightnorm.adapters import equinox as we
      >>> model = we.WeightNorm(eqx.nn.Linear(3, 2, key=jax.random.key(0)), feature_axes=1)
      >>> path = pathlib.Path(tempfile.mkdtemp()) / "linear.safetensors"
      >>> save(model, path, src="equinox")
      >>> from weightnorm.port import load_checkpoint
      >>> load_checkpoint(path).provenance["weight_norms"][0]["feature_axes"]
      [1]
    """
    from ._checkpoint import provenance_metadata, write_arrays

    view = read_model(params, src, "src", example)
    layers = read_layers(view)
    skip = _collections(view)
    provenance = {
        "framework": src,
        "source": src,
        "ordered": view.order is not None,
        "order_kind": view.order_kind,
        "collections": skip,
        "layers": {layer.path: layer.kind for layer in layers if len(layer.kinds) == 1},
        "weight_norms": [
            {
                "weight": w.weight,
                "scale": w.scale,
                "layer": w.layer,
                "wrapper": w.wrapper,
                "feature_axes": None if w.feature_axes is None else list(w.feature_axes),
                "epsilon": w.epsilon,
            }
            for w in view.weight_norms.values()
            if w.scale is not None
        ],
    }
    arrays = {key: np.array(view.flat[key]) for key in view.flat}
    write_arrays(arrays, path, provenance_metadata(provenance), overwrite=overwrite)


def _collections(view: ModelView) -> int:
    """How many leading segments of a key name a collection (Linen's `params/`), not a module."""
    first = next(iter(view.flat), None)
    if first is None or FRAMEWORKS[view.framework].separator != "/":
        return 0
    located = "/".join(filter(None, view.locate(first)))
    prefix = first[: len(first) - len(located)].strip("/")
    return len(prefix.split("/")) if prefix else 0


def load(
    path: Any,
    *,
    dst: str,
    like: Any,
    example: Any = None,
    **options: Any,
) -> Any:
    """A checkpoint file into a model, in one call: `convert(load_checkpoint(path), ...)`.

    The file may be a PyTorch or safetensors file from anywhere (its keys are
    torch's) or one weightnorm wrote (it says its framework, layer kinds and
    weight norms). Arrays are read one layer at a time.

    Args:
      path: the checkpoint file.
      dst: the destination framework.
      like: the destination model (see `convert`).
      example: inputs to trace a Linen or Haiku `like` with.
      **options: `mapping`, `kinds`, `feature_axes`, `ignore`, `report`, as in `convert`.

    Examples:
      >>> import numpy as np, tempfile, pathlib
      >>> from weightnorm.port import save_safetensors
      >>> path = pathlib.Path(tempfile.mkdtemp()) / "fc.safetensors"
      >>> save_safetensors({"fc.weight": np.ones((3, 2), np.float32)}, path)
      >>> like = {"params": {"fc": {"kernel": np.zeros((2, 3), np.float32)}}}
      >>> load(path, dst="linen", like=like)["params"]["fc"]["kernel"].shape
      (2, 3)
    """
    from ._checkpoint import load_checkpoint

    return convert(load_checkpoint(path), dst=dst, like=like, example=example, **options)
