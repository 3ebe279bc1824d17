"""Which source layer goes to which destination layer: names first, then facts, else refusal.

1. An explicit `mapping` (source path -> destination path) is taken as it is.
2. **Names.** Each layer's path is put in one form for every framework: split
   on the framework's separator (torch's `.`, `/` elsewhere), Haiku's `~`
   dropped, a wrapper's own segment (`layer_instance`, `layer`) dropped, a
   list index written apart (Linen's `layers_3` is `layers`, `3`, as torch's
   `layers.3`), lower case, and the leading segments every path of a model
   shares (a Haiku model's top module, a `wav2vec2.` prefix) set aside.
   Layers whose names agree pair; then a name that is the tail of exactly
   one name on the other side.
3. **Shapes.** Among the rest, a layer whose kind and (canonical) shapes no
   other layer on either side has pairs with its one counterpart.
4. **Order**, only where it is real on both sides: a torch module or an
   `OrderedDict` state dict (declaration order), Equinox fields, NNX
   attributes, a traced Linen or Haiku model (call order), a file weightnorm
   wrote. A side whose order is lost (a plain dict, a file from elsewhere,
   Linen or Haiku params) still orders paths that differ only in their
   numbers (`Dense_2` before `Dense_10`, `layers.2` before `layers.10`).
5. Everything else is refused, naming the candidates and how to decide.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

from ._frameworks import FRAMEWORKS, ModelView
from ._layers import Layer, canonical_shape, same_transform, shapes_fit
from ._layouts import TENSOR

__all__ = [
    "Mapping_",
    "PYTHON",
    "Spelling",
    "pair_layers",
    "pair_kind",
    "resolve_kinds",
    "canonical_name",
]

Mapping_ = Mapping[str, str] | Sequence[tuple[str, str]]


@dataclasses.dataclass(frozen=True)
class Spelling:
    """How messages name the options: the Python arguments, or the CLI's flags."""

    kinds: str = "`kinds={path regex: kind}`"
    feature_axes: str = "`feature_axes={key regex: axes}`"
    mapping: str = "`mapping=`"


#: The Python API's spelling, the default of every message.
PYTHON = Spelling()


_INDEXED = re.compile(r"(.+?)_(\d+)")
#: A list index written into a name: `layers_3`, `resblocks_0_convs1_2` (Linen, Haiku).
_INDEX = re.compile(r"_(\d+)(?=_|$)")


def canonical_name(path: str, view: ModelView) -> tuple[str, ...]:
    """A layer's path in the form every framework shares (see the module docstring).

    Examples:
      >>> from weightnorm.port import read_model
      >>> view = read_model({"params": {}}, "linen", "like")
      >>> canonical_name("resblocks_0/convs1_2", view), canonical_name("resblocks_0_convs1_2", view)
      (('resblocks', '0', 'convs1', '2'), ('resblocks', '0', 'convs1', '2'))
    """
    framework = FRAMEWORKS[view.framework]
    parts = path.split(framework.separator) if path else []
    out: list[str] = []
    for i, part in enumerate(parts):
        if part == "~" or framework.separator.join(parts[: i + 1]) in view.hidden:
            continue
        default = _INDEXED.fullmatch(part)
        if default is not None and default.group(1) in framework.module_names:
            out.append(part)  # `Dense_3` counts Dense modules made, it is no list index
            continue
        out += [token.strip("_") for token in _INDEX.split(part) if token.strip("_")]
    return tuple(part.lower() for part in out)


def _strip_common_prefix(names: dict[int, tuple[str, ...]]) -> dict[int, tuple[str, ...]]:
    """The names without the leading segments all of them share (each keeps one segment)."""
    if len(names) < 2:
        return names
    values = list(names.values())
    depth = 0
    while all(len(name) > depth + 1 for name in values) and len({n[depth] for n in values}) == 1:
        depth += 1
    return {key: name[depth:] for key, name in names.items()}


def _template(path: str) -> str:
    return re.sub(r"\d+", "#", path)


def _number_key(path: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path))


def _default_named(layer: Layer) -> bool:
    """Whether a numbered segment of the path is a default module name (`Dense_3`, `linear_1`).

    Those number modules in the order they were made, which in Linen's and
    Haiku's compact style is the order they are called.
    """
    names = FRAMEWORKS[layer.framework].module_names
    separator = FRAMEWORKS[layer.framework].separator
    return any(
        (match := _INDEXED.fullmatch(part)) is not None and match.group(1) in names
        for part in layer.path.split(separator)
    )


