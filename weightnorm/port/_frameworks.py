"""Each framework's parameters as one flat dict, and back into the framework's structure.

Frameworks are imported lazily, only when their objects are ported, so
`weightnorm.port` imports with jax alone.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .. import core
from ..core._config import resolve_feature_axes
from ..core._layouts import FRAMEWORKS
from ._layers import PortError

__all__ = ["Model", "read_model", "torch_split", "import_torch", "slash_split"]


@dataclasses.dataclass
class Model:
    """One framework's parameters, flat, with what is needed to read and rebuild them."""

    framework: str
    flat: dict[str, Any]
    split: Callable[[str], tuple[str, str, str | None]]
    kind_hints: dict[str, str]
    scale_of: dict[str, str]
    natural_order: bool
    rebuild: Callable[[dict[str, Any]], Any]
    scale_axes: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)
    #: scale key -> the epsilon of the wrapper holding it, where the model records it.
    scale_epsilon: dict[str, float] = dataclasses.field(default_factory=dict)


def import_torch() -> Any:
    try:
        import torch
    except ImportError as error:  # pragma: no cover - exercised with torch hidden
        raise ImportError(
            "Porting PyTorch modules and `.pt`/`.bin` files needs torch: "
            "pip install 'weightnorm[torch]'"
        ) from error
    return torch


def slash_split(has_collections: bool) -> Callable[[str], tuple[str, str, str | None]]:
    def split(key: str) -> tuple[str, str, str | None]:
        parts = key.split("/")
        if has_collections:
            parts = parts[1:]
        return "/".join(parts[:-1]), parts[-1], None

    return split


def _attach_scales(flat: Mapping[str, Any]) -> dict[str, str]:
    """`{scale key: variable key}` for the weight-norm scales of the JAX wrappers.

    A scale `X/scale` belongs to the variable `X` (Linen at top level), to `X`
    less one segment (Linen: `WeightNorm_0/Dense_0/kernel` scales
    `Dense_0/kernel`), to a suffix of `X` (Haiku: `weight_norm/linear/w`) or to
    `X` with its `scales` segment read as `layer` (Equinox) or `layer_instance`
    (an NNX state: `0/scales/kernel/scale` scales `0/layer_instance/kernel`).
    """
    found = {}
    for key in flat:
        if not key.endswith(core.SCALE_SUFFIX):
            continue
        target = key[: -len(core.SCALE_SUFFIX)]
        parts = target.split("/")
        candidates = {target} | {
            "/".join(parts[:i] + parts[i + 1 :]) for i in range(len(parts) - 1)
        }
        candidates |= {"/".join(parts[i:]) for i in range(1, len(parts))}
        candidates |= {
            "/".join([*parts[:i], layer, *parts[i + 1 :]])
            for i, part in enumerate(parts)
            for layer in ("layer", "layer_instance")
            if part == "scales"
        }
        matches = sorted(candidates & (set(flat) - {key}))
        if len(matches) > 1:
            raise PortError(
                f"Weight-norm scale {key!r} could belong to any of {matches}. Rename the "
                "layers so that one variable is named by the scale."
            )
        if matches:
            found[key] = matches[0]
    return found


def _where(path: str) -> str:
    """A module path for messages; the model itself has the empty path."""
    return repr(path) if path else "The top-level module"


def _numpy(value: Any) -> Any:
    if type(value).__module__.startswith("torch"):
        return value.detach().cpu().numpy()
    return value


def _dict_order_lost(flat: Mapping[str, Any]) -> bool:
    """Whether a dict's keys are in plain sorted order (as after any pytree op)."""
    keys = list(flat)
    return keys == sorted(keys)


def _read_linen(variables: Any) -> Model:
    flat = core.flatten(variables)
    has_collections = "params" in variables
    return Model(
        "linen",
        flat,
        slash_split(has_collections),
        {},
        _attach_scales(flat),
        _dict_order_lost(flat),
        lambda new: core.unflatten(new, like=variables),
    )


def _read_haiku(params: Any) -> Model:
    flat = core.flatten(params)
    return Model(
        "haiku",
        flat,
        slash_split(False),
        {},
        _attach_scales(flat),
        _dict_order_lost(flat),
        lambda new: core.unflatten(new, like=params),
    )


