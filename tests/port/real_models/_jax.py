"""One spec tree (`_spec`) made into a Linen, Haiku, Equinox or NNX model, named two ways.

`build(spec, forward, framework, naming, example)` makes the model and
returns `(like, apply_channels_last, extras)`. Each architecture's forward
is written once, channels-last, against `Ops` (how this framework calls a
sequence layer, a per-vector layer, and reads a bare array), and reads its
layers by torch's names: `layers.resblocks[0].convs1[2]`. With naming
"mirror" `layers` is the model itself, whose attributes mirror torch's; with
"plain" it is a `Bunch` over the flat, auto-named layers.

Weight norm uses weightnorm's own wrappers on exactly the layers torch
weight-norms, over torch's `dim` translated into the framework's layout.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Mapping
from typing import Any

import equinox as eqx
import flax.linen as nn
import haiku as hk
import jax
import jax.numpy as jnp
from flax import nnx

from weightnorm.adapters import equinox as we
from weightnorm.adapters import haiku as wh
from weightnorm.adapters import linen as wl
from weightnorm.adapters import nnx as wn

from ._spec import (
    LAYERS,
    Array,
    Conv,
    ConvTranspose,
    GroupNorm,
    LayerNorm,
    Linear,
    Module,
    ModuleList,
    Snake,
    nest,
    torch_path,
    walk,
)

FRAMEWORKS = ("linen", "haiku", "equinox", "nnx")
NAMINGS = ("mirror", "plain")

#: The layout-table kind of each layer spec (`weightnorm.port.LAYOUTS`).
KIND = {
    Conv: "conv",
    ConvTranspose: "conv_transpose",
    Linear: "dense",
    LayerNorm: "layer_norm",
    GroupNorm: "group_norm",
}


@dataclasses.dataclass(frozen=True)
class ExtraLeaf:
    """A tensor that is no layer's (DAC's snake `alpha`, HiFi-GAN's `mean`/`scale`).

    Attributes:
      torch_key: its torch state-dict key.
      path: where the JAX model holds it: dict keys (Linen: collection first;
        Haiku: module name, parameter name) or attribute names and list
        indices (Equinox, NNX).
      shape: its shape there (e.g. `alpha` (1, C, 1) in torch is (C,) in the
        channels-last frameworks, (C, 1) in Equinox).
    """

    torch_key: str
    path: tuple[Any, ...]
    shape: tuple[int, ...]

    @property
    def key(self) -> str:
        """The `/`-joined path: the flat key `weightnorm` gives it."""
        return "/".join(str(part) for part in self.path)


@dataclasses.dataclass(frozen=True)
class Extras:
    """What the tests need besides `like` and `apply`.

    Attributes:
      framework, naming: what was built.
      module: the model itself: the Linen `nn.Module`, the Haiku
        `hk.Transformed`, the Equinox module (concrete, also `like`), the NNX
        module (concrete, also `like`).
      abstract: the model with shapes only (`jax.ShapeDtypeStruct` leaves):
        Equinox via `eqx.filter_eval_shape`, NNX via `nnx.eval_shape`; None
        for Linen and Haiku (whose `like` is already `jax.eval_shape` of `init`).
      example: an input of the module's own call, channels-last and batched
        (`module.init(key, example)`), for `like=module, example=example`.
      layers: torch layer path -> this model's layer path, as `convert` names
        layer paths (`conv_pre` -> `conv_pre/layer_instance`, `Conv_0`, ...),
        in torch declaration order.
      kinds: this model's layer path -> layout kind (`conv`, `conv_transpose`...).
      feature_axes: flat key of each weight-normed variable -> its feature
        axes in this framework's layout (Linen/Haiku scales store sizes only).
      leaves: the tensors of no layer kind.
    """

    framework: str
    naming: str
    module: Any
    abstract: Any
    example: Any
    layers: dict[str, str]
    kinds: dict[str, str]
    feature_axes: dict[str, tuple[int, ...]]
    leaves: tuple[ExtraLeaf, ...]


# --- shared math -----------------------------------------------------------------------------


def snake(x: Any, alpha: Any) -> Any:
    """DAC's Snake1d on a channels-last `x`, `alpha` broadcasting over the channel axis."""
    return x + jnp.reciprocal(alpha + 1e-9) * jnp.sin(alpha * x) ** 2


