"""`convert`: one model's parameters into another framework's model of the same architecture."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from .. import core
from ..core._config import resolve_feature_axes
from ..core._layouts import LAYOUTS, from_layout, to_layout
from ._frameworks import Model, read_model
from ._layers import (
    Layer,
    PortError,
    canonical_axes,
    canonical_shape,
    feature_axes,
    pairing_class,
    read_layers,
    shapes_fit,
)

__all__ = ["convert", "convert_models", "Pairing", "format_report"]

#: epsilon inside each framework's weight norm: torch divides by the bare norm.
_EPSILON = {"torch": 0.0, "linen": 1e-12, "nnx": 1e-12, "haiku": 1e-12, "equinox": 1e-12}

Mapping_ = Mapping[str, str] | Sequence[tuple[str, str]]


@dataclasses.dataclass(frozen=True)
class Pairing:
    """One ported layer: where it came from, where it went, and what was done.

    Attributes:
      src: the layer's path in the source (torch: dotted module path).
      dst: the layer's path in the destination.
      kind: the layer kind of the layout table (`"conv"`, `"dense"`, ...).
      transform: per parameter, the moves made (e.g. `"weight: O I * -> * I O"`),
        and what became of weight norm (`copied`, `folded`, `decomposed`,
        `refolded` when the two sides normalize over different axes).
    """

    src: str
    dst: str
    kind: str
    transform: str


def format_report(pairings: Sequence[Pairing]) -> str:
    """The pairing as an aligned text table, one layer a line.

    A layer that is the whole model (a bare `torch.nn.Linear`, whose path is
    `""`) is shown as `(top level)`.

    Examples:
      >>> print(format_report([Pairing("", "Dense_0", "dense", "weight: O I -> I O")]))
      source       destination  kind   transform
      (top level)  Dense_0      dense  weight: O I -> I O
    """
    rows = [("source", "destination", "kind", "transform")]
    rows += [(_shown(p.src), _shown(p.dst), p.kind, p.transform) for p in pairings]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True))
        + "  "
        + row[3]
        for row in rows
    )


def _shown(path: str) -> str:
    return path or "(top level)"


def _layers(model: Model) -> tuple[list[Layer], list[str]]:
    return read_layers(
        model.flat,
        model.framework,
        split=model.split,
        kind_hints=model.kind_hints,
        scale_of=model.scale_of,
        natural_order=model.natural_order,
        scale_axes=model.scale_axes,
    )


def _explicit_pairs(
    mapping: Mapping_ | None, sources: list[Layer], targets: list[Layer]
) -> list[tuple[Layer, Layer]]:
    if mapping is None:
        return []
    by_path = {layer.path: layer for layer in targets}
    rules = list(mapping.items()) if isinstance(mapping, Mapping) else list(mapping)
    pairs, problems = [], []
    for pattern, replacement in rules:
        used = False
        for layer in sources:
            match = re.fullmatch(pattern, layer.path)
            if match is None:
                continue
            used = True
            target = by_path.get(match.expand(replacement))
            if target is None:
                problems.append(
                    f"{layer.path!r} maps to {match.expand(replacement)!r}, which is not a "
                    f"destination layer (those are {sorted(by_path)})"
                )
            elif any(layer is s or target is t for s, t in pairs):
                problems.append(f"{layer.path!r} or {target.path!r} is mapped twice")
            else:
                pairs.append((layer, target))
        if not used:
            problems.append(f"mapping rule {pattern!r} matches no source layer")
    if problems:
        raise PortError("The explicit `mapping` does not fit:\n  " + "\n  ".join(problems))
    return pairs


def _pair(
    sources: list[Layer], targets: list[Layer], mapping: Mapping_ | None
) -> tuple[list[tuple[Layer, Layer]], list[str]]:
    """Pairs layers of the same kind in model order; explicit rules first."""
    pairs = _explicit_pairs(mapping, sources, targets)
    paired = {id(layer) for pair in pairs for layer in pair}

    def key(layer: Layer, kinds: tuple[str, ...]) -> tuple[Any, ...]:
        return (tuple(sorted({pairing_class(k) for k in kinds})), layer.spatial)

    def resolve(layer: Layer, others: list[Layer]) -> tuple[str, ...]:
        # A layer whose leaves fit several kinds (a torch 3-D `weight` is a Conv1d
        # or a ConvTranspose1d) takes the one kind the other model has.
        if len({pairing_class(k) for k in layer.kinds}) == 1:
            return layer.kinds
        # Failing that, the one kind under which some layer of the other model
        # has the same shapes (a kind no layer could pair with is ruled out).
        other_keys = {key(o, o.kinds) for o in others}
        fits = [k for k in layer.kinds if key(layer, (k,)) in other_keys]
        if len(fits) > 1:
            fits = [
                k for k in fits if any(k in o.kinds and shapes_fit(layer, o, k) for o in others)
            ]
        return tuple(fits) if len(fits) == 1 else layer.kinds

    queues: dict[tuple[Any, ...], list[Layer]] = {}
    for layer in sources:
        if id(layer) not in paired:
            layer.kinds = resolve(layer, targets)
            queues.setdefault(key(layer, layer.kinds), []).append(layer)
    problems = []
    leftover = []
    for target in targets:
        if id(target) in paired:
            continue
        target.kinds = resolve(target, sources)
        queue = queues.get(key(target, target.kinds))
        if queue:
            pairs.append((queue.pop(0), target))
        else:
            leftover.append(target)
    ambiguous = [
        layer
        for layer in [*sources, *targets]
        if len({pairing_class(k) for k in layer.kinds}) > 1 and id(layer) not in paired
    ]
    if ambiguous:
        problems.append(
            "layers whose kind the parameters do not tell: "
            + ", ".join(f"{layer.path!r} ({' or '.join(layer.kinds)})" for layer in ambiguous)
            + "; name their kind with `kinds={path regex: kind}`, or pass the model "
            "itself (a torch nn.Module, an Equinox or NNX module) rather than its params"
        )
    unmatched_src = [layer for queue in queues.values() for layer in queue]
    if unmatched_src:
        problems.append(
            "source layers with no destination: "
            + ", ".join(f"{layer.path!r} ({layer.kind})" for layer in unmatched_src)
        )
    if leftover:
        problems.append(
            "destination layers with no source: "
            + ", ".join(f"{layer.path!r} ({layer.kind})" for layer in leftover)
        )
    return pairs, problems


def _scale_keepdims(layer: Layer, role: str, scale: Any, axes: tuple[int, ...]) -> np.ndarray:
    """A framework's scale as an array of the direction's rank (size 1 at reduced axes)."""
    param = layer.params[role]
    shape = [1] * len(param.shape)
    for axis in axes:
        shape[axis] = param.shape[axis]
    return np.reshape(np.asarray(scale), shape)


def _canonical(layer: Layer, role: str, value: Any) -> np.ndarray:
    return from_layout(np.asarray(value), layer.canonical(role), layer.layout(role), layer.spatial)


def _framework(layer: Layer, role: str, value: Any) -> np.ndarray:
    return to_layout(np.asarray(value), layer.canonical(role), layer.layout(role), layer.spatial)


def _config(
    axes: tuple[int, ...], epsilon: float, dtype: Any = jnp.float32
) -> core.WeightNormConfig:
    return core.WeightNormConfig(
        epsilon=epsilon, feature_axes=axes or None, variable_filter=None, param_dtype=dtype
    )


def _normalized(
    key: str, v: np.ndarray, g: np.ndarray, axes: tuple[int, ...], epsilon: float
) -> np.ndarray:
    """`g * v / ||v||` over all but `axes` (`weightnorm.fold`); `key` names `v` in errors."""
    scale = np.reshape(g, [v.shape[a] for a in axes])
    folded = core.fold(
        {key: jnp.asarray(v)}, {key + core.SCALE_SUFFIX: scale}, _config(axes, epsilon)
    )
    return np.asarray(folded[key])


def _norm(key: str, w: np.ndarray, axes: tuple[int, ...], epsilon: float) -> np.ndarray:
    """The scale whose fold gives `w` (`weightnorm.unfold`), size 1 at the reduced axes."""
    _, scales = core.unfold({key: jnp.asarray(w)}, _config(axes, epsilon, w.dtype))
    shape = [w.shape[a] if a in axes else 1 for a in range(w.ndim)]
    return np.asarray(scales[key + core.SCALE_SUFFIX]).reshape(shape)


def _epsilon(model: Model, scale_key: str) -> float:
    """The epsilon of the wrapper holding `scale_key`: its own where known, else the default."""
    return model.scale_epsilon.get(scale_key, _EPSILON[model.framework])


def _port_layer(
    src: Layer, dst: Layer, source: Model, target: Model, out: dict[str, Any]
) -> tuple[str, list[str]]:
    """Writes one destination layer's arrays into `out`; its transform text, or problems."""
    problems = []
    roles_src, roles_dst = set(src.params), set(dst.params)
    for role in sorted(roles_src ^ roles_dst):
        if role == "count":
            continue
        has, lacks = (src, dst) if role in roles_src else (dst, src)
        problems.append(
            f"{has.params[role].key!r} has no counterpart in {lacks.path!r} (a "
            f"{role!r} on one side only)"
        )
    notes = []
    for role in [r for r in LAYOUTS[dst.kind][dst.framework] if r in dst.params and r in roles_src]:
        p_src, p_dst = src.params[role], dst.params[role]
        v = _canonical(src, role, source.flat[p_src.key])
        wanted = canonical_shape(dst, role, dst.kind)
        if v.shape != wanted:
            problems.append(
                f"{p_src.key!r} has shape {p_src.shape} ({v.shape} in torch layout) but "
                f"{p_dst.key!r} needs {p_dst.shape} ({wanted} in torch layout)"
            )
            continue
        note = f"{role}: {src.layout(role) or '()'} -> {dst.layout(role) or '()'}"
        g = axes_src = axes_dst = None
        if p_src.scale_key is not None:
            try:
                src_axes = feature_axes(src, role)
            except PortError:  # a tie the destination's axes may break
                if p_dst.scale_key is None:
                    raise
                other = canonical_axes(dst, role, feature_axes(dst, role))
                src_axes = feature_axes(src, role, other)
            g = _canonical(
                src, role, _scale_keepdims(src, role, source.flat[p_src.scale_key], src_axes)
            )
            axes_src = canonical_axes(src, role, src_axes)
        if p_dst.scale_key is not None:
            dst_axes = feature_axes(dst, role, axes_src)
            axes_dst = canonical_axes(dst, role, dst_axes)
        # Copy g and v when both sides reduce over the same axes and neither records an
        # epsilon the other lacks (torch's 0 against the JAX default 1e-12 copies, and
        # agrees to rounding); two known, different epsilons refold instead.
        same_epsilon = (
            p_src.scale_key not in source.scale_epsilon
            or p_dst.scale_key not in target.scale_epsilon
            or source.scale_epsilon[p_src.scale_key] == target.scale_epsilon[p_dst.scale_key]
        )
        if g is not None and axes_dst is not None and axes_src == axes_dst and same_epsilon:
            note += f", weight norm copied (feature axes {dst_axes})"
        elif g is not None:
            v = _normalized(p_src.key, v, g, axes_src, _epsilon(source, p_src.scale_key))
            g = None
            note += ", weight norm folded" if axes_dst is None else ", weight norm refolded"
            note += "" if axes_dst is None else f" (feature axes {dst_axes})"
        elif axes_dst is not None:
            note += f", weight norm decomposed (feature axes {dst_axes})"
        if axes_dst is not None and g is None:
            g = _norm(p_src.key, v, axes_dst, _epsilon(target, p_dst.scale_key))
        out[p_dst.key] = _framework(dst, role, v)
        if p_dst.scale_key is not None:
            g_dst = _framework(dst, role, g)
            out[p_dst.scale_key] = g_dst.reshape(p_dst.scale_shape)
        notes.append(note)
    if "count" in dst.params:
        p = dst.params["count"]
        value = source.flat[src.params["count"].key] if "count" in src.params else 0
        out[p.key] = np.asarray(value, _dtype(target.flat[p.key]))
    return "; ".join(notes), problems


