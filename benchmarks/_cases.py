"""The benchmarked models: one set of weights, built in every framework.

Every variant of a case starts from the same numbers: weight-normed variants
get the directions `v`, scales `g` and biases; plain variants get the
effective weights `g * v / ||v||`. So every variant computes the same loss at
the first step, which `run.py` checks.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import equinox as eqx
import flax.linen as nn
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from weightnorm import core
from weightnorm.adapters import equinox as weq
from weightnorm.adapters import haiku as whk
from weightnorm.adapters import linen as wln
from weightnorm.adapters import nnx as wnx

LEARNING_RATE = 1e-3
EPSILON = 1e-12


@dataclasses.dataclass(frozen=True)
class Case:
    """A model shape: an MLP (`kind="mlp"`) or a residual Conv1D stack (`"conv"`)."""

    name: str
    kind: str
    depth: int
    width: int
    batch: int
    length: int = 0  # conv only
    kernel_size: int = 7  # conv only

    def kernel_shape(self) -> tuple[int, ...]:
        """Linen/Haiku layout: (in, out) or (k, in, out)."""
        if self.kind == "mlp":
            return (self.width, self.width)
        return (self.kernel_size, self.width, self.width)

    def weight_bytes(self) -> int:
        """Bytes of all kernels (float32): one copy of the weights."""
        return self.depth * int(np.prod(self.kernel_shape())) * 4

    def input_shape(self) -> tuple[int, ...]:
        if self.kind == "mlp":
            return (self.batch, self.width)
        return (self.batch, self.length, self.width)


@dataclasses.dataclass(frozen=True)
class Variant:
    """A train step `step(params, x, t) -> (params, loss)` and its first params."""

    framework: str
    name: str
    weight_norm: bool
    step: Callable[..., Any]
    params: Any


def shared_weights(case: Case, seed: int = 0) -> tuple[list[dict[str, np.ndarray]], Any, Any]:
    """([{"v", "g", "b", "w"} per layer], x, target) in Linen/Haiku layouts, float32."""
    rng = np.random.default_rng(seed)
    shape = case.kernel_shape()
    fan_in = int(np.prod(shape[:-1]))
    layers = []
    for _ in range(case.depth):
        v = rng.normal(0, 1 / np.sqrt(fan_in), shape).astype(np.float32)
        g = rng.uniform(0.5, 1.5, shape[-1]).astype(np.float32)
        b = rng.normal(0, 0.1, shape[-1]).astype(np.float32)
        norm = np.sqrt((v.astype(np.float64) ** 2).sum(axis=tuple(range(v.ndim - 1))) + EPSILON)
        w = (g * v / norm).astype(np.float32)
        layers.append({"v": v, "g": g, "b": b, "w": w})
    x = rng.normal(0, 1, case.input_shape()).astype(np.float32)
    target = rng.normal(0, 1, case.input_shape()).astype(np.float32)
    return layers, jnp.asarray(x), jnp.asarray(target)


def _sgd(loss_fn: Callable[..., Any]) -> Callable[..., Any]:
    def step(params, x, target):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, target)
        return jax.tree.map(lambda p, g: p - LEARNING_RATE * g, params, grads), loss

    return step


def _mse(y, target):
    return jnp.mean((y - target) ** 2)


def _activation(case: Case, h, y, last: bool):
    """MLP: relu between layers; conv: residual `h + leaky_relu(conv(h))`."""
    if case.kind == "mlp":
        return y if last else jax.nn.relu(y)
    return h + jax.nn.leaky_relu(y)


def _fill(init_params: Any, layers: list[dict[str, np.ndarray]], plain: bool, where) -> Any:
    """`init_params` with every leaf replaced by the shared weight its path names.

    `where(path) -> (layer index, role)`; role is "kernel", "bias" or "scale".
    """
    flat = core.flatten(init_params)
    filled = {}
    for path, leaf in flat.items():
        index, role = where(path)
        key = {"kernel": "w" if plain else "v", "bias": "b", "scale": "g"}[role]
        value = layers[index][key]
        if np.shape(value) != np.shape(leaf):
            raise ValueError(f"{path}: shared {np.shape(value)} != model {np.shape(leaf)}")
        filled[path] = jnp.asarray(value)
    return core.unflatten(filled, like=init_params)


def _named(path: str) -> tuple[int, str]:
    index = int(re.search(r"layer(\d+)", path).group(1))
    if path.endswith("/scale"):
        return index, "scale"
    last = path.rsplit("/", 1)[-1]
    return index, "kernel" if last in ("kernel", "w") else "bias"


# --- pure jnp ------------------------------------------------------------------------


def _jnp_apply(case: Case, x, kernel_bias_pairs):
    h = x
    for i, (kernel, bias) in enumerate(kernel_bias_pairs):
        if case.kind == "mlp":
            y = h @ kernel + bias
        else:
            y = lax.conv_general_dilated(
                h, kernel, (1,), "SAME", dimension_numbers=("NWC", "WIO", "NWC")
            )
            y = y + bias
        h = _activation(case, h, y, i == case.depth - 1)
    return h


def _hand_weight(v, g):
    reduce = tuple(range(v.ndim - 1))
    return g * v * lax.rsqrt((v * v).sum(axis=reduce, keepdims=True) + EPSILON)


def jnp_variants(case: Case, layers) -> list[Variant]:
    plain = [(jnp.asarray(p["w"]), jnp.asarray(p["b"])) for p in layers]
    hand = [{k: jnp.asarray(p[k]) for k in "vgb"} for p in layers]

    def plain_loss(params, x, t):
        return _mse(_jnp_apply(case, x, params), t)

    def hand_loss(params, x, t):
        pairs = [(_hand_weight(p["v"], p["g"]), p["b"]) for p in params]
        return _mse(_jnp_apply(case, x, pairs), t)

    return [
        Variant("jnp", "plain", False, _sgd(plain_loss), plain),
        Variant("jnp", "hand-written", True, _sgd(hand_loss), hand),
    ]


# --- Flax Linen ----------------------------------------------------------------------


class _LinenModel(nn.Module):
    case: Case
    wrapper: Any = None  # None, nn.WeightNorm or our WeightNorm

    @nn.compact
    def __call__(self, x):
        h = x
        for i in range(self.case.depth):
            if self.case.kind == "mlp":
                layer = nn.Dense(self.case.width, name=f"layer{i}")
            else:
                layer = nn.Conv(
                    self.case.width, (self.case.kernel_size,), padding="SAME", name=f"layer{i}"
                )
            if self.wrapper is not None:
                layer = self.wrapper(layer, epsilon=EPSILON, name=f"wn_layer{i}")
            h = _activation(self.case, h, layer(h), i == self.case.depth - 1)
        return h


def linen_variants(case: Case, layers, x) -> list[Variant]:
    out = []
    for name, wrapper in [
        ("plain", None),
        ("flax WeightNorm", nn.WeightNorm),
        ("ours", wln.WeightNorm),
    ]:
        model = _LinenModel(case, wrapper)
        init = model.init(jax.random.key(0), x[:1])["params"]
        params = _fill(init, layers, wrapper is None, _named)

        def loss(params, x, t, model=model):
            return _mse(model.apply({"params": params}, x), t)

        out.append(Variant("linen", name, wrapper is not None, _sgd(loss), params))
    return out


# --- Haiku ---------------------------------------------------------------------------


def _haiku_forward(case: Case, ours: bool):
    def forward(x):
        h = x
        for i in range(case.depth):
            if case.kind == "mlp":
                layer = hk.Linear(case.width, name=f"layer{i}")
            else:
                layer = hk.Conv1D(case.width, case.kernel_size, padding="SAME", name=f"layer{i}")
            if ours:
                layer = whk.WeightNorm(layer, epsilon=EPSILON, name=f"wn_layer{i}")
            h = _activation(case, h, layer(h), i == case.depth - 1)
        return h

    return hk.without_apply_rng(hk.transform(forward))


def haiku_variants(case: Case, layers, x) -> list[Variant]:
    out = []
    for name, ours in [("plain", False), ("ours", True)]:
        model = _haiku_forward(case, ours)
        params = _fill(model.init(jax.random.key(0), x[:1]), layers, not ours, _named)

        def loss(params, x, t, model=model):
            return _mse(model.apply(params, x), t)

        out.append(Variant("haiku", name, ours, _sgd(loss), params))
    return out


# --- Equinox -------------------------------------------------------------------------


class _EqxModel(eqx.Module):
    layers: list
    kind: str = eqx.field(static=True)

    def __call__(self, x):  # one example: (features,) or (channels, length)
        h = x
        for i, layer in enumerate(self.layers):
            y = layer(h)
            if self.kind == "mlp":
                h = y if i == len(self.layers) - 1 else jax.nn.relu(y)
            else:
                h = h + jax.nn.leaky_relu(y)
        return h


def _eqx_layer(case: Case, params: dict[str, np.ndarray], plain: bool):
    """An Equinox layer holding the shared weights, in Equinox's (out, in, ...) layout."""
    key = jax.random.key(0)
    if case.kind == "mlp":
        layer = eqx.nn.Linear(case.width, case.width, key=key)
        weight = params["w" if plain else "v"].T
        bias = params["b"]
    else:
        layer = eqx.nn.Conv1d(case.width, case.width, case.kernel_size, padding="SAME", key=key)
        weight = np.transpose(params["w" if plain else "v"], (2, 1, 0))
        bias = params["b"][:, None]
    arrays = (jnp.asarray(weight), jnp.asarray(bias))
    return eqx.tree_at(lambda layer: (layer.weight, layer.bias), layer, arrays)


