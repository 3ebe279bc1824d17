"""Random layer stacks built as the same model in Linen, Haiku, Equinox, NNX and PyTorch.

A `LayerStack` describes a small model (Dense, Conv and ConvTranspose layers
with tanh between them, each optionally weight-normed) on signals of 1 or 2
spatial dimensions. `build(stack, framework, seed)` makes it in one framework
with random parameters; `inputs(stack)` makes inputs. Every builder takes and
returns channels-last arrays `(batch, *spatial, channels)`, so one input runs
through every framework and outputs compare directly.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from hypothesis import strategies as st

__all__ = ["LayerSpec", "LayerStack", "layer_stacks", "inputs", "build", "STACK_FRAMEWORKS"]

from ..adapters import ModelTrace
from ..port import FRAMEWORKS, read_model

#: Every framework a stack is built in: all of the port's registry.
STACK_FRAMEWORKS = tuple(FRAMEWORKS)
_KINDS = ("dense", "conv", "conv_transpose")


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """One layer of a stack.

    Attributes:
      kind: `"dense"` (on the channel axis), `"conv"` or `"conv_transpose"`.
      features: output channels.
      kernel_size: kernel size along every spatial axis (convolutions).
      stride: stride along every spatial axis (convolutions).
      dilation: kernel dilation (`"conv"` only).
      groups: feature groups (`"conv"` only); divides both channel counts.
      padding: torch-style symmetric padding along every spatial axis.
      weight_norm: whether the layer is wrapped in weight norm, on each
        framework's default feature axis (the output channel, except Haiku's
        transposed convolutions: the input channel), torch's `dim` per output
        channel (`dim=1` for transposed convolutions).
      use_bias: whether the layer has a bias.
    """

    kind: str
    features: int
    kernel_size: int = 1
    stride: int = 1
    dilation: int = 1
    groups: int = 1
    padding: int = 0
    weight_norm: bool = False
    use_bias: bool = True

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"`kind` must be one of {_KINDS}, got {self.kind!r}.")
        if self.kind != "conv" and (self.groups != 1 or self.dilation != 1):
            raise ValueError(f"Only 'conv' layers take groups and dilation, not {self.kind!r}.")


@dataclasses.dataclass(frozen=True)
class LayerStack:
    """A model: `layers` in order, tanh between them, on `(batch, *spatial, in_features)`.

    Attributes:
      in_features: input channels.
      length: input size along every spatial axis.
      spatial: number of spatial axes (1 or 2).
      layers: the layers, in order.
    """

    in_features: int
    length: int
    spatial: int
    layers: tuple[LayerSpec, ...]

    @property
    def weight_norm(self) -> bool:
        """Whether any layer is weight-normed."""
        return any(layer.weight_norm for layer in self.layers)

    def channels(self) -> list[int]:
        """Input channels of each layer, then the output channels."""
        return [self.in_features, *(layer.features for layer in self.layers)]


@st.composite
def layer_stacks(
    draw: Any,
    *,
    max_layers: int = 3,
    spatial: Sequence[int] = (1, 2),
    kinds: Sequence[str] = _KINDS,
    weight_norm: bool | None = None,
) -> LayerStack:
    """Hypothesis strategy of `LayerStack`s whose every layer has a non-empty output.

    Examples:
      >>> from hypothesis import given
      >>> @given(layer_stacks(spatial=(1,), weight_norm=True))
      ... def test(stack):
      ...     assert stack.spatial == 1 and all(layer.weight_norm for layer in stack.layers)
      >>> test()

    Args:
      max_layers: at most this many layers (at least one).
      spatial: the numbers of spatial axes to draw from.
      kinds: the layer kinds to draw from.
      weight_norm: weight norm on every layer (True), none (False), or drawn
        per layer (None).
    """
    dims = draw(st.sampled_from(tuple(spatial)))
    channels = in_features = draw(st.integers(1, 4))
    stack_layers = []
    for _ in range(draw(st.integers(1, max_layers))):
        kind = draw(st.sampled_from(tuple(kinds)))
        kernel = draw(st.integers(1, 3)) if kind != "dense" else 1
        dilation = draw(st.integers(1, 2)) if kind == "conv" else 1
        groups = (
            draw(st.sampled_from([g for g in range(1, channels + 1) if channels % g == 0]))
            if kind == "conv"
            else 1
        )
        features = groups * draw(st.integers(1, max(1, 5 // groups)))
        reach = dilation * (kernel - 1)
        # Enough padding that a convolution never empties its input, little
        # enough that a transposed one never crops everything.
        padding = (
            draw(st.integers((reach + 1) // 2, reach))
            if kind == "conv"
            else draw(st.integers(0, reach // 2))
        )
        stack_layers.append(
            LayerSpec(
                kind=kind,
                features=features,
                kernel_size=kernel,
                stride=draw(st.integers(1, 2)) if kind != "dense" else 1,
                dilation=dilation,
                groups=groups,
                padding=padding,
                weight_norm=draw(st.booleans()) if weight_norm is None else weight_norm,
                use_bias=draw(st.booleans()),
            )
        )
        channels = features
    return LayerStack(
        in_features=in_features,
        length=draw(st.integers(3, 6)),
        spatial=dims,
        layers=tuple(stack_layers),
    )


def inputs(stack: LayerStack, batch: int = 2, seed: int = 0) -> np.ndarray:
    """Random float32 inputs `(batch, *spatial, in_features)` for `stack`.

    Examples:
      >>> inputs(LayerStack(3, 4, 2, (LayerSpec("dense", 1),))).shape
      (2, 4, 4, 3)
    """
    shape = (batch, *([stack.length] * stack.spatial), stack.in_features)
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# --- builders ------------------------------------------------------------------------------


def _randomized(model: Any, framework: str, seed: int) -> Any:
    """`model` with every floating leaf replaced by random values (scales positive)."""
    view = read_model(model, framework, "framework")
    rng = np.random.default_rng(seed)
    new = {}
    for key, value in view.flat.items():
        # Only shapes and dtypes are read: the model may hold `jax.ShapeDtypeStruct`s.
        shape, dtype = tuple(value.shape), np.dtype(value.dtype)
        array = np.zeros(shape, dtype)
        if np.issubdtype(dtype, np.floating):
            array = (rng.standard_normal(shape) * 0.5).astype(dtype)
            if key.endswith("scale") or key.endswith("_g") or key.endswith("original0"):
                array = np.abs(array) + np.asarray(0.5, dtype)
        new[key] = array
    return view.rebuild(new)


def _linen(stack: LayerStack) -> tuple[Any, Callable]:
    import flax.linen as nn
    import jax.numpy as jnp

    from ..adapters import linen as wl

    class Stack(nn.Module):
        @nn.compact
        def __call__(self, x: Any) -> Any:
            for i, spec in enumerate(stack.layers):
                kernel = (spec.kernel_size,) * stack.spatial
                strides = (spec.stride,) * stack.spatial
                name = f"layers_{i}"  # torch's `layers.{i}`, as the port pairs by names
                if spec.kind == "dense":
                    layer = nn.Dense(spec.features, use_bias=spec.use_bias, name=name)
                elif spec.kind == "conv":
                    layer = nn.Conv(
                        spec.features,
                        kernel,
                        strides,
                        padding=[(spec.padding, spec.padding)] * stack.spatial,
                        kernel_dilation=(spec.dilation,) * stack.spatial,
                        feature_group_count=spec.groups,
                        use_bias=spec.use_bias,
                        name=name,
                    )
                else:
                    pad = spec.kernel_size - 1 - spec.padding
                    layer = nn.ConvTranspose(
                        spec.features,
                        kernel,
                        strides,
                        padding=[(pad, pad)] * stack.spatial,
                        use_bias=spec.use_bias,
                        name=name,
                    )
                x = (wl.WeightNorm(layer) if spec.weight_norm else layer)(x)
                x = jnp.tanh(x) if i < len(stack.layers) - 1 else x
            return x

    model = Stack()
    # Traced abstractly (no compiled initializers): `build` fills in random values, and
    # the trace says each wrapper's layer, axes and epsilon exactly.
    traced = wl.trace(model, jnp.asarray(inputs(stack)))
    return traced, lambda params, x: np.asarray(model.apply(_variables(params), x))


def _haiku(stack: LayerStack) -> tuple[Any, Callable]:
    import haiku as hk
    import jax.numpy as jnp

    from ..adapters import haiku as wh

    def forward(x: Any) -> Any:
        for i, spec in enumerate(stack.layers):
            name = f"layers_{i}"  # torch's `layers.{i}`, as the port pairs by names
            if spec.kind == "dense":
                layer = hk.Linear(spec.features, with_bias=spec.use_bias, name=name)
            elif spec.kind == "conv":
                layer = hk.ConvND(
                    stack.spatial,
                    spec.features,
                    spec.kernel_size,
                    spec.stride,
                    rate=spec.dilation,
                    padding=[(spec.padding, spec.padding)] * stack.spatial,
                    feature_group_count=spec.groups,
                    with_bias=spec.use_bias,
                    name=name,
                )
            else:
                pad = spec.kernel_size - 1 - spec.padding
                layer = hk.ConvNDTranspose(
                    stack.spatial,
                    spec.features,
                    spec.kernel_size,
                    spec.stride,
                    padding=[(pad, pad)] * stack.spatial,
                    with_bias=spec.use_bias,
                    name=name,
                )
            if spec.weight_norm:
                # The default feature axis (-1): for Haiku's transposed kernels
                # `(..., out, in)` that is the input channel.
                layer = wh.WeightNorm(layer)
            x = layer(x)
            x = jnp.tanh(x) if i < len(stack.layers) - 1 else x
        return x

    model = hk.without_apply_rng(hk.transform(forward))
    traced = wh.trace(model, jnp.asarray(inputs(stack)))
    return traced, lambda params, x: np.asarray(model.apply(_variables(params), x))


def _variables(model: Any) -> Any:
    """A Linen/Haiku model's variables, from a `ModelTrace` or as they are."""
    return model.variables if isinstance(model, ModelTrace) else model