def leaky_relu(x: Any, slope: float) -> Any:
    return jnp.where(x >= 0, x, slope * x)


@dataclasses.dataclass(frozen=True)
class Ops:
    """How a framework runs layers on channels-last signals `(..., time, channels)`.

    Attributes:
      seq: a convolution, group norm or snake on the whole signal.
      vec: a dense layer or layer norm on each time step.
      value: a bare array (`Array` leaf) as a jax array.
    """

    seq: Callable[[Any, Any], Any]
    vec: Callable[[Any, Any], Any]
    value: Callable[[Any], Any]


def _call(layer: Any, x: Any) -> Any:
    return layer(x)


def _equinox_seq(layer: Any, x: Any) -> Any:  # one example (time, channels); Equinox is (C, T)
    return layer(x.T).T


def _equinox_vec(layer: Any, x: Any) -> Any:
    return jax.vmap(layer)(x)


def _haiku_value(array: Any) -> Any:
    return array.value() if isinstance(array, _HaikuArray) else array


LINEN_OPS = Ops(_call, _call, lambda array: array)
HAIKU_OPS = Ops(_call, _call, _haiku_value)
EQUINOX_OPS = Ops(_equinox_seq, _equinox_vec, lambda array: array)
NNX_OPS = Ops(_call, _call, lambda array: array[...])


# --- feature axes and names ------------------------------------------------------------------


def wn_axis(leaf: Any, framework: str) -> int | None:
    """Torch's weight-norm `dim` of `leaf` in `framework`'s layout; None: the wrapper's default.

    torch Conv1d `(out, in, k)`: Linen/Haiku/NNX kernel `(k, in, out)`, Equinox
    as torch. torch ConvTranspose1d `(in, out, k)`, `dim=0` the input channel:
    Linen/NNX kernel `(k, in, out)` axis 1, Haiku `(k, out, in)` axis -1 (its
    default), Equinox `(out, in, k)` axis 1.
    """
    dim = leaf.wn_dim
    if framework == "equinox":
        axis = {Conv: {0: 0, 1: 1, 2: 2}, ConvTranspose: {0: 1, 1: 0, 2: 2}}[type(leaf)][dim]
        return None if axis == 0 else axis
    if framework == "haiku" and isinstance(leaf, ConvTranspose):
        axis = {0: -1, 1: -2, 2: 0}[dim]
    elif isinstance(leaf, ConvTranspose):
        axis = {0: 1, 1: 2, 2: 0}[dim]
    else:
        axis = {0: -1, 1: 1, 2: 0}[dim]
    return None if axis == -1 else axis


def _axes(leaf: Any, framework: str, rank: int = 3) -> tuple[int, ...]:
    default = 0 if framework == "equinox" else -1
    axis = wn_axis(leaf, framework)
    return ((default if axis is None else axis) % rank,)


def _wn_kwargs(leaf: Any, framework: str) -> dict[str, Any]:
    axis = wn_axis(leaf, framework)
    return {} if axis is None else {"feature_axes": axis}


def _weight_normed(leaf: Any) -> bool:
    return getattr(leaf, "wn_dim", None) is not None


def _mirror_segments(path: tuple[Any, ...]) -> list[str]:
    """Linen/Haiku module names of a torch path: list items get `_i` suffixes."""
    segments: list[str] = []
    for part in path:
        if isinstance(part, int):
            segments[-1] += f"_{part}"
        else:
            segments.append(part)
    return segments