def _eqx_scale(weight_norm: eqx.nn.WeightNorm, g: np.ndarray) -> eqx.nn.WeightNorm:
    return eqx.tree_at(lambda m: m.g, weight_norm, jnp.asarray(g).reshape(weight_norm.g.shape))


def _eqx_batched(x, kind: str):
    """Equinox layers are unbatched and convolutions are channels-first."""
    return x if kind == "mlp" else jnp.swapaxes(x, 1, 2)


def equinox_variants(case: Case, layers) -> list[Variant]:
    plain = _EqxModel([_eqx_layer(case, p, True) for p in layers], case.kind)
    theirs = _EqxModel(
        [_eqx_scale(eqx.nn.WeightNorm(_eqx_layer(case, p, False)), p["g"]) for p in layers],
        case.kind,
    )
    ours = weq.WeightNorm(
        _EqxModel([_eqx_layer(case, p, False) for p in layers], case.kind), epsilon=EPSILON
    )
    ours = eqx.tree_at(
        lambda m: m.scales,
        ours,
        {f"layers/{i}/weight/scale": jnp.asarray(p["g"]) for i, p in enumerate(layers)},
    )
    out = []
    for name, model in [("plain", plain), ("eqx WeightNorm", theirs), ("ours", ours)]:
        params, static = eqx.partition(model, eqx.is_inexact_array)

        def loss(params, x, t, static=static):
            model = eqx.combine(params, static)
            y = jax.vmap(model)(_eqx_batched(x, case.kind))
            return _mse(_eqx_batched(y, case.kind), t)

        out.append(Variant("equinox", name, name != "plain", _sgd(loss), params))
    return out