def _dtype(like: Any) -> Any:
    dtype = getattr(like, "dtype", None)
    return np.asarray(like).dtype if dtype is None else dtype


def _cast_like(value: Any, like: Any) -> Any:
    return np.asarray(value).astype(_dtype(like), copy=False)


def convert(
    params: Any,
    *,
    src: str,
    dst: str,
    like: Any,
    mapping: Mapping_ | None = None,
    kinds: Mapping[str, str] | None = None,
    feature_axes: Mapping[str, core.FeatureAxes] | None = None,
    report: bool = False,
) -> Any:
    """Ports parameters between Linen, NNX, Haiku, Equinox and PyTorch.

    Layers are recognised with the layout table (`weightnorm.port.LAYOUTS`)
    and paired in model order, kind by kind, and checked by shape after
    layout; `mapping` pairs layers explicitly. Every array is renamed,
    transposed, flipped (transposed convolutions) and reshaped so that the
    destination computes what the source does. Weight norm travels with its
    variable: a scale and direction are copied as they are when both sides
    normalize over the same axes; otherwise a source's `g * v / ||v||` is
    folded into the weight, and a destination's scale is set to the weight's
    norm (`weightnorm.decompose`) so that outputs are unchanged. NNX models
    hold weight norm in `weightnorm.adapters.nnx.WeightNorm` wrappers, whose
    feature axes and epsilon are read from each wrapper.

    Args:
      params: the source: Linen variables (or a params dict), Haiku params,
        an Equinox module, an NNX module or state, or a PyTorch state dict
        (tensors or numpy arrays) or `nn.Module`.
      src: its framework: `"linen"`, `"nnx"`, `"haiku"`, `"equinox"` or `"torch"`.
      dst: the destination framework, as `src`.
      like: a destination model or params of the same architecture; only its
        structure (and dtypes) are used, never its values.
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
        modules and for auto-named Linen/Haiku layers (`Conv_0`, `linear_1`).
      feature_axes: optional `{regex: axes}` giving the weight-norm feature
        axes of the variables (flat keys, either side, matched in full) whose
        Linen or Haiku scale does not say them: those wrappers store only the
        sizes of the feature axes, so a `(4,)` scale on a `(4, 4)` kernel fits
        either axis, and without this the framework's default axis is assumed.
        Axes are in that variable's own layout, as given to its wrapper.
      report: also return the pairing, a list of `Pairing`s.

    Returns:
      `like`'s structure filled with the ported values (a new Equinox or NNX
      module, a dict for Linen/Haiku/torch state dicts, a copy of a torch
      module), or `(that, pairings)` when `report=True`.

    Raises:
      PortError (a ValueError): listing every unmatched source or destination
        layer, leaf of no known layer kind, shape conflict, or layer whose kind
        cannot be told; for `flax.nnx.WeightNorm` (it overwrites its layer's
        kernel) and NNX wrappers with `use_scale=False`; nothing is returned
        in part.
      TypeError: when `params` or `like` is not of the framework named.
      ValueError: naming a direction that holds NaN or inf when it is folded.

    Examples:
      >>> import numpy as np
      >>> torch_sd = {"fc.weight": np.ones((3, 2), np.float32), "fc.bias": np.zeros(3, np.float32)}
      >>> like = {"params": {"Dense_0": {"kernel": np.zeros((2, 3)), "bias": np.zeros(3)}}}
      >>> out, pairs = convert(torch_sd, src="torch", dst="linen", like=like, report=True)
      >>> out["params"]["Dense_0"]["kernel"].shape, pairs[0].dst
      ((2, 3), 'Dense_0')
    """
    source = read_model(params, src, "src")
    target = read_model(like, dst, "dst")
    result, pairings = convert_models(source, target, mapping, kinds, feature_axes)
    return (result, pairings) if report else result