def _snake_case(name: str) -> str:
    """Haiku's default module name of a class name (`DacDecoder` -> `dac_decoder`)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower().replace("__", "_")


# --- Linen -----------------------------------------------------------------------------------


class LinenSnake(nn.Module):
    channels: int

    @nn.compact
    def __call__(self, x: Any) -> Any:
        return snake(x, self.param("alpha", nn.initializers.ones, (self.channels,)))


def _linen_layer(leaf: Any) -> Any:
    if isinstance(leaf, Conv):
        layer = nn.Conv(
            leaf.c_out,
            (leaf.kernel,),
            (leaf.stride,),
            padding=[(leaf.padding, leaf.padding)],
            kernel_dilation=(leaf.dilation,),
            feature_group_count=leaf.groups,
            use_bias=leaf.bias,
        )
    elif isinstance(leaf, ConvTranspose):
        pad = leaf.kernel - 1 - leaf.padding
        layer = nn.ConvTranspose(
            leaf.c_out, (leaf.kernel,), (leaf.stride,), padding=[(pad, pad)], use_bias=leaf.bias
        )
    elif isinstance(leaf, Linear):
        layer = nn.Dense(leaf.c_out, use_bias=leaf.bias)
    elif isinstance(leaf, LayerNorm):
        layer = nn.LayerNorm(epsilon=leaf.eps, use_fast_variance=False)
    elif isinstance(leaf, GroupNorm):
        layer = nn.GroupNorm(num_groups=leaf.groups, epsilon=leaf.eps, use_fast_variance=False)
    elif isinstance(leaf, Snake):
        return LinenSnake(leaf.channels)
    else:
        raise TypeError(leaf)
    return wl.WeightNorm(layer, **_wn_kwargs(leaf, "linen")) if _weight_normed(leaf) else layer


class LinenMirror(nn.Module):
    """A torch module's children as attributes set in `setup` (lists: `name_i`)."""

    spec: Module
    forward: Callable | None = None

    def setup(self) -> None:
        for name, child in self.spec.children:
            setattr(self, name, self._child(name, child))

    def _child(self, name: str, child: Any) -> Any:
        if isinstance(child, Module):
            return LinenMirror(child)
        if isinstance(child, ModuleList):
            return [self._child(name, item) for item in child.items]
        if isinstance(child, Array):
            return self.param(name, nn.initializers.constant(child.init), child.shape)
        return _linen_layer(child)

    def __call__(self, x: Any) -> Any:
        return self.forward(self, x, LINEN_OPS)


class LinenPlain(nn.Module):
    """Every layer made in torch's declaration order in `compact`, auto-named (`Conv_0`...)."""

    spec: Module
    forward: Callable

    @nn.compact
    def __call__(self, x: Any) -> Any:
        made = []
        for path, leaf in walk(self.spec):
            if isinstance(leaf, Array):
                made.append(self.param(path[-1], nn.initializers.constant(leaf.init), leaf.shape))
            else:
                made.append(_linen_layer(leaf))
        return self.forward(nest(self.spec, iter(made)), x, LINEN_OPS)


_LINEN_NAMES = {
    Conv: "Conv",
    ConvTranspose: "ConvTranspose",
    Linear: "Dense",
    LayerNorm: "LayerNorm",
    GroupNorm: "GroupNorm",
    Snake: "LinenSnake",
}


def _linen_paths(spec: Module, naming: str) -> dict[tuple[Any, ...], tuple[str, ...]]:
    """Torch path -> Linen module path (without the collection) of every leaf."""
    paths, counts = {}, {}
    for path, leaf in walk(spec):
        if isinstance(leaf, Array):
            paths[path] = (path[-1],) if naming == "plain" else tuple(_mirror_segments(path))
            continue
        if naming == "mirror":
            segments = _mirror_segments(path)
            if _weight_normed(leaf):
                segments.append("layer_instance")
        else:
            name = _LINEN_NAMES[type(leaf)]
            segments = [f"{name}_{counts.get(name, 0)}"]
            counts[name] = counts.get(name, 0) + 1
        paths[path] = tuple(segments)
    return paths


