"""The registry: one entry per framework, and each framework's reader.

An entry says everything the port knows about a framework: how it stores
each layer kind (leaf names and layouts), which of its module classes are
which kind (imported lazily), the names it gives modules by default, its
weight norm's default feature axis and epsilon, and how to read a model of it
into a `ModelView`: its leaves as one flat dict, which module each leaf
belongs to, which weight each scale normalizes (the adapters' `weight_norms`),
whether its order is the model's own, and how to rebuild it with new values.
Every other list of frameworks in the package derives from `FRAMEWORKS`.

Frameworks are imported only when one of their models is read, so
`weightnorm.port` imports with jax alone.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import functools
import importlib
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .. import core
from ..adapters import ModelTrace, NormalizedWeight
from ._checkpoint import Checkpoint, import_torch, torch_to_numpy
from ._layouts import Leaf

__all__ = ["Framework", "FRAMEWORKS", "ModelView", "PortError", "read_model", "torch_split"]


class PortError(ValueError):
    """A port that cannot be done exactly; the message lists every offending path and the fix."""


@dataclasses.dataclass
class ModelView:
    """One model of one framework, as the port sees it.

    Attributes:
      framework: the registry name.
      flat: every leaf, `{key: array}` (values may load lazily, as a
        `Checkpoint`'s do); read only for the layers being ported.
      specs: `{key: (shape, dtype)}` of every leaf, known without loading.
      locate: key -> (module path, leaf name) of the module the leaf belongs to.
      kinds: module path -> kind, where the model says (its module classes).
      weight_norms: direction key -> its `NormalizedWeight`.
      hidden: module paths whose last segment is a wrapper's own (its
        `layer_instance` or `layer`), left out of a layer's name for pairing.
      order: module path -> its place in the model's declaration or call order;
        None where the order is lost (a file, a dict after a pytree operation).
      rebuild: new flat values -> the model (like the original) holding them.
      order_kind: what `order` is: `"declaration"` (a torch module or state
        dict, Equinox fields, NNX attributes, a file weightnorm wrote) or
        `"call"` (a traced Linen or Haiku model). Layers pair by order only
        where both sides' orders are of one kind: a HiFi-GAN declares its
        residual convolutions in another order than it calls them.
    """

    framework: str
    flat: Mapping[str, Any]
    specs: dict[str, tuple[tuple[int, ...], np.dtype]]
    locate: Callable[[str], tuple[str, str]]
    kinds: dict[str, str]
    weight_norms: dict[str, NormalizedWeight]
    hidden: frozenset[str]
    order: dict[str, int] | None
    rebuild: Callable[[dict[str, Any]], Any]
    order_kind: str = "declaration"


@dataclasses.dataclass(frozen=True)
class Framework:
    """Everything the port knows about one framework.

    Attributes:
      name: its name in `src=`/`dst=`.
      feature_axis: the default feature axis of its weight norm (weightnorm's
        adapter, or torch's `dim=0`).
      epsilon: its weight norm's default epsilon (torch divides by the bare norm).
      layouts: kind -> role -> `Leaf` for every kind it can hold.
      classes: (kind, `"module:Class"`) of its module classes, most specific
        first, imported when a model of it is read.
      module_names: default module names -> kind (Linen class names, Haiku's
        snake-case names), telling a kind from a path where no class does.
      read: its reader, `(model, example) -> ModelView`.
      separator: the separator of its module paths.
    """

    name: str
    feature_axis: int
    epsilon: float
    layouts: Mapping[str, Mapping[str, Leaf]]
    classes: tuple[tuple[str, str], ...]
    module_names: Mapping[str, str]
    read: Callable[[Any, Any], ModelView]
    separator: str = "/"

    def kind_of(self, module: Any) -> str | None:
        """The kind of a module object by its class, or None."""
        return self.kind_of_type(type(module))

    def kind_of_type(self, cls: type) -> str | None:
        """The kind of a module class, or None."""
        return next((kind for kind, target in _classes(self) if issubclass(cls, target)), None)

    def layer_classes(self) -> tuple[type, ...]:
        """Every module class the registry knows for this framework (imports it)."""
        return tuple(target for _, target in _classes(self))


def _classes(framework: Framework) -> tuple[tuple[str, type], ...]:
    """A framework's (kind, class) pairs, imported once."""
    return _import_classes(framework.classes)


@functools.cache
def _import_classes(classes: tuple[tuple[str, str], ...]) -> tuple[tuple[str, type], ...]:
    resolved = []
    for kind, name in classes:
        module_name, _, attribute = name.partition(":")
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
        resolved.append((kind, target))
    return tuple(resolved)


# --- the leaves of each kind, per framework ------------------------------------------------

_AFFINE = {"weight": Leaf("scale", "C"), "bias": Leaf("bias", "C")}
_FLAX_LAYOUTS = {
    "dense": {"weight": Leaf("kernel", "I O"), "bias": Leaf("bias", "O")},
    "conv": {"weight": Leaf("kernel", "* I O"), "bias": Leaf("bias", "O")},
    # torch stores transposed-conv weights (in, out, *k) and applies them flipped
    # relative to lax; Linen (transpose_kernel=False), Haiku and Equinox do not flip.
    "conv_transpose": {"weight": Leaf("kernel", "~* I O"), "bias": Leaf("bias", "O")},
    "embed": {"weight": Leaf("embedding", "V D")},
    "layer_norm": _AFFINE,
    "group_norm": _AFFINE,
    "rms_norm": _AFFINE,
    "batch_norm": {
        **_AFFINE,
        "mean": Leaf("mean", "C", "batch_stats"),
        "var": Leaf("var", "C", "batch_stats"),
    },
}
_TORCH_AFFINE = {"weight": Leaf("weight", "C"), "bias": Leaf("bias", "C")}
_TORCH_LAYOUTS = {
    "dense": {"weight": Leaf("weight", "O I"), "bias": Leaf("bias", "O")},
    "conv": {"weight": Leaf("weight", "O I *"), "bias": Leaf("bias", "O")},
    "conv_transpose": {"weight": Leaf("weight", "I O *"), "bias": Leaf("bias", "O")},
    "embed": {"weight": Leaf("weight", "V D")},
    "layer_norm": _TORCH_AFFINE,
    "group_norm": _TORCH_AFFINE,
    "rms_norm": _TORCH_AFFINE,
    "batch_norm": {
        **_TORCH_AFFINE,
        "mean": Leaf("running_mean", "C", "buffers"),
        "var": Leaf("running_var", "C", "buffers"),
        "count": Leaf("num_batches_tracked", "", "buffers"),
    },
}
_HAIKU_LAYOUTS = {
    "dense": {"weight": Leaf("w", "I O"), "bias": Leaf("b", "O")},
    "conv": {"weight": Leaf("w", "* I O"), "bias": Leaf("b", "O")},
    "conv_transpose": {"weight": Leaf("w", "~* O I"), "bias": Leaf("b", "O")},
    "embed": {"weight": Leaf("embeddings", "V D")},
    "layer_norm": {"weight": Leaf("scale", "C"), "bias": Leaf("offset", "C")},
    "group_norm": {"weight": Leaf("scale", "C"), "bias": Leaf("offset", "C")},
    "rms_norm": {"weight": Leaf("scale", "C"), "bias": Leaf("offset", "C")},
}
_EQUINOX_LAYOUTS = {
    "dense": {"weight": Leaf("weight", "O I"), "bias": Leaf("bias", "O")},
    "conv": {"weight": Leaf("weight", "O I *"), "bias": Leaf("bias", "O 1*")},
    "conv_transpose": {"weight": Leaf("weight", "O I ~*"), "bias": Leaf("bias", "O 1*")},
    "embed": {"weight": Leaf("weight", "V D")},
    "layer_norm": _TORCH_AFFINE,
    "group_norm": _TORCH_AFFINE,
    "rms_norm": _TORCH_AFFINE,
}

_LINEN_CLASSES = (
    ("conv_transpose", "flax.linen:ConvTranspose"),
    ("conv", "flax.linen:Conv"),
    ("dense", "flax.linen:Dense"),
    ("embed", "flax.linen:Embed"),
    ("layer_norm", "flax.linen:LayerNorm"),
    ("group_norm", "flax.linen:GroupNorm"),
    ("rms_norm", "flax.linen:RMSNorm"),
    ("batch_norm", "flax.linen:BatchNorm"),
)
_NNX_CLASSES = (
    ("conv_transpose", "flax.nnx:ConvTranspose"),
    ("conv", "flax.nnx:Conv"),
    ("dense", "flax.nnx:Linear"),
    ("embed", "flax.nnx:Embed"),
    ("layer_norm", "flax.nnx:LayerNorm"),
    ("group_norm", "flax.nnx:GroupNorm"),
    ("rms_norm", "flax.nnx:RMSNorm"),
    ("batch_norm", "flax.nnx:BatchNorm"),
)
_LINEN_NAMES = {
    "Dense": "dense",
    "Conv": "conv",
    "ConvTranspose": "conv_transpose",
    "Embed": "embed",
    "LayerNorm": "layer_norm",
    "GroupNorm": "group_norm",
    "RMSNorm": "rms_norm",
    "BatchNorm": "batch_norm",
}


# --- readers -------------------------------------------------------------------------------


def _spec(value: Any) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of an array, a `jax.ShapeDtypeStruct` or a torch tensor, unread."""
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    if shape is None or dtype is None:
        array = np.asarray(value)
        return tuple(array.shape), array.dtype
    if type(value).__module__.startswith("torch"):
        return tuple(shape), torch_to_numpy(value[...].reshape(-1)[:0]).dtype
    return tuple(shape), np.dtype(dtype)


def _specs(flat: Mapping[str, Any]) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    if isinstance(flat, Checkpoint):
        return {key: flat.spec(key) for key in flat}
    return {key: _spec(value) for key, value in flat.items()}


def _slash_locate(skip: int) -> Callable[[str], tuple[str, str]]:
    """Locates `a/b/leaf` in module `a/b`, after `skip` leading segments (collections)."""

    def locate(key: str) -> tuple[str, str]:
        parts = key.split("/")[skip:]
        return "/".join(parts[:-1]), parts[-1]

    return locate


def _hidden(weights: Mapping[str, NormalizedWeight]) -> frozenset[str]:
    """Paths of wrapper-owned segments: the child of a wrapper that holds its layer."""
    hidden = set()
    for weight in weights.values():
        if weight.weight.startswith(f"{weight.wrapper}/" if weight.wrapper else ""):
            rest = weight.weight[len(weight.wrapper) :].lstrip("/").split("/")
            if len(rest) > 1:
                hidden.add("/".join(filter(None, (weight.wrapper, rest[0]))))
    return frozenset(hidden)


def _keyed(weights: Any, prefix: str = "") -> dict[str, NormalizedWeight]:
    """`{direction key: record}`, the keys prefixed (e.g. with Linen's `params/`)."""
    if not prefix:
        return {w.weight: w for w in weights}
    out = {}
    for w in weights:
        scale = None if w.scale is None else prefix + w.scale
        out[prefix + w.weight] = dataclasses.replace(w, weight=prefix + w.weight, scale=scale)
    return out


def _result_like(like: Any) -> Callable[[Any, Any], Any]:
    """How a filled value is stored: like `like`'s leaf (numpy stays numpy, else a jax array)."""

    def place(value: Any, leaf: Any) -> Any:
        if isinstance(leaf, np.ndarray):
            return value
        import jax.numpy as jnp

        return jnp.asarray(value)

    return place


def _read_linen(obj: Any, example: Any) -> ModelView:
    from ..adapters import linen as adapter

    trace = None
    if isinstance(obj, ModelTrace):
        trace = obj
    elif _is_instance(obj, "flax.linen", "Module"):
        trace = adapter.trace(obj, *_example_args(obj, example))
    variables = trace.variables if trace is not None else obj
    if not isinstance(variables, Mapping):
        raise TypeError(
            "A Linen source or `like` must be its variables (a dict, as `model.init` returns), "
            f"a Linen module with `example=`, or `weightnorm.adapters.linen.trace(...)`, got "
            f"{type(obj).__name__}."
        )
    flat = core.flatten(variables)
    has_collections = "params" in variables
    prefix = "params/" if has_collections else ""
    weights = trace.weight_norms if trace is not None else adapter.weight_norms(variables)
    records = _keyed(weights, prefix)
    hidden = _hidden(_keyed(weights))
    place = _result_like(None)
    kinds, order = {}, None
    if trace is not None:
        kinds = {
            path: kind for path, cls in trace.modules.items() if (kind := LINEN.kind_of_type(cls))
        }
        order = {path: i for i, path in enumerate(trace.modules)}

    def rebuild(new: dict[str, Any]) -> Any:
        filled = core.unflatten({k: place(new[k], v) for k, v in flat.items()}, like=variables)
        return dataclasses.replace(obj, variables=filled) if isinstance(obj, ModelTrace) else filled

    return ModelView(
        "linen",
        flat,
        _specs(flat),
        _slash_locate(1 if has_collections else 0),
        kinds,
        records,
        hidden,
        order,
        rebuild,
        "call",
    )


def _read_haiku(obj: Any, example: Any) -> ModelView:
    from ..adapters import haiku as adapter

    trace = None
    if isinstance(obj, ModelTrace):
        trace = obj
    elif _is_instance(obj, "haiku", "Transformed") or _is_instance(
        obj, "haiku", "TransformedWithState"
    ):
        trace = adapter.trace(obj, *_example_args(obj, example))
    params = trace.variables if trace is not None else obj
    if not isinstance(params, Mapping):
        raise TypeError(
            "A Haiku source or `like` must be its params, an `hk.transform`ed function with "
            f"`example=`, or `weightnorm.adapters.haiku.trace(...)`, got {type(obj).__name__}."
        )
    flat = core.flatten(params)
    weights = trace.weight_norms if trace is not None else adapter.weight_norms(params)
    kinds, order = {}, None
    if trace is not None:
        kinds = {
            path: kind for path, cls in trace.modules.items() if (kind := HAIKU.kind_of_type(cls))
        }
        order = {path: i for i, path in enumerate(trace.modules)}
    place = _result_like(None)

    def rebuild(new: dict[str, Any]) -> Any:
        filled = core.unflatten({k: place(new[k], v) for k, v in flat.items()}, like=params)
        return dataclasses.replace(obj, variables=filled) if isinstance(obj, ModelTrace) else filled

    return ModelView(
        "haiku",
        flat,
        _specs(flat),
        _slash_locate(0),
        kinds,
        _keyed(weights),
        _hidden(_keyed(weights)),
        order,
        rebuild,
        "call",
    )


def _example_args(model: Any, example: Any) -> tuple[Any, ...]:
    if example is None:
        raise TypeError(
            f"A {type(model).__name__} as `like` needs `example=` (an input, or a tuple of "
            "inputs) to trace it with; or pass its variables/params."
        )
    return example if isinstance(example, tuple) else (example,)


def _is_instance(obj: Any, module: str, name: str) -> bool:
    """`isinstance(obj, module.name)` without importing `module` unless it is loaded."""
    import sys

    loaded = sys.modules.get(module)
    return loaded is not None and isinstance(obj, getattr(loaded, name))


def _tree_order(paths: Any) -> dict[str, int]:
    return {path: i for i, path in enumerate(dict.fromkeys(paths))}


def _read_equinox(module: Any, example: Any) -> ModelView:
    import equinox as eqx
    import jax

    from ..adapters import equinox as adapter

    if not isinstance(module, eqx.Module) and not isinstance(module, (list, tuple, dict)):
        raise TypeError(
            f"An Equinox source or `like` must be a module, got {type(module).__name__}."
        )
    kinds = {}
    classes = EQUINOX.layer_classes()
    nodes = jax.tree_util.tree_flatten_with_path(module, is_leaf=lambda n: isinstance(n, classes))
    for path, node in nodes[0]:
        kind = EQUINOX.kind_of(node)
        if kind is None:
            continue
        name = core.path_key(path)
        if kind == "conv_transpose" and node.groups != 1:
            raise PortError(
                f"{_where(name)} is a grouped transposed convolution (groups={node.groups}); "
                "only groups=1 can be ported."
            )
        kinds[name] = kind
    flat = adapter.flatten(module)
    weights = _keyed(adapter.weight_norms(module))

    def rebuild(new: dict[str, Any]) -> Any:
        import jax.numpy as jnp

        return adapter.unflatten({key: jnp.asarray(new[key]) for key in flat}, like=module)

    locate = _slash_locate(0)
    return ModelView(
        "equinox",
        flat,
        _specs(flat),
        locate,
        kinds,
        weights,
        _hidden(weights),
        _tree_order(locate(key)[0] for key in flat),
        rebuild,
    )


def _read_nnx(obj: Any, example: Any) -> ModelView:
    import jax.numpy as jnp
    from flax import nnx

    from ..adapters import nnx as adapter

    kinds: dict[str, str] = {}
    if isinstance(obj, nnx.Module):
        for path, node in nnx.iter_graph(obj):
            name = "/".join(map(str, path))
            if isinstance(node, getattr(nnx, "WeightNorm", ())):
                raise PortError(
                    f"{name or 'The model'!r} is a flax.nnx.WeightNorm, which cannot be ported: "
                    "it overwrites its layer's kernel with the normalized weight at every call, "
                    "so its kernel and scale no longer say what the layer computes. Wrap the "
                    "layer in weightnorm.adapters.nnx.WeightNorm instead: same arguments and "
                    "outputs, and its layer keeps the direction."
                )
            if isinstance(node, adapter.WeightNorm) and not node.config.use_scale:
                layer = adapter.flatten(nnx.state(node.layer_instance, nnx.Param))
                selected = core.select(layer, node.config.variable_filter)
                if selected:
                    raise PortError(
                        f"{_where(name)} is a weightnorm NNX WeightNorm with use_scale=False: "
                        f"it computes v / ||v|| for {sorted(selected)}, and with no scale to "
                        "hold a weight's norm no port can keep what it computes. Port into or "
                        "from a wrapper with use_scale=True (`weightnorm.adapters.nnx.unfold("
                        "layer)` makes one from a plain layer)."
                    )
            kind = NNX.kind_of(node)
            if kind is not None:
                kinds[name] = kind
        # Every variable but the random streams' keys and counts: params, batch
        # statistics, and buffers of the user's own Variable types.
        graphdef, state, rest = nnx.split(obj, nnx.Not(nnx.RngState), ...)

        def rebuild_state(new_state: Any) -> Any:
            # Every other variable (rng keys and counts) is copied: the result shares
            # no variable with `like`.
            return nnx.merge(graphdef, new_state, rest, copy=True)

    elif isinstance(obj, nnx.State):
        state = obj

        def rebuild_state(new_state: Any) -> Any:
            return new_state

    else:
        raise TypeError(
            f"An NNX source or `like` must be an nnx.Module or an nnx.State, got "
            f"{type(obj).__name__}."
        )
    variables = list(nnx.to_flat_state(state))
    flat = {"/".join(map(str, path)): var.get_value() for path, var in variables}
    weights = _keyed(adapter.weight_norms(obj))
    weights = {key: w for key, w in weights.items() if key in flat}

    def rebuild(new: dict[str, Any]) -> Any:
        pairs = [
            (path, var.replace(jnp.asarray(new["/".join(map(str, path))])))
            for path, var in variables
        ]
        return rebuild_state(nnx.from_flat_state(pairs))

    locate = _slash_locate(0)
    order = _tree_order(locate(key)[0] for key in flat) if isinstance(obj, nnx.Module) else None
    return ModelView(
        "nnx", flat, _specs(flat), locate, kinds, weights, _hidden(weights), order, rebuild
    )


_WN_NEW = re.compile(r"^(?:(.*)\.)?parametrizations\.(\w+)\.original([01])$")
_WN_OLD = re.compile(r"^(?:(.*)\.)?(\w+)_([gv])$")


def torch_split(key: str) -> tuple[str, str, str | None]:
    """A torch state-dict key as (module path, parameter name, weight-norm part or None).

    Examples:
      >>> torch_split("ups.0.parametrizations.weight.original0")
      ('ups.0', 'weight', 'g')
      >>> torch_split("conv.weight_v"), torch_split("fc.bias")
      (('conv', 'weight', 'v'), ('fc', 'bias', None))
    """
    match = _WN_NEW.match(key)
    if match:
        return match.group(1) or "", match.group(2), "gv"[int(match.group(3))]
    match = _WN_OLD.match(key)
    if match:
        return match.group(1) or "", match.group(2), match.group(3)
    path, _, name = key.rpartition(".")
    return path, name, None


def _torch_weight_norms(
    specs: Mapping[str, tuple[tuple[int, ...], np.dtype]],
) -> tuple[dict[str, NormalizedWeight], dict[str, tuple[str, str]]]:
    """torch's weight norms, `{v key: record}`, and `{key: (module, name)}` of every key.

    Both torch APIs are read (`weight_g`/`weight_v`, and `parametrizations.weight.
    original0/1`); the feature axes come from `g`, which keeps the reduced axes as
    size 1, so they are exact.
    """
    parts: dict[tuple[str, str], dict[str, list[str]]] = {}
    where: dict[str, tuple[str, str]] = {}
    for key in specs:
        path, name, part = torch_split(key)
        if part is not None and not key.endswith(f"{name}_{part}") and ".original" not in key:
            part = None
        if part is None:
            path, _, name = key.rpartition(".")
        parts.setdefault((path, name), {}).setdefault(part or "w", []).append(key)
        where[key] = (path, name)
    problems, records = [], {}
    for (path, name), found in parts.items():
        styles = {k: ks for k, ks in found.items() if k in ("g", "v")}
        if not styles:
            continue
        if any(len(keys) > 1 for keys in found.values()) or "w" in found:
            problems.append(
                f"{sorted(k for keys in found.values() for k in keys)} hold the same parameter "
                f"{name!r} of {repr(path) if path else 'the top-level module'} twice (both "
                "weight-norm APIs, or a plain weight "
                "beside a weight-normed one); keep one"
            )
            continue
        if set(styles) != {"g", "v"}:
            have = found.get("g", found.get("v"))[0]
            missing = "direction v" if "v" not in styles else "magnitude g"
            problems.append(f"{have!r} has no {missing} beside it: a weight norm needs both")
            continue
        g, v = found["g"][0], found["v"][0]
        g_shape, v_shape = specs[g][0], specs[v][0]
        if g_shape == ():
            axes: tuple[int, ...] = ()
        elif len(g_shape) == len(v_shape) and all(
            a in (1, b) for a, b in zip(g_shape, v_shape, strict=True)
        ):
            axes = tuple(i for i, size in enumerate(g_shape) if size != 1)
            if len(axes) > 1:
                problems.append(
                    f"weight-norm magnitude {g!r} of shape {g_shape} keeps several axes of "
                    f"{v!r} {v_shape}; torch's weight norm keeps one (`dim`)"
                )
                continue
            if not axes:  # g is all ones in shape: any axis where v has size 1 keeps it
                axes = next(((i,) for i, size in enumerate(v_shape) if size == 1), ())
        else:
            problems.append(
                f"weight-norm magnitude {g!r} has shape {g_shape}, which does not fit its "
                f"direction {v!r} of shape {v_shape}: expected the direction's rank with size 1 "
                "at the reduced axes"
            )
            continue
        # torch divides by the bare norm: no epsilon for the other side to match, so
        # copying g and v into a wrapper with the default epsilon agrees to rounding.
        records[v] = NormalizedWeight(v, g, path, path, axes, None)
        where[v] = where[g] = (path, name)
    if problems:
        raise PortError("Cannot read the torch weight norms:\n  - " + "\n  - ".join(problems))
    return records, where


def _read_torch(obj: Any, example: Any) -> ModelView:
    kinds: dict[str, str] = {}
    order: dict[str, int] | None = None
    if isinstance(obj, Mapping):
        state = obj
        if isinstance(obj, Checkpoint):
            ordered = obj.ordered
            kinds = dict(obj.provenance.get("layers", {}))  # a file weightnorm wrote says them
        else:
            # `state_dict()` and `torch.load` give OrderedDicts in declaration order; a
            # plain dict (a dict comprehension, a safetensors file) says no order.
            ordered = isinstance(obj, collections.OrderedDict)
        module = None
    else:
        torch = import_torch()
        if not isinstance(obj, torch.nn.Module):
            raise TypeError(
                "A torch source or `like` must be a state dict {name: tensor or array}, a "
                "checkpoint from `load_checkpoint`, or a torch.nn.Module, got "
                f"{type(obj).__name__}."
            )
        for name, submodule in obj.named_modules():
            kind = TORCH.kind_of(submodule)
            if kind == "conv_transpose" and submodule.groups != 1:
                raise PortError(
                    f"{_where(name)} is a grouped transposed convolution (groups="
                    f"{submodule.groups}); only groups=1 can be ported."
                )
            if kind is not None:
                kinds[name] = kind
        state, ordered, module = obj.state_dict(), True, obj
    for key in state:
        if not isinstance(key, str):
            raise TypeError(f"State-dict keys must be strings, got {key!r}.")
    flat = state if isinstance(state, Checkpoint) else _TorchValues(state)
    specs = _specs(flat)
    weights, where = _torch_weight_norms(specs)
    if ordered:
        order = _tree_order(where[key][0] for key in state)

    def rebuild(new: dict[str, Any]) -> Any:
        if module is None:
            return {key: np.array(new[key]) for key in state}
        torch = import_torch()
        copied = _deepcopy_module(module)
        copied.load_state_dict({key: _to_torch(torch, new[key]) for key in state})
        return copied

    return ModelView(
        "torch",
        flat,
        specs,
        lambda key: where[key],
        kinds,
        weights,
        frozenset(),
        order,
        rebuild,
    )


class _TorchValues(Mapping):
    """A state dict's values as numpy arrays (bfloat16 and float8 too), converted when read."""

    def __init__(self, state: Mapping[str, Any]) -> None:
        self._state = state

    def __getitem__(self, key: str) -> Any:
        value = self._state[key]
        return torch_to_numpy(value) if type(value).__module__.startswith("torch") else value

    def __iter__(self) -> Any:
        return iter(self._state)

    def __len__(self) -> int:
        return len(self._state)


def _to_torch(torch: Any, value: Any) -> Any:
    from ._checkpoint import numpy_to_torch

    return numpy_to_torch(np.array(value))


def _deepcopy_module(module: Any) -> Any:
    """A copy of a torch module sharing no tensor with it.

    The old weight-norm API (`torch.nn.utils.weight_norm`) keeps the computed
    `weight` as a plain attribute, a non-leaf tensor that `copy.deepcopy`
    refuses; it is copied detached (its hook recomputes it at the next call).
    """
    memo: dict[int, Any] = {}
    for submodule in module.modules():
        for value in vars(submodule).values():
            if (
                type(value).__module__.startswith("torch")
                and getattr(value, "is_leaf", True) is False
            ):
                memo[id(value)] = value.detach().clone()
    return copy.deepcopy(module, memo)


def _read_checkpoint_as(framework: str) -> Callable[[Any, Any], ModelView]:
    """A reader of flat files in `framework`'s names and layouts, as the CLI writes them."""

    def read(obj: Any, example: Any) -> ModelView:
        provenance = obj.provenance
        weights = {
            w["weight"]: NormalizedWeight(
                w["weight"],
                w.get("scale"),
                w.get("layer", w["weight"].rsplit("/", 1)[0]),
                w.get("wrapper", w["weight"].rsplit("/", 1)[0]),
                None if w.get("feature_axes") is None else tuple(w["feature_axes"]),
                w.get("epsilon"),
            )
            for w in provenance.get("weight_norms", [])
        }
        kinds = dict(provenance.get("layers", {}))
        skip = int(provenance.get("collections", 0))  # Linen variables keep `params/` first
        locate = _slash_locate(skip)
        order = _tree_order(locate(key)[0] for key in obj) if obj.ordered else None
        prefix = "/".join(next(iter(obj), "").split("/")[:skip])
        unprefixed = {  # wrappers and layers are module paths, without the collection
            key: dataclasses.replace(w, weight=w.weight.removeprefix(f"{prefix}/"))
            for key, w in weights.items()
        }
        hidden = _hidden(unprefixed)
        return ModelView(
            framework,
            obj,
            _specs(obj),
            locate,
            kinds,
            weights,
            hidden,
            order,
            lambda new: dict(new),
            provenance.get("order_kind", "declaration"),
        )

    return read


def _where(path: str) -> str:
    """A module path for messages; the model itself has the empty path."""
    return repr(path) if path else "The top-level module"


# --- the registry --------------------------------------------------------------------------

LINEN = Framework("linen", -1, 1e-12, _FLAX_LAYOUTS, _LINEN_CLASSES, _LINEN_NAMES, _read_linen)
NNX = Framework("nnx", -1, 1e-12, _FLAX_LAYOUTS, _NNX_CLASSES, {}, _read_nnx)
HAIKU = Framework(
    "haiku",
    -1,
    1e-12,
    _HAIKU_LAYOUTS,
    (
        ("conv_transpose", "haiku:ConvNDTranspose"),
        ("conv", "haiku:ConvND"),
        ("dense", "haiku:Linear"),
        ("embed", "haiku:Embed"),
        ("layer_norm", "haiku:LayerNorm"),
        ("group_norm", "haiku:GroupNorm"),
        ("rms_norm", "haiku:RMSNorm"),
    ),
    {
        "linear": "dense",
        "conv1_d": "conv",
        "conv2_d": "conv",
        "conv3_d": "conv",
        "conv_nd": "conv",
        "conv1_d_transpose": "conv_transpose",
        "conv2_d_transpose": "conv_transpose",
        "conv3_d_transpose": "conv_transpose",
        "conv_nd_transpose": "conv_transpose",
        "embed": "embed",
        "layer_norm": "layer_norm",
        "group_norm": "group_norm",
        "rms_norm": "rms_norm",
    },
    _read_haiku,
)
EQUINOX = Framework(
    "equinox",
    0,
    1e-12,
    _EQUINOX_LAYOUTS,
    (
        ("conv_transpose", "equinox.nn:ConvTranspose"),
        ("conv", "equinox.nn:Conv"),
        ("dense", "equinox.nn:Linear"),
        ("embed", "equinox.nn:Embedding"),
        ("layer_norm", "equinox.nn:LayerNorm"),
        ("group_norm", "equinox.nn:GroupNorm"),
        ("rms_norm", "equinox.nn:RMSNorm"),
        ("batch_norm", "equinox.nn:BatchNorm"),  # its statistics are state: refused as such
    ),
    {},
    _read_equinox,
)
TORCH = Framework(
    "torch",
    0,
    0.0,
    _TORCH_LAYOUTS,
    (
        ("conv_transpose", "torch.nn.modules.conv:_ConvTransposeNd"),
        ("conv", "torch.nn.modules.conv:_ConvNd"),
        ("dense", "torch.nn:Linear"),
        ("embed", "torch.nn:Embedding"),
        ("layer_norm", "torch.nn:LayerNorm"),
        ("group_norm", "torch.nn:GroupNorm"),
        ("rms_norm", "torch.nn:RMSNorm"),
        ("batch_norm", "torch.nn.modules.batchnorm:_BatchNorm"),
    ),
    {},
    _read_torch,
    separator=".",
)

#: Every framework the port knows, by the name `src=`/`dst=` take.
FRAMEWORKS: dict[str, Framework] = {f.name: f for f in (LINEN, NNX, HAIKU, EQUINOX, TORCH)}


def read_model(obj: Any, framework: str, argument: str, example: Any = None) -> ModelView:
    """The port's view of a model: its leaves flat, their layers, weight norms and order.

    What `convert` reads both sides with; `weightnorm.testing` builds on it too.

    Args:
      obj: a model or params of `framework`, or a `Checkpoint`.
      framework: a name of `FRAMEWORKS`.
      argument: how errors name `obj` (`"src"`, `"dst"`).
      example: inputs to trace a Linen module or Haiku function with.

    Returns:
      A `ModelView`.

    Raises:
      ValueError: for an unknown framework.
      TypeError: when `obj` is not a model of `framework`, or is None.

    Examples:
      >>> import numpy as np
      >>> view = read_model({"fc.weight": np.ones((3, 2)), "fc.bias": np.zeros(3)}, "torch", "src")
      >>> sorted(view.flat), view.order is None  # a plain dict keeps no order of its own
      (['fc.bias', 'fc.weight'], True)
    """
    if framework not in FRAMEWORKS:
        raise ValueError(f"`{argument}` must be one of {list(FRAMEWORKS)}, got {framework!r}.")
    if obj is None:
        raise TypeError(
            f"The {'source' if argument == 'src' else 'destination (`like`)'} is None; pass a "
            f"{framework} model or its params."
        )
    if isinstance(obj, Checkpoint) and framework != "torch":
        return _read_checkpoint_as(framework)(obj, example)
    return FRAMEWORKS[framework].read(obj, example)