def _orders(layers: list[Layer]) -> dict[str, list[Layer]]:
    """`layers` in each real order their model has, by kind of order.

    - `"declaration"`/`"call"`: the model's own order (a torch module or
      `OrderedDict`, Equinox fields, NNX attributes; a traced Linen or Haiku model).
    - `"index"`: paths that differ only in list indices (`layers.2` before
      `layers.10`, whatever the dict's order), the lists' own order.
    - `"creation"`: paths that differ only in default-name numbers (`Dense_2`
      before `Dense_10`), the order Linen and Haiku made the modules in; that
      is their call order in compact code and may be anything else, so it
      pairs only with another model's creation order.
    """
    found: dict[str, list[Layer]] = {}
    kinds = {layer.order_kind for layer in layers}
    if all(layer.order is not None for layer in layers) and len(kinds) == 1:
        found[kinds.pop()] = sorted(layers, key=lambda layer: layer.order)
    if len({_template(layer.path) for layer in layers}) == 1:
        kind = "creation" if any(_default_named(layer) for layer in layers) else "index"
        found.setdefault(kind, sorted(layers, key=lambda layer: _number_key(layer.path)))
    return found


#: Kinds of order that agree: list indices follow declaration order.
_COMPATIBLE = (
    ("index", "index"),
    ("index", "declaration"),
    ("declaration", "index"),
    ("declaration", "declaration"),
    ("call", "call"),
    ("creation", "creation"),
)


def _in_order(from_s: list[Layer], from_t: list[Layer]) -> list[tuple[Layer, Layer]] | None:
    """The two sides paired in an order both really have, or None."""
    if len(from_s) != len(from_t):
        return None
    orders_s, orders_t = _orders(from_s), _orders(from_t)
    for kind_s, kind_t in _COMPATIBLE:
        if kind_s in orders_s and kind_t in orders_t:
            return list(zip(orders_s[kind_s], orders_t[kind_t], strict=True))
    return None


def _explicit_pairs(
    mapping: Mapping_ | None, sources: list[Layer], targets: list[Layer]
) -> tuple[list[tuple[Layer, Layer, str]], list[str]]:
    if mapping is None:
        return [], []
    by_path = {layer.path: layer for layer in targets}
    rules = list(mapping.items()) if isinstance(mapping, Mapping) else list(mapping)
    pairs: list[tuple[Layer, Layer, str]] = []
    problems = []
    for pattern, replacement in rules:
        used = False
        for layer in sources:
            try:
                match = re.fullmatch(pattern, layer.path)
            except re.error as error:
                problems.append(f"mapping rule {pattern!r} is not a regular expression ({error})")
                break
            if match is None:
                continue
            used = True
            target = by_path.get(match.expand(replacement))
            if target is None:
                problems.append(
                    f"{layer.path!r} maps to {match.expand(replacement)!r}, which is not a "
                    f"destination layer (those are {sorted(by_path)})"
                )
            elif any(layer is s or target is t for s, t, _ in pairs):
                problems.append(f"{layer.path!r} or {target.path!r} is mapped twice")
            else:
                pairs.append((layer, target, "mapping"))
        if not used and not any(pattern in p for p in problems):
            problems.append(f"mapping rule {pattern!r} matches no source layer")
    return pairs, problems


def _transform_class(kind: str) -> frozenset[str]:
    """The kinds stored exactly like `kind` in every framework (LayerNorm, GroupNorm, RMSNorm).

    Which of them a layer is decides nothing the port does, so a layer whose
    parameters fit only such kinds is not ambiguous.
    """

    def layouts(k: str) -> tuple[Any, ...]:
        return tuple(
            (name, tuple(sorted((role, leaf) for role, leaf in entry.layouts[k].items())))
            for name, entry in FRAMEWORKS.items()
            if k in entry.layouts
        )

    if kind == TENSOR:
        return frozenset({kind})
    return frozenset(k for k in FRAMEWORKS["torch"].layouts if layouts(k) == layouts(kind))


def _classes_of(layer: Layer) -> frozenset[frozenset[str]]:
    return frozenset(_transform_class(kind) for kind in layer.kinds)