def _build_linen(spec: Module, forward: Callable, naming: str, example: Any) -> tuple:
    model = LinenMirror(spec, forward) if naming == "mirror" else LinenPlain(spec, forward)
    like = jax.eval_shape(model.init, jax.random.key(0), example)
    jitted = jax.jit(model.apply)
    paths = _linen_paths(spec, naming)
    layers, kinds, axes, leaves = {}, {}, {}, []
    for path, leaf in walk(spec):
        segments = paths[path]
        if isinstance(leaf, LAYERS):
            layers[torch_path(path)] = "/".join(segments)
            kinds["/".join(segments)] = KIND[type(leaf)]
            if _weight_normed(leaf):
                axes["params/" + "/".join(segments) + "/kernel"] = _axes(leaf, "linen")
        elif isinstance(leaf, Snake):
            key = torch_path((*path, "alpha"))
            leaves.append(ExtraLeaf(key, ("params", *segments, "alpha"), (leaf.channels,)))
        else:
            leaves.append(ExtraLeaf(torch_path(path), ("params", *segments), leaf.shape))
    extras = dict(module=model, abstract=None, layers=layers, kinds=kinds)
    return like, jitted, extras, axes, tuple(leaves)


# --- Haiku -----------------------------------------------------------------------------------


class HaikuSnake(hk.Module):
    def __init__(self, channels: int, name: str | None = None) -> None:
        super().__init__(name=name)
        self.channels = channels

    def __call__(self, x: Any) -> Any:
        return snake(x, hk.get_parameter("alpha", (self.channels,), init=jnp.ones))


class _HaikuArray:
    """A bare array read (and created) in its owner's name scope when the forward needs it."""

    def __init__(self, read: Callable[[], Any]) -> None:
        self.value = read


def _haiku_layer(leaf: Any, name: str | None = None) -> Any:
    if isinstance(leaf, Conv):
        layer = hk.Conv1D(
            leaf.c_out,
            leaf.kernel,
            leaf.stride,
            rate=leaf.dilation,
            padding=[(leaf.padding, leaf.padding)],
            with_bias=leaf.bias,
            feature_group_count=leaf.groups,
            name=name,
        )
    elif isinstance(leaf, ConvTranspose):
        pad = leaf.kernel - 1 - leaf.padding
        layer = hk.Conv1DTranspose(
            leaf.c_out,
            leaf.kernel,
            leaf.stride,
            padding=[(pad, pad)],
            with_bias=leaf.bias,
            name=name,
        )
    elif isinstance(leaf, Linear):
        layer = hk.Linear(leaf.c_out, with_bias=leaf.bias, name=name)
    elif isinstance(leaf, LayerNorm):
        layer = hk.LayerNorm(-1, create_scale=True, create_offset=True, eps=leaf.eps, name=name)
    elif isinstance(leaf, GroupNorm):
        layer = hk.GroupNorm(leaf.groups, eps=leaf.eps, name=name)
    elif isinstance(leaf, Snake):
        return HaikuSnake(leaf.channels, name=name)
    else:
        raise TypeError(leaf)
    return wh.WeightNorm(layer, **_wn_kwargs(leaf, "haiku")) if _weight_normed(leaf) else layer


class HaikuMirror(hk.Module):
    """A torch module's children made in `__init__` under torch's names (lists: `name_i`)."""

    def __init__(self, spec: Module, name: str) -> None:
        super().__init__(name=name)
        self._shapes = {}
        for child_name, child in spec.children:
            setattr(self, child_name, _haiku_child(self, child_name, child))

    def array(self, name: str) -> Any:
        """The bare array `name`, a parameter of this module (a method: in its name scope)."""
        spec = self._shapes[name]
        return hk.get_parameter(name, spec.shape, init=hk.initializers.Constant(spec.init))


def _haiku_child(owner: HaikuMirror, name: str, child: Any) -> Any:
    # A function, not a method: Haiku names modules made inside a method `m` of a
    # module `owner/~m/...`; made in `__init__` they are `owner/~/...`.
    if isinstance(child, Module):
        return HaikuMirror(child, name=name)
    if isinstance(child, ModuleList):
        return [_haiku_child(owner, f"{name}_{i}", item) for i, item in enumerate(child.items)]
    if isinstance(child, Array):
        owner._shapes[name] = child
        return _HaikuArray(functools.partial(owner.array, name))
    return _haiku_layer(child, name=name)


def _haiku_plain(spec: Module) -> Any:
    made = []
    for path, leaf in walk(spec):
        if isinstance(leaf, Array):
            init = hk.initializers.Constant(leaf.init)
            read = functools.partial(hk.get_parameter, path[-1], leaf.shape, init=init)
            made.append(_HaikuArray(read))
        else:
            made.append(_haiku_layer(leaf))
    return nest(spec, iter(made))