# --- Flax NNX ------------------------------------------------------------------------


class _NnxModel(nnx.Module):
    def __init__(self, case: Case, layers: list[nnx.Module]) -> None:
        self.case = case
        self.layers = nnx.List(layers)

    def __call__(self, x):
        h = x
        for i, layer in enumerate(self.layers):
            h = _activation(self.case, h, layer(h), i == self.case.depth - 1)
        return h


def _nnx_layer(case: Case, params: dict[str, np.ndarray], plain: bool) -> nnx.Module:
    """An NNX layer holding the shared weights (NNX's layouts are Linen's)."""
    rngs = nnx.Rngs(0)
    if case.kind == "mlp":
        layer = nnx.Linear(case.width, case.width, rngs=rngs)
    else:
        layer = nnx.Conv(case.width, case.width, (case.kernel_size,), padding="SAME", rngs=rngs)
    layer.kernel.set_value(jnp.asarray(params["w" if plain else "v"]))
    layer.bias.set_value(jnp.asarray(params["b"]))
    return layer


def _flax_nnx_weight_norm(case: Case, params: dict[str, np.ndarray]) -> nnx.Module:
    wrapper = nnx.WeightNorm(_nnx_layer(case, params, False), epsilon=EPSILON, rngs=nnx.Rngs(0))
    wrapper.scales[("kernel",)] = jnp.asarray(params["g"])  # a plain array in a dict
    return wrapper


def _our_nnx_weight_norm(case: Case, params: dict[str, np.ndarray]) -> nnx.Module:
    wrapper = wnx.WeightNorm(_nnx_layer(case, params, False), epsilon=EPSILON)
    wrapper.scales["kernel/scale"].set_value(jnp.asarray(params["g"]))
    return wrapper


def nnx_variants(case: Case, layers) -> list[Variant]:
    """NNX's functional API: `jax.jit` over the split state, the model merged in the loss.

    `flax.nnx.WeightNorm` writes the normalized kernel into its layer on every
    call; merged afresh in the loss, that write is dropped with the merged
    module, so it trains the raw directions like every other variant here.
    """
    out = []
    for name, make in [
        ("plain", lambda p: _nnx_layer(case, p, True)),
        ("flax WeightNorm", lambda p: _flax_nnx_weight_norm(case, p)),
        ("ours", lambda p: _our_nnx_weight_norm(case, p)),
    ]:
        graphdef, state = nnx.split(_NnxModel(case, [make(p) for p in layers]))
        # The step takes the state's arrays as a list: an `nnx.State` of Variables
        # would add a Python-level pytree flatten to every call's dispatch.
        leaves, treedef = jax.tree.flatten(state)

        def loss(leaves, x, t, graphdef=graphdef, treedef=treedef):
            return _mse(nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))(x), t)

        out.append(Variant("nnx", name, name != "plain", _sgd(loss), leaves))
    return out


def all_variants(case: Case, seed: int = 0) -> tuple[list[Variant], Any, Any]:
    """Every variant of `case`, and the batch `(x, target)` they train on."""
    layers, x, target = shared_weights(case, seed)
    variants = [
        *jnp_variants(case, layers),
        *linen_variants(case, layers, x),
        *haiku_variants(case, layers, x),
        *equinox_variants(case, layers),
        *nnx_variants(case, layers),
    ]
    return variants, x, target