def _apply_kinds(layers: list[Layer], kinds: Mapping[str, str] | None) -> list[str]:
    problems = []
    for pattern, kind in (kinds or {}).items():
        if kind not in LAYOUTS:
            problems.append(f"`kinds` names {kind!r}, which is not one of {list(LAYOUTS)}")
        for layer in layers:
            if re.fullmatch(pattern, layer.path):
                if kind not in layer.kinds:
                    problems.append(
                        f"`kinds` says {layer.path!r} is a {kind!r}, but its parameters "
                        f"fit only {list(layer.kinds)}"
                    )
                else:
                    layer.kinds = (kind,)
    return problems


def _apply_feature_axes(
    layers: list[Layer], given: Mapping[str, core.FeatureAxes] | None
) -> list[str]:
    problems = []
    for pattern, axes in (given or {}).items():
        used = False
        for layer in layers:
            for param in layer.params.values():
                if param.scale_key is None or not re.fullmatch(pattern, param.key):
                    continue
                used = True
                resolved = resolve_feature_axes(
                    param.key, param.shape, core.WeightNormConfig(feature_axes=axes).feature_axes
                )
                sizes = tuple(param.shape[a] for a in resolved)
                keepdims = tuple(
                    param.shape[a] if a in resolved else 1 for a in range(len(param.shape))
                )
                if param.scale_shape not in (sizes, keepdims):
                    problems.append(
                        f"`feature_axes` gives {param.key!r} (shape {param.shape}) the axes "
                        f"{resolved}, but its scale {param.scale_key!r} has shape "
                        f"{param.scale_shape}"
                    )
                param.known_axes = resolved
        if not used:
            problems.append(f"`feature_axes` rule {pattern!r} matches no weight-normed variable")
    return problems