_HAIKU_NAMES = {
    Conv: "conv1_d",
    ConvTranspose: "conv1_d_transpose",
    Linear: "linear",
    LayerNorm: "layer_norm",
    GroupNorm: "group_norm",
    Snake: "haiku_snake",
}


def _haiku_paths(spec: Module, naming: str, top: str) -> dict[tuple[Any, ...], tuple[str, str]]:
    """Torch path -> (Haiku module name, parameter name or "") of every leaf."""
    paths, counts = {}, {}
    for path, leaf in walk(spec):
        if naming == "mirror":
            segments = _mirror_segments(path)
            if isinstance(leaf, Array):
                owner = "/~/".join([top, *segments[:-1]])
                paths[path] = (owner, segments[-1])
            else:
                paths[path] = ("/~/".join([top, *segments]), "")
            continue
        if isinstance(leaf, Array):
            paths[path] = ("~", path[-1])
            continue
        name = _HAIKU_NAMES[type(leaf)]
        count = counts.get(name, 0)
        counts[name] = count + 1
        paths[path] = (name if count == 0 else f"{name}_{count}", "")
    return paths


def _build_haiku(spec: Module, forward: Callable, naming: str, example: Any) -> tuple:
    top = _snake_case(spec.torch_class)
    if naming == "mirror":
        transformed = hk.without_apply_rng(
            hk.transform(lambda x: forward(HaikuMirror(spec, name=top), x, HAIKU_OPS))
        )
    else:
        transformed = hk.without_apply_rng(
            hk.transform(lambda x: forward(_haiku_plain(spec), x, HAIKU_OPS))
        )
    like = jax.eval_shape(transformed.init, jax.random.key(0), example)
    jitted = jax.jit(transformed.apply)
    paths = _haiku_paths(spec, naming, top)
    layers, kinds, axes, leaves = {}, {}, {}, []
    for path, leaf in walk(spec):
        owner, name = paths[path]
        if isinstance(leaf, LAYERS):
            layers[torch_path(path)] = owner
            kinds[owner] = KIND[type(leaf)]
            if _weight_normed(leaf):
                axes[owner + "/w"] = _axes(leaf, "haiku")
        elif isinstance(leaf, Snake):
            key = torch_path((*path, "alpha"))
            leaves.append(ExtraLeaf(key, (owner, "alpha"), (leaf.channels,)))
        else:
            leaves.append(ExtraLeaf(torch_path(path), (owner, name), leaf.shape))
    extras = dict(module=transformed, abstract=None, layers=layers, kinds=kinds)
    return like, jitted, extras, axes, tuple(leaves)


def _zeros_like(tree: Any) -> Any:
    """`tree` with its `jax.ShapeDtypeStruct` leaves made zeros of that shape and dtype."""

    def zeros(leaf: Any) -> Any:
        if isinstance(leaf, jax.ShapeDtypeStruct):
            return jnp.zeros(leaf.shape, leaf.dtype)
        return leaf

    return jax.tree.map(zeros, tree)


# --- Equinox ---------------------------------------------------------------------------------


class EquinoxSnake(eqx.Module):
    alpha: jax.Array

    def __call__(self, x: Any) -> Any:  # (channels, time); alpha (channels, 1)
        return x + jnp.reciprocal(self.alpha + 1e-9) * jnp.sin(self.alpha * x) ** 2


_EQUINOX_CLASSES: dict[tuple[Any, ...], type] = {}


def _equinox_class(name: str, fields: tuple[str, ...]) -> type:
    """One eqx.Module class per torch class: its fields are torch's child names."""
    key = (name, fields)
    if key not in _EQUINOX_CLASSES:
        namespace = {"__annotations__": dict.fromkeys(fields, Any), "__module__": __name__}
        _EQUINOX_CLASSES[key] = type(name, (eqx.Module,), namespace)
    return _EQUINOX_CLASSES[key]