def _read_equinox(module: Any) -> Model:
    import equinox as eqx
    import jax

    from ..adapters import equinox as adapter

    types = [
        (eqx.nn.ConvTranspose, "conv_transpose"),
        (eqx.nn.Conv, "conv"),
        (eqx.nn.Linear, "dense"),
        (eqx.nn.Embedding, "embed"),
        (eqx.nn.LayerNorm, "layer_norm"),
        (eqx.nn.GroupNorm, "group_norm"),
        (eqx.nn.RMSNorm, "rms_norm"),
        (eqx.nn.BatchNorm, "batch_norm"),
    ]
    classes = tuple(cls for cls, _ in types)
    hints = {}
    nodes = jax.tree_util.tree_flatten_with_path(module, is_leaf=lambda n: isinstance(n, classes))
    for path, node in nodes[0]:
        for cls, kind in types:
            if isinstance(node, cls):
                name = core._tree.path_key(path)
                hints[name] = kind
                if kind == "conv_transpose" and node.groups != 1:
                    raise PortError(
                        f"{_where(name)} is a grouped transposed convolution (groups="
                        f"{node.groups}); only groups=1 can be ported."
                    )
                break
    flat = adapter.flatten(module)
    # Each wrapper's own feature axes and epsilon, read from its config (not guessed
    # from the scale's shape): its scale `P/scales/X/scale` goes with `P/layer/X`.
    axes: dict[str, tuple[int, ...]] = {}
    epsilons: dict[str, float] = {}
    is_wrapper = lambda node: isinstance(node, adapter.WeightNorm)  # noqa: E731
    for path, node in jax.tree_util.tree_flatten_with_path(module, is_leaf=is_wrapper)[0]:
        if not is_wrapper(node):
            continue
        prefix = core._tree.path_key(path)
        for scale in node.scales:
            key = "/".join(filter(None, (prefix, "scales", scale)))
            variable = "/".join(
                filter(None, (prefix, "layer", scale.removesuffix(core.SCALE_SUFFIX)))
            )
            if key in flat and variable in flat:
                axes[key] = resolve_feature_axes(
                    variable, tuple(flat[variable].shape), node.config.feature_axes
                )
                epsilons[key] = float(node.config.epsilon)
    return Model(
        "equinox",
        flat,
        slash_split(False),
        hints,
        _attach_scales(flat),
        False,
        lambda new: adapter.unflatten(new, like=module),
        axes,
        epsilons,
    )


def _nnx_wrappers(
    module: Any, flat: Mapping[str, Any]
) -> tuple[dict[str, str], dict[str, tuple[int, ...]], dict[str, float]]:
    """Scales, feature axes and epsilons of the weightnorm NNX wrappers in `module`.

    Read from each wrapper itself: its scale `P/scales/X/scale` belongs to
    `P/layer_instance/X`, over the axes and with the epsilon of its config.
    flax's own `nnx.WeightNorm` is refused: it writes the normalized weight
    into its layer's kernel at every call, so the kernel it holds is not the
    direction its scale goes with.
    """
    from flax import nnx

    from ..adapters import nnx as adapter

    scale_of: dict[str, str] = {}
    axes: dict[str, tuple[int, ...]] = {}
    epsilons: dict[str, float] = {}
    for path, node in nnx.iter_graph(module):
        prefix = [str(part) for part in path]
        if isinstance(node, getattr(nnx, "WeightNorm", ())):
            raise PortError(
                f"{'/'.join(prefix) or 'The model'!r} is a flax.nnx.WeightNorm, which "
                "cannot be ported: it overwrites its layer's kernel with the normalized "
                "weight at every call, so its kernel and scale no longer say what the "
                "layer computes. Wrap the layer in weightnorm.adapters.nnx.WeightNorm "
                "instead: same arguments and outputs, and its layer keeps the direction."
            )
        if not isinstance(node, adapter.WeightNorm):
            continue
        if not node.config.use_scale:
            layer = adapter.flatten(nnx.state(node.layer_instance, nnx.Param))
            selected = core.select(layer, node.config.variable_filter)
            if selected:
                raise PortError(
                    f"{_where('/'.join(prefix))} is a weightnorm NNX WeightNorm with "
                    f"use_scale=False: it computes v / ||v|| for {sorted(selected)}, and "
                    "with no scale to hold a weight's norm no port can keep what it "
                    "computes. Port into or from a wrapper with use_scale=True "
                    "(`weightnorm.adapters.nnx.unfold(layer)` makes one from a plain layer)."
                )
        for scale in node.scales:
            inner = scale.removesuffix(core.SCALE_SUFFIX)
            key = "/".join([*prefix, "scales", scale])
            variable = "/".join([*prefix, "layer_instance", inner])
            if key not in flat or variable not in flat:
                continue  # not among the ported variables
            scale_of[key] = variable
            axes[key] = resolve_feature_axes(
                variable, tuple(flat[variable].shape), node.config.feature_axes
            )
            epsilons[key] = float(node.config.epsilon)
    return scale_of, axes, epsilons