def convert_models(
    source: Model,
    target: Model,
    mapping: Mapping_ | None = None,
    kinds: Mapping[str, str] | None = None,
    feature_axes: Mapping[str, core.FeatureAxes] | None = None,
) -> tuple[Any, list[Pairing]]:
    """`convert` on the flat views of two models: (the rebuilt target, the pairing)."""
    src, dst = source.framework, target.framework
    sources, unknown_src = _layers(source)
    targets, unknown_dst = _layers(target)
    problems = _apply_kinds(sources, kinds) + _apply_kinds(targets, kinds)
    problems += _apply_feature_axes([*sources, *targets], feature_axes)
    if unknown_src:
        problems.append(f"source leaves of no layer kind the table knows: {unknown_src}")
    if unknown_dst:
        problems.append(f"destination leaves of no layer kind the table knows: {unknown_dst}")
    pairs, pairing_problems = _pair(sources, targets, mapping)
    problems += pairing_problems
    out: dict[str, Any] = {}
    pairings = []
    order = {id(layer): i for i, layer in enumerate(sources)}
    for src_layer, dst_layer in sorted(pairs, key=lambda pair: order[id(pair[0])]):
        common = [k for k in dst_layer.kinds if k in src_layer.kinds]
        if not common:
            problems.append(
                f"{src_layer.path!r} ({' or '.join(src_layer.kinds)}) is mapped to "
                f"{dst_layer.path!r} ({' or '.join(dst_layer.kinds)}), a different kind"
            )
            continue
        if len({pairing_class(k) for k in common}) > 1:
            continue  # reported with the ambiguous layers
        kind = common[0]
        src_layer.kinds = dst_layer.kinds = (kind,)
        transform, layer_problems = _port_layer(src_layer, dst_layer, source, target, out)
        problems += layer_problems
        pairings.append(Pairing(src_layer.path, dst_layer.path, kind, transform))
    missing = [key for key in target.flat if key not in out]
    if missing and not problems:
        problems.append(f"destination leaves left unfilled: {missing}")
    if problems:
        raise PortError(f"Cannot port {src} -> {dst}:\n  - " + "\n  - ".join(problems))
    filled = {key: _cast_like(out[key], value) for key, value in target.flat.items()}
    if dst != "torch":
        filled = {key: jnp.asarray(value) for key, value in filled.items()}
    result = target.rebuild(filled)
    return result, pairings