def _equinox_layer(leaf: Any, key: Any) -> Any:
    if isinstance(leaf, Conv):
        layer = eqx.nn.Conv1d(
            leaf.c_in,
            leaf.c_out,
            leaf.kernel,
            leaf.stride,
            padding=leaf.padding,
            dilation=leaf.dilation,
            groups=leaf.groups,
            use_bias=leaf.bias,
            key=key,
        )
    elif isinstance(leaf, ConvTranspose):
        layer = eqx.nn.ConvTranspose1d(
            leaf.c_in,
            leaf.c_out,
            leaf.kernel,
            leaf.stride,
            padding=leaf.padding,
            use_bias=leaf.bias,
            key=key,
        )
    elif isinstance(leaf, Linear):
        layer = eqx.nn.Linear(leaf.c_in, leaf.c_out, use_bias=leaf.bias, key=key)
    elif isinstance(leaf, LayerNorm):
        layer = eqx.nn.LayerNorm(leaf.channels, eps=leaf.eps)
    elif isinstance(leaf, GroupNorm):
        layer = eqx.nn.GroupNorm(leaf.groups, leaf.channels, eps=leaf.eps)
    elif isinstance(leaf, Snake):
        return EquinoxSnake(jnp.ones((leaf.channels, 1)))
    elif isinstance(leaf, Array):
        return jnp.full(leaf.shape, leaf.init, jnp.float32)
    else:
        raise TypeError(leaf)
    return we.WeightNorm(layer, **_wn_kwargs(leaf, "equinox")) if _weight_normed(leaf) else layer


def _equinox_mirror(node: Any, keys: Any) -> Any:
    if isinstance(node, Module):
        cls = _equinox_class(node.torch_class, tuple(name for name, _ in node.children))
        return cls(**{name: _equinox_mirror(child, keys) for name, child in node.children})
    if isinstance(node, ModuleList):
        return [_equinox_mirror(item, keys) for item in node.items]
    return _equinox_layer(node, next(keys))


def _top_arrays(spec: Module) -> list[str]:
    names = []
    for path, leaf in walk(spec):
        if isinstance(leaf, Array):
            if len(path) != 1:
                raise ValueError(f"plain models hold bare arrays at the top level only: {path}")
            names.append(path[0])
    return names


def _equinox_plain(spec: Module, keys: Any) -> Any:
    arrays = _top_arrays(spec)
    cls = _equinox_class(spec.torch_class + "Flat", ("layers", *arrays))
    layers, values = [], {}
    for path, leaf in walk(spec):
        made = _equinox_layer(leaf, next(keys))
        if isinstance(leaf, Array):
            values[path[0]] = made
        else:
            layers.append(made)
    return cls(layers=tuple(layers), **values)


def _renest(spec: Module, model: Any) -> Any:
    """A plain Equinox/NNX model's layers re-nested as torch nests them."""
    layers = iter(model.layers)
    leaves = (
        getattr(model, path[0]) if isinstance(leaf, Array) else next(layers)
        for path, leaf in walk(spec)
    )
    return nest(spec, leaves)


def _plain_paths(spec: Module, suffix: str) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    """Torch path -> Equinox/NNX attribute path, for a flat `layers` list (`suffix`: the
    weight-norm wrapper's inner-layer attribute)."""
    paths, index = {}, 0
    for path, leaf in walk(spec):
        if isinstance(leaf, Array):
            paths[path] = (path[0],)
            continue
        paths[path] = ("layers", index, suffix) if _weight_normed(leaf) else ("layers", index)
        index += 1
    return paths


def _mirror_paths(spec: Module, suffix: str) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    return {path: (*path, suffix) if _weight_normed(leaf) else path for path, leaf in walk(spec)}