def _equinox(stack: LayerStack) -> tuple[Any, Callable]:
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    def make() -> tuple[Any, ...]:
        layers = []
        keys = jax.random.split(jax.random.key(0), len(stack.layers))
        for spec, c_in, key in zip(stack.layers, stack.channels(), keys, strict=False):
            layers.append(_equinox_layer(stack, spec, c_in, key))
        return tuple(layers)

    shapes = eqx.filter_eval_shape(make)
    layers = jax.tree.map(
        lambda leaf: (
            np.zeros(leaf.shape, leaf.dtype) if isinstance(leaf, jax.ShapeDtypeStruct) else leaf
        ),
        shapes,
    )
    kinds = tuple(spec.kind for spec in stack.layers)

    def one(model: Any, x: Any) -> Any:  # x: (*spatial, channels)
        x = jnp.moveaxis(x, -1, 0)
        for i, (layer, kind) in enumerate(zip(model, kinds, strict=True)):
            if kind == "dense":
                flat = x.reshape(x.shape[0], -1)
                x = jax.vmap(layer, in_axes=1, out_axes=1)(flat).reshape(-1, *x.shape[1:])
            else:
                x = layer(x)
            x = jnp.tanh(x) if i < len(kinds) - 1 else x
        return jnp.moveaxis(x, 0, -1)

    batched = eqx.filter_jit(lambda model, x: jax.vmap(lambda xi: one(model, xi))(x))

    def apply(model: Any, x: Any) -> np.ndarray:
        return np.asarray(batched(model, jnp.asarray(x)))

    return layers, apply