def resolve_kinds(layer: Layer, others: list[Layer]) -> tuple[str, ...]:
    """A layer's kinds narrowed by the other model: the ones some layer there could pair with.

    A torch 3-D `weight` is a Conv1d or a ConvTranspose1d; when the other model
    holds only convolutions of the right shapes, it is a convolution.
    """
    if len(layer.kinds) == 1:
        return layer.kinds
    fits = [
        kind
        for kind in layer.kinds
        if any(kind in other.kinds and shapes_fit(layer, other, kind) for other in others)
    ]
    return tuple(fits) if len(fits) == 1 else layer.kinds


def _signature(layer: Layer) -> tuple[Any, ...]:
    """What a layer can pair by: how it is stored and the canonical shape of its weight."""
    role = "value" if layer.kind == TENSOR else "weight"
    shape = canonical_shape(layer, role, layer.kind) or ()
    shape = _squeezed(shape) if layer.kind == TENSOR else shape
    return (min(_transform_class(layer.kind)), layer.spatial, shape)


def _squeezed(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(size for size in shape if size != 1)


def pair_kind(
    source: Layer, target: Layer, spelling: Spelling = PYTHON
) -> tuple[str | None, str | None]:
    """The kind two paired layers are read as, or None and the reason they cannot pair."""
    common = [kind for kind in target.kinds if kind in source.kinds]
    if not common:
        return None, (
            f"{source.path!r} ({' or '.join(source.kinds)}) is paired with {target.path!r} "
            f"({' or '.join(target.kinds)}), a different kind"
        )
    fitting = [kind for kind in common if shapes_fit(source, target, kind)] or common
    named = [kind for kind in (source.named, target.named) if kind in fitting]
    if len(fitting) > 1 and named:  # a default module name (`Conv_3`) says its class
        fitting = named[:1]
    if len(fitting) > 1 and not same_transform(source, target, fitting):
        return None, (
            f"{source.path!r} and {target.path!r} could each be a {' or a '.join(fitting)}, "
            "and their arrays move differently for each; name the kind with "
            f"{spelling.kinds}, or pass a model whose classes "
            "say it (a torch module, an Equinox or NNX module, a traced Linen or Haiku model)"
        )
    return fitting[0], None


def pair_layers(
    sources: list[Layer],
    targets: list[Layer],
    source: ModelView,
    target: ModelView,
    mapping: Mapping_ | None = None,
    spelling: Spelling = PYTHON,
) -> tuple[list[tuple[Layer, Layer, str]], list[str]]:
    """Pairs every source layer with a destination layer, or says why not.

    Returns:
      `(pairs, problems)`: `(source, destination, how)` with `how` one of
      `"mapping"`, `"names"`, `"shapes"`, `"order"`, in source order; and a
      sentence for each layer that could not be paired.
    """
    pairs, problems = _explicit_pairs(mapping, sources, targets)
    taken = {id(layer) for s, t, _ in pairs for layer in (s, t)}
    left_s = [layer for layer in sources if id(layer) not in taken]
    left_t = [layer for layer in targets if id(layer) not in taken]

    for finder in (_name_pairs, _tail_pairs):
        found = finder(left_s, left_t, source, target)
        for s, t in found:
            if _compatible(s, t):
                pairs.append((s, t, "names"))
            else:  # names are the user's word: a conflict is reported, not paired otherwise
                problems.append(
                    f"{_shapes(s, s.kind)} but {_shapes(t, t.kind)}: the layers "
                    f"{s.path!r} and {t.path!r} have the same name but do not fit "
                    f"({' or '.join(s.kinds)} against {' or '.join(t.kinds)})"
                )
        paired = {id(layer) for s, t in found for layer in (s, t)}
        left_s = [layer for layer in left_s if id(layer) not in paired]
        left_t = [layer for layer in left_t if id(layer) not in paired]

    for layer in [*left_s, *left_t]:  # a default module name (`Conv_3`) says its class
        if len(layer.kinds) > 1 and layer.named in layer.kinds:
            layer.kinds = (layer.named,)
    for layer in left_s:
        layer.kinds = resolve_kinds(layer, left_t)
    for layer in left_t:
        layer.kinds = resolve_kinds(layer, left_s)
    # A layer whose kinds move arrays differently is ambiguous only where some layer of
    # the other side could take it; one that none could is reported as unmatched.
    could_pair = lambda layer, others: any(  # noqa: E731
        kind in other.kinds and shapes_fit(layer, other, kind)
        for other in others
        for kind in layer.kinds
    )
    ambiguous = [
        layer
        for layer, others in [*((x, left_t) for x in left_s), *((x, left_s) for x in left_t)]
        if len(_classes_of(layer)) > 1 and could_pair(layer, others)
    ]
    if ambiguous:
        problems.append(
            "layers whose kind the parameters do not tell: "
            + ", ".join(f"{layer.path!r} ({' or '.join(layer.kinds)})" for layer in ambiguous)
            + f"; name their kind with {spelling.kinds}, give the layers the same names on "
            "both sides, or pass the model itself (a torch nn.Module, an Equinox or NNX "
            "module, a traced Linen or Haiku model)"
        )
    left_s = [layer for layer in left_s if not any(layer is x for x in ambiguous)]
    left_t = [layer for layer in left_t if not any(layer is x for x in ambiguous)]

    buckets: dict[tuple[Any, ...], tuple[list[Layer], list[Layer]]] = {}
    for layer in left_s:
        buckets.setdefault(_signature(layer), ([], []))[0].append(layer)
    for layer in left_t:
        buckets.setdefault(_signature(layer), ([], []))[1].append(layer)
    unmatched_s, unmatched_t = [], []
    for from_s, from_t in buckets.values():
        # Within a bucket of layers stored alike (LayerNorm, GroupNorm, RMSNorm), a
        # kind that both models name once pairs those two.
        for kind in {layer.kind for layer in from_s if len(layer.kinds) == 1}:
            one_s = [layer for layer in from_s if layer.kinds == (kind,)]
            one_t = [layer for layer in from_t if layer.kinds == (kind,)]
            if len(one_s) == 1 and len(one_t) == 1:
                pairs.append((one_s[0], one_t[0], "shapes"))
                from_s = [layer for layer in from_s if layer is not one_s[0]]
                from_t = [layer for layer in from_t if layer is not one_t[0]]
        if len(from_s) == 1 and len(from_t) == 1:
            pairs.append((from_s[0], from_t[0], "shapes"))
            continue
        in_order = _in_order(from_s, from_t)
        if from_s and from_t and in_order is not None:
            pairs += [(s, t, "order") for s, t in in_order]
            continue
        if from_s and from_t:
            named = " or ".join(sorted({k for layer in [*from_s, *from_t] for k in layer.kinds}))
            problems.append(
                f"cannot tell which of the {named} layers "
                f"{sorted(layer.path for layer in from_s)} (source) goes to which of "
                f"{sorted(layer.path for layer in from_t)} (destination): their names differ, "
                f"their shapes are alike, and {_why_no_order(from_s, from_t)}. Name the "
                f"layers alike on both sides, or pass {spelling.mapping}"
            )
            continue
        unmatched_s += from_s
        unmatched_t += from_t
    problems += _unmatched(unmatched_s, unmatched_t)
    order = {id(layer): i for i, layer in enumerate(sources)}
    pairs.sort(key=lambda pair: order[id(pair[0])])
    return pairs, problems


def _why_no_order(from_s: list[Layer], from_t: list[Layer]) -> str:
    if len(from_s) != len(from_t):
        return f"there are {len(from_s)} against {len(from_t)}"
    orders_s, orders_t = _orders(from_s), _orders(from_t)
    lost = [
        side for side, orders in (("source", orders_s), ("destination", orders_t)) if not orders
    ]
    if lost:
        return (
            f"the {' and the '.join(lost)} order is lost (a plain dict, a file from elsewhere, "
            "Linen or Haiku params: pass a torch module or `state_dict()`, or trace the model)"
        )
    return (
        f"the source's order is its {' or '.join(orders_s)} order but the destination's its "
        f"{' or '.join(orders_t)} order, which can differ (a HiFi-GAN declares its residual "
        "convolutions in another order than it calls them)"
    )


def _unmatched(sources: list[Layer], targets: list[Layer]) -> list[str]:
    """Sentences for the layers left alone, with their shapes where some of a kind are left."""
    problems = []
    by_kind: dict[str, tuple[list[Layer], list[Layer]]] = {}
    for layer in sources:
        by_kind.setdefault(layer.kind, ([], []))[0].append(layer)
    for layer in targets:
        by_kind.setdefault(layer.kind, ([], []))[1].append(layer)
    lone_s, lone_t = [], []
    for kind, (from_s, from_t) in by_kind.items():
        in_order = _in_order(from_s, from_t)
        if from_s and in_order is not None:
            # Paired in order they would be, but their shapes differ: say how.
            problems += [
                f"{_shapes(s, kind)} but {_shapes(t, kind)}: the {kind} layers {s.path!r} and "
                f"{t.path!r}, paired by their order, have different shapes"
                for s, t in in_order
            ]
        elif from_s and from_t and kind != TENSOR:
            problems.append(
                f"no {kind} layer of the source has the shapes of one of the destination: "
                + ", ".join(_shapes(layer, kind) for layer in from_s)
                + "; against "
                + ", ".join(_shapes(layer, kind) for layer in from_t)
            )
        else:
            lone_s += from_s
            lone_t += from_t
    for side, lone in (("source", lone_s), ("destination", lone_t)):
        other = "destination" if side == "source" else "source"
        layers = [layer for layer in lone if layer.kind != TENSOR]
        tensors = sorted(layer.params["value"].key for layer in lone if layer.kind == TENSOR)
        if layers:
            problems.append(
                f"{side} layers with no {other}: "
                + ", ".join(f"{layer.path!r} ({' or '.join(layer.kinds)})" for layer in layers)
            )
        if tensors:
            problems.append(
                f"{side} leaves of no layer kind the table knows: {tensors} (such leaves are "
                f"carried over by name, but the {other} has no leaf of their names and shapes)"
            )
    return problems


def _shapes(layer: Layer, kind: str) -> str:
    parts = []
    for role, param in layer.params.items():
        canonical = canonical_shape(layer, role, kind)
        shown = (
            ""
            if canonical == param.shape or canonical is None
            else f" ({canonical} in torch layout)"
        )
        parts.append(f"{param.key!r} has shape {param.shape}{shown}")
    return ", ".join(parts)


def _names(layers: list[Layer], view: ModelView) -> dict[int, tuple[str, ...]]:
    return _strip_common_prefix({id(layer): canonical_name(layer.path, view) for layer in layers})


def _compatible(s: Layer, t: Layer) -> bool:
    """Whether two layers could be one: a kind in common under which their shapes agree."""
    return any(kind in t.kinds and shapes_fit(s, t, kind) for kind in s.kinds)


def _named(name: tuple[str, ...]) -> bool:
    """Whether a name says more than a position (`("0",)` is only an index)."""
    return any(not part.isdigit() for part in name)


def _name_pairs(
    sources: list[Layer], targets: list[Layer], source: ModelView, target: ModelView
) -> list[tuple[Layer, Layer]]:
    names_s, names_t = _names(sources, source), _names(targets, target)
    by_name_s: dict[tuple[str, ...], list[Layer]] = {}
    by_name_t: dict[tuple[str, ...], list[Layer]] = {}
    for layer in sources:
        by_name_s.setdefault(names_s[id(layer)], []).append(layer)
    for layer in targets:
        by_name_t.setdefault(names_t[id(layer)], []).append(layer)
    found = []
    for name, from_s in by_name_s.items():
        from_t = by_name_t.get(name, [])
        if len(from_s) == 1 and len(from_t) == 1:
            found.append((from_s[0], from_t[0]))
    return found


def _tail_pairs(
    sources: list[Layer], targets: list[Layer], source: ModelView, target: ModelView
) -> list[tuple[Layer, Layer]]:
    """Pairs a name that is the tail of exactly one name on the other side, and vice versa."""
    names_s = {id(layer): canonical_name(layer.path, source) for layer in sources}
    names_t = {id(layer): canonical_name(layer.path, target) for layer in targets}

    def tail(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
        short, long = sorted((a, b), key=len)
        return _named(short) and long[len(long) - len(short) :] == short

    found: list[tuple[Layer, Layer]] = []
    changed = True
    left_s, left_t = list(sources), list(targets)
    while changed:
        changed = False
        for s in list(left_s):
            matches = [
                t for t in left_t if tail(names_s[id(s)], names_t[id(t)]) and _compatible(s, t)
            ]
            if len(matches) != 1:
                continue
            t = matches[0]
            back = [o for o in left_s if tail(names_s[id(o)], names_t[id(t)]) and _compatible(o, t)]
            if back == [s]:
                found.append((s, t))
                left_s.remove(s)
                left_t.remove(t)
                changed = True
    return found