def _attribute_records(
    spec: Module, framework: str, paths: dict, weight: str, alpha_shape: Callable[[int], tuple]
) -> tuple[dict, dict, dict, tuple]:
    layers, kinds, axes, leaves = {}, {}, {}, []
    for path, leaf in walk(spec):
        where = paths[path]
        joined = "/".join(str(part) for part in where)
        if isinstance(leaf, LAYERS):
            layers[torch_path(path)] = joined
            kinds[joined] = KIND[type(leaf)]
            if _weight_normed(leaf):
                axes[f"{joined}/{weight}"] = _axes(leaf, framework)
        elif isinstance(leaf, Snake):
            key = torch_path((*path, "alpha"))
            leaves.append(ExtraLeaf(key, (*where, "alpha"), alpha_shape(leaf.channels)))
        else:
            leaves.append(ExtraLeaf(torch_path(path), where, leaf.shape))
    return layers, kinds, axes, tuple(leaves)


def _build_equinox(spec: Module, forward: Callable, naming: str, example: Any) -> tuple:
    n_leaves = sum(1 for _ in walk(spec))

    def make(key: Any) -> Any:
        keys = iter(jax.random.split(key, n_leaves))
        return _equinox_mirror(spec, keys) if naming == "mirror" else _equinox_plain(spec, keys)

    abstract = eqx.filter_eval_shape(make, jax.random.key(0))
    concrete = _zeros_like(abstract)  # a `like`: only its structure counts; no eager init

    def one(model: Any, x: Any) -> Any:
        layers = model if naming == "mirror" else _renest(spec, model)
        return forward(layers, x, EQUINOX_OPS)

    batched = eqx.filter_jit(lambda model, x: jax.vmap(lambda xi: one(model, xi))(x))
    if naming == "mirror":
        paths = _mirror_paths(spec, "layer")
    else:
        paths = _plain_paths(spec, "layer")
    layers, kinds, axes, leaves = _attribute_records(
        spec, "equinox", paths, "weight", lambda c: (c, 1)
    )
    extras = dict(module=concrete, abstract=abstract, layers=layers, kinds=kinds)
    return concrete, batched, extras, axes, leaves


# --- NNX -------------------------------------------------------------------------------------


class NNXSnake(nnx.Module):
    def __init__(self, channels: int) -> None:
        self.alpha = nnx.Param(jnp.ones((channels,)))

    def __call__(self, x: Any) -> Any:
        return snake(x, self.alpha[...])


def _nnx_layer(leaf: Any, rngs: nnx.Rngs) -> Any:
    if isinstance(leaf, Conv):
        layer = nnx.Conv(
            leaf.c_in,
            leaf.c_out,
            (leaf.kernel,),
            (leaf.stride,),
            padding=[(leaf.padding, leaf.padding)],
            kernel_dilation=(leaf.dilation,),
            feature_group_count=leaf.groups,
            use_bias=leaf.bias,
            rngs=rngs,
        )
    elif isinstance(leaf, ConvTranspose):
        pad = leaf.kernel - 1 - leaf.padding
        layer = nnx.ConvTranspose(
            leaf.c_in,
            leaf.c_out,
            (leaf.kernel,),
            (leaf.stride,),
            padding=[(pad, pad)],
            use_bias=leaf.bias,
            rngs=rngs,
        )
    elif isinstance(leaf, Linear):
        layer = nnx.Linear(leaf.c_in, leaf.c_out, use_bias=leaf.bias, rngs=rngs)
    elif isinstance(leaf, LayerNorm):
        layer = nnx.LayerNorm(leaf.channels, epsilon=leaf.eps, use_fast_variance=False, rngs=rngs)
    elif isinstance(leaf, GroupNorm):
        layer = nnx.GroupNorm(
            leaf.channels,
            num_groups=leaf.groups,
            epsilon=leaf.eps,
            use_fast_variance=False,
            rngs=rngs,
        )
    elif isinstance(leaf, Snake):
        return NNXSnake(leaf.channels)
    elif isinstance(leaf, Array):
        return nnx.Param(jnp.full(leaf.shape, leaf.init, jnp.float32))
    else:
        raise TypeError(leaf)
    return wn.WeightNorm(layer, **_wn_kwargs(leaf, "nnx")) if _weight_normed(leaf) else layer


class NNXMirror(nnx.Module):
    """A torch module's children as attributes under torch's names (lists: `nnx.List`)."""

    def __init__(self, spec: Module, rngs: nnx.Rngs) -> None:
        for name, child in spec.children:
            setattr(self, name, _nnx_child(child, rngs))