def _read_nnx(obj: Any) -> Model:
    from flax import nnx

    kinds = [
        (nnx.ConvTranspose, "conv_transpose"),
        (nnx.Conv, "conv"),
        (nnx.Linear, "dense"),
        (nnx.Embed, "embed"),
        (nnx.LayerNorm, "layer_norm"),
        (nnx.GroupNorm, "group_norm"),
        (nnx.RMSNorm, "rms_norm"),
        (nnx.BatchNorm, "batch_norm"),
    ]
    hints: dict[str, str] = {}
    if isinstance(obj, nnx.Module):
        graphdef, state, rest = nnx.split(obj, (nnx.Param, nnx.BatchStat), ...)
        for path, node in nnx.iter_graph(obj):
            kind = next((k for cls, k in kinds if isinstance(node, cls)), None)
            if kind is not None:
                hints["/".join(map(str, path))] = kind

        def rebuild_state(new_state: Any) -> Any:
            return nnx.merge(graphdef, new_state, rest)

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
    if isinstance(obj, nnx.Module):
        scale_of, axes, epsilons = _nnx_wrappers(obj, flat)
    else:  # a bare state says neither axes nor epsilons: the defaults are assumed
        scale_of, axes, epsilons = _attach_scales(flat), {}, {}

    def rebuild(new: dict[str, Any]) -> Any:
        pairs = [(path, var.replace(new["/".join(map(str, path))])) for path, var in variables]
        return rebuild_state(nnx.from_flat_state(pairs))

    return Model("nnx", flat, slash_split(False), hints, scale_of, False, rebuild, axes, epsilons)


_WN_NEW = re.compile(r"^(?:(.*)\.)?parametrizations\.(\w+)\.original([01])$")
_WN_OLD = re.compile(r"^(?:(.*)\.)?(weight|bias)_([gv])$")


def torch_split(key: str) -> tuple[str, str, str | None]:
    """A torch state-dict key as (module path, leaf name, weight-norm part or None).

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


def _read_torch(obj: Any) -> Model:
    hints: dict[str, str] = {}
    if isinstance(obj, Mapping):
        state = dict(obj)

        def rebuild(new: dict[str, Any]) -> Any:
            return {key: new[key] for key in state}

    else:
        torch = import_torch()
        if not isinstance(obj, torch.nn.Module):
            raise TypeError(
                "A torch source or `like` must be a state dict {name: tensor or array} "
                f"or a torch.nn.Module, got {type(obj).__name__}."
            )
        nn = torch.nn
        kinds = [
            (nn.modules.conv._ConvTransposeNd, "conv_transpose"),
            (nn.modules.conv._ConvNd, "conv"),
            (nn.Linear, "dense"),
            (nn.Embedding, "embed"),
            (nn.LayerNorm, "layer_norm"),
            (nn.GroupNorm, "group_norm"),
            (nn.RMSNorm, "rms_norm"),
            (nn.modules.batchnorm._BatchNorm, "batch_norm"),
        ]
        for name, module in obj.named_modules():
            kind = next((k for cls, k in kinds if isinstance(module, cls)), None)
            if kind == "conv_transpose" and module.groups != 1:
                raise PortError(
                    f"{_where(name)} is a grouped transposed convolution (groups="
                    f"{module.groups}); only groups=1 can be ported."
                )
            if kind is not None:
                hints[name] = kind
        state = obj.state_dict()
        module = obj

        def rebuild(new: dict[str, Any]) -> Any:
            copied = copy.deepcopy(module)
            copied.load_state_dict({key: torch.from_numpy(np.array(new[key])) for key in state})
            return copied

    flat = {key: _numpy(value) for key, value in state.items()}
    for key in flat:
        if not isinstance(key, str):
            raise TypeError(f"State-dict keys must be strings, got {key!r}.")
    return Model("torch", flat, torch_split, hints, {}, False, rebuild)


_READERS = {
    "linen": _read_linen,
    "haiku": _read_haiku,
    "equinox": _read_equinox,
    "nnx": _read_nnx,
    "torch": _read_torch,
}


def read_model(obj: Any, framework: str, argument: str) -> Model:
    """The flat view of `obj`, whose parameters are in `framework`'s form."""
    if framework not in _READERS:
        raise ValueError(f"`{argument}` must be one of {list(FRAMEWORKS)}, got {framework!r}.")
    return _READERS[framework](obj)