def _equinox_layer(stack: LayerStack, spec: LayerSpec, c_in: int, key: Any) -> Any:
    import equinox as eqx

    from ..adapters import equinox as we

    if spec.kind == "dense":
        layer = eqx.nn.Linear(c_in, spec.features, use_bias=spec.use_bias, key=key)
    elif spec.kind == "conv":
        layer = eqx.nn.Conv(
            stack.spatial,
            c_in,
            spec.features,
            spec.kernel_size,
            spec.stride,
            spec.padding,
            spec.dilation,
            spec.groups,
            use_bias=spec.use_bias,
            key=key,
        )
    else:
        layer = eqx.nn.ConvTranspose(
            stack.spatial,
            c_in,
            spec.features,
            spec.kernel_size,
            spec.stride,
            padding=spec.padding,
            use_bias=spec.use_bias,
            key=key,
        )
    return we.WeightNorm(layer) if spec.weight_norm else layer


def _nnx(stack: LayerStack) -> tuple[Any, Callable]:
    import jax.numpy as jnp
    from flax import nnx

    from ..adapters import nnx as wn

    rngs = nnx.Rngs(0)
    layers = []
    for spec, c_in in zip(stack.layers, stack.channels(), strict=False):
        kernel = (spec.kernel_size,) * stack.spatial
        strides = (spec.stride,) * stack.spatial
        if spec.kind == "dense":
            layer = nnx.Linear(c_in, spec.features, use_bias=spec.use_bias, rngs=rngs)
        elif spec.kind == "conv":
            layer = nnx.Conv(
                c_in,
                spec.features,
                kernel,
                strides,
                padding=[(spec.padding, spec.padding)] * stack.spatial,
                kernel_dilation=(spec.dilation,) * stack.spatial,
                feature_group_count=spec.groups,
                use_bias=spec.use_bias,
                rngs=rngs,
            )
        else:
            pad = spec.kernel_size - 1 - spec.padding
            layer = nnx.ConvTranspose(
                c_in,
                spec.features,
                kernel,
                strides,
                padding=[(pad, pad)] * stack.spatial,
                use_bias=spec.use_bias,
                rngs=rngs,
            )
        layers.append(wn.WeightNorm(layer) if spec.weight_norm else layer)
    model = nnx.Sequential(*layers)

    def apply(model: Any, x: Any) -> np.ndarray:
        x = jnp.asarray(x)
        for i, layer in enumerate(model.layers):
            x = layer(x)
            x = jnp.tanh(x) if i < len(stack.layers) - 1 else x
        return np.asarray(x)

    return model, apply