def _nnx_child(child: Any, rngs: nnx.Rngs) -> Any:
    if isinstance(child, Module):
        return NNXMirror(child, rngs)
    if isinstance(child, ModuleList):
        return nnx.List([_nnx_child(item, rngs) for item in child.items])
    return _nnx_layer(child, rngs)


class NNXPlain(nnx.Module):
    """All layers in one `nnx.List` field `layers`, in torch's declaration order."""

    def __init__(self, spec: Module, rngs: nnx.Rngs) -> None:
        layers = []
        for path, leaf in walk(spec):
            if isinstance(leaf, Array):
                setattr(self, path[0], _nnx_layer(leaf, rngs))
            else:
                layers.append(_nnx_layer(leaf, rngs))
        self.layers = nnx.List(layers)


def _build_nnx(spec: Module, forward: Callable, naming: str, example: Any) -> tuple:
    cls = NNXMirror if naming == "mirror" else NNXPlain

    def make() -> Any:
        return cls(spec, nnx.Rngs(0))

    abstract = nnx.eval_shape(make)
    graphdef, state = nnx.split(abstract)
    model = nnx.merge(graphdef, _zeros_like(state))  # a `like`: no eager init

    def run(model: Any, x: Any) -> Any:
        layers = model if naming == "mirror" else _renest(spec, model)
        return forward(layers, x, NNX_OPS)

    jitted = nnx.jit(run)
    paths = (_mirror_paths if naming == "mirror" else _plain_paths)(spec, "layer_instance")
    layers, kinds, axes, leaves = _attribute_records(spec, "nnx", paths, "kernel", lambda c: (c,))
    extras = dict(module=model, abstract=abstract, layers=layers, kinds=kinds)
    return model, jitted, extras, axes, leaves


_BUILDERS = {
    "linen": _build_linen,
    "haiku": _build_haiku,
    "equinox": _build_equinox,
    "nnx": _build_nnx,
}


def build(
    spec: Module, forward: Callable, framework: str, naming: str, example: Any
) -> tuple[Any, Callable[[Any, Any], Any], Extras]:
    """`(like, apply, extras)`: `apply(params_or_module, x)` on channels-last batched `x`."""
    if framework not in _BUILDERS:
        raise ValueError(f"framework must be one of {FRAMEWORKS}, got {framework!r}")
    if naming not in NAMINGS:
        raise ValueError(f"naming must be one of {NAMINGS}, got {naming!r}")
    example = jnp.asarray(example)
    like, apply, extras, axes, leaves = _BUILDERS[framework](spec, forward, naming, example)
    return (
        like,
        apply,
        Extras(
            framework=framework,
            naming=naming,
            example=example,
            feature_axes=axes,
            leaves=leaves,
            **extras,
        ),
    )


def flat_arrays(tree: Any, framework: str) -> dict[str, Any]:
    """Every array (or `jax.ShapeDtypeStruct`) leaf of a model of `framework` by `/`-joined path.

    Linen variables and Haiku params: their nested dict keys; Equinox: the
    attribute path (`jax.tree_util.keystr(..., simple=True, separator="/")`);
    NNX: the path of each variable of `nnx.state(module)`.
    """
    if framework == "nnx":
        flat = nnx.to_flat_state(nnx.state(tree))
        return {"/".join(map(str, path)): variable.get_value() for path, variable in flat}
    if framework == "equinox":
        arrays = eqx.filter(tree, lambda x: isinstance(x, jax.Array | jax.ShapeDtypeStruct))
        leaves = jax.tree_util.tree_flatten_with_path(arrays)[0]
        return {jax.tree_util.keystr(path, simple=True, separator="/"): x for path, x in leaves}
    flat = {}

    def visit(node: Any, prefix: str) -> None:
        for name, child in node.items():
            key = f"{prefix}/{name}" if prefix else name
            if isinstance(child, Mapping):
                visit(child, key)
            else:
                flat[key] = child

    visit(tree, "")
    return flat


def flat_keys(tree: Any, framework: str) -> list[str]:
    """The paths of `flat_arrays`, in its order."""
    return list(flat_arrays(tree, framework))