def _torch(stack: LayerStack) -> tuple[Any, Callable]:
    try:
        import torch
    except ImportError as error:  # pragma: no cover - exercised with torch hidden
        raise ImportError("Building torch stacks needs torch: pip install torch") from error
    nn = torch.nn
    conv = {1: nn.Conv1d, 2: nn.Conv2d}[stack.spatial]
    conv_t = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d}[stack.spatial]
    layers = []
    torch.manual_seed(0)
    for spec, c_in in zip(stack.layers, stack.channels(), strict=False):
        if spec.kind == "dense":
            layer = nn.Linear(c_in, spec.features, bias=spec.use_bias)
        elif spec.kind == "conv":
            layer = conv(
                c_in,
                spec.features,
                spec.kernel_size,
                spec.stride,
                spec.padding,
                spec.dilation,
                spec.groups,
                bias=spec.use_bias,
            )
        else:
            layer = conv_t(
                c_in, spec.features, spec.kernel_size, spec.stride, spec.padding, bias=spec.use_bias
            )
        if spec.weight_norm:
            # Per output channel, as the JAX wrappers: dim 1 for transposed convs.
            dim = 1 if spec.kind == "conv_transpose" else 0
            layer = nn.utils.parametrizations.weight_norm(layer, dim=dim)
        layers.append(layer)
    model = nn.ModuleList(layers)
    kinds = [spec.kind for spec in stack.layers]

    def apply(model: Any, x: Any) -> np.ndarray:
        with torch.no_grad(), warnings.catch_warnings():
            h = torch.as_tensor(np.moveaxis(np.asarray(x), -1, 1))
            for i, (layer, kind) in enumerate(zip(model, kinds, strict=True)):
                h = layer(h.movedim(1, -1)).movedim(-1, 1) if kind == "dense" else layer(h)
                h = torch.tanh(h) if i < len(kinds) - 1 else h
            return np.moveaxis(h.numpy(), 1, -1)

    return model, apply


_BUILDERS = {
    "linen": _linen,
    "haiku": _haiku,
    "equinox": _equinox,
    "nnx": _nnx,
    "torch": _torch,
}


def build(stack: LayerStack, framework: str, seed: int = 0) -> tuple[Any, Callable]:
    """The stack as a model of `framework` with random parameters, and its apply function.

    Args:
      stack: what to build.
      framework: one of `STACK_FRAMEWORKS`.
      seed: seed of the random parameter values.

    Returns:
      `(model, apply)`: `model` is what `weightnorm.port.convert` takes for the
      framework (for Linen and Haiku a `weightnorm.adapters.ModelTrace` holding
      the random variables, so the port reads each wrapper exactly; its
      `.variables` are the plain variables; an Equinox tuple of layers, an NNX
      module, a torch module), and `apply(model, x)` maps channels-last inputs
      (and either form of Linen/Haiku model) to channels-last numpy outputs.

    Raises:
      ValueError: for an unknown framework.

    Examples:
      >>> stack = LayerStack(2, 5, 1, (LayerSpec("conv", 3, kernel_size=3, weight_norm=True),))
      >>> params, apply = build(stack, "haiku")
      >>> apply(params, inputs(stack)).shape
      (2, 3, 3)
    """
    if framework not in _BUILDERS:
        raise ValueError(f"`framework` must be one of {STACK_FRAMEWORKS}, got {framework!r}.")
    model, apply = _BUILDERS[framework](stack)
    return _randomized(model, framework, seed), apply
