"""What every adapter shares: the record of one normalized weight, and data-dependent init.

Framework-free (jax and numpy only): each adapter reads its own models into
`NormalizedWeight` records and runs its own forward passes; the order of work
and the arithmetic live here once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from .. import core

__all__ = [
    "wrapper_weights",
    "CallRecorder",
    "ModelTrace",
    "NormalizedWeight",
    "data_dependent_init_in_order",
    "one_per_layer",
]


@dataclasses.dataclass(frozen=True)
class NormalizedWeight:
    """One weight-normalized parameter of a model, as the model itself says.

    Every adapter's `weight_norms` returns these: which weight each scale
    normalizes, read from the wrappers (never guessed from names or shapes).
    Paths are keys of the adapter's `flatten` of the same model or variables.

    Attributes:
      weight: the path of the direction `v`.
      scale: the path of its scale `g`; None when the wrapper has
        `use_scale=False`.
      layer: the path of the module holding the weight (whose output is the
        pre-activation data-dependent init looks at); `""` for the top level.
      wrapper: the path of the weight-norm wrapper (`""` at the top level).
      feature_axes: the axes of the weight that keep their own norm, sorted and
        non-negative, where the model records them (Equinox and NNX wrappers,
        a traced Linen or Haiku model); None where only the scale's shape says
        them (Linen variables and Haiku params on their own).
      epsilon: the wrapper's epsilon, where the model records it; else None.
    """

    weight: str
    scale: str | None
    layer: str
    wrapper: str
    feature_axes: tuple[int, ...] | None = None
    epsilon: float | None = None


def wrapper_weights(
    wrapper: str, field: str, flat: Mapping[str, Any], config: core.WeightNormConfig
) -> list[NormalizedWeight]:
    """What one wrapper normalizes, as its config says.

    Args:
      wrapper: the wrapper's path (`""` at the top level).
      field: the wrapper's attribute holding its layer (Equinox `layer`, NNX
        `layer_instance`); its scales are under `scales`.
      flat: the layer's parameters, keyed from the layer.
      config: the wrapper's settings.
    """
    found = []
    for path in core.select(flat, config.variable_filter):
        weight = "/".join(filter(None, (wrapper, field, path)))
        scale = "/".join(filter(None, (wrapper, "scales", core.scale_path(path))))
        found.append(
            NormalizedWeight(
                weight,
                scale if config.use_scale else None,
                weight.rsplit("/", 1)[0],
                wrapper,
                core.kept_axes(path, tuple(flat[path].shape), config),
                config.epsilon,
            )
        )
    return found


def one_per_layer(weights: Iterable[NormalizedWeight]) -> dict[str, NormalizedWeight]:
    """`{layer path: its normalized weight}` of the weights that have a scale.

    Raises:
      ValueError: when a layer has two normalized params: data-dependent init
        sets one scale per layer, and would otherwise leave the other alone.
    """
    owners: dict[str, NormalizedWeight] = {}
    for weight in weights:
        if weight.scale is None:
            continue
        if weight.layer in owners:
            raise ValueError(
                f"Data-dependent init sets one scale per layer, but layer {weight.layer!r} "
                f"has two normalized params ({owners[weight.layer].weight!r} and "
                f"{weight.weight!r}). Select only its weight (the default `variable_filter`)."
            )
        owners[weight.layer] = weight
    return owners


class CallRecorder:
    """Calls a layer and appends `(name, output)` to `calls`.

    Data-dependent init puts one in place of a wrapped layer, in a copy of the
    model made for one forward pass, to collect its pre-activations in call order.
    """

    def __init__(self, layer: Any, name: str, calls: list[tuple[str, Any]]) -> None:
        self.layer, self.name, self.calls = layer, name, calls

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out = self.layer(*args, **kwargs)
        self.calls.append((self.name, out))
        return out


class RecordingWrapper:
    """Stands in for a wrapper in the copy of a model that data-dependent init runs.

    Calls the wrapper's normalized layer (`wrapper.normalized_layer()`, a fresh
    layer) with a `CallRecorder` in place of each submodule whose outputs are
    wanted: `recorded` lists each one's path in the layer and its name. How a path
    is replaced is the framework's: `place`.
    """

    def __init__(
        self,
        wrapper: Any,
        recorded: list[tuple[tuple[Any, ...], str]],
        calls: list[tuple[str, Any]],
    ) -> None:
        self.wrapper, self.recorded, self.calls = wrapper, recorded, calls

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        layer = self.wrapper.normalized_layer()
        for path, name in self.recorded:
            record = lambda node, name=name: CallRecorder(node, name, self.calls)  # noqa: E731
            layer = self.place(layer, path, record)
        return layer(*args, **kwargs)

    def place(self, layer: Any, path: tuple[Any, ...], record: Callable[[Any], Any]) -> Any:
        """`layer` with its submodule at `path` (`()`: itself) replaced by `record(it)`."""
        raise NotImplementedError


#: `(flat params, layer paths) -> [(layer path, output), ...]` in call order.
Runner = Callable[[dict[str, Any], set[str]], list[tuple[str, Any]]]


def data_dependent_init_in_order(
    flat: Mapping[str, Any],
    weights: Iterable[NormalizedWeight],
    run: Runner,
    *,
    bias_name: str,
    feature_axis: int,
    epsilon: float,
) -> dict[str, Any]:
    """Data-dependent init of every wrapped layer of a model, one after another.

    Each layer, in the order the model calls them, gets scale 1 and bias 0,
    its outputs `t` on the batch are recorded, and it gets `scale = 1/std(t)`
    and `bias = -mean(t)/std(t)` per output feature
    (`weightnorm.data_dependent_scale_bias`); later layers see the outputs of
    those already initialized.

    Args:
      flat: every parameter of the model, `{path: array}`.
      weights: the model's normalized weights (the adapter's `weight_norms`).
      run: runs the model with the given parameters and returns the outputs
        of the calls of the given layers, in call order.
      bias_name: the name of a layer's bias; `"<layer>/<bias_name>"` in `flat`
        is its bias, if there. A bias may carry size-1 axes (Equinox's conv
        biases are `(out, 1, ...)`).
      feature_axis: the axis of the output features in the outputs.
      epsilon: added to the variance.

    Returns:
      `flat` with the scales and biases set.

    Raises:
      ValueError: when the model has no normalized weight with a scale, a
        layer is not called, a layer has two normalized params, or its scale
        or bias is not one per output feature.
    """
    flat = dict(flat)
    owners = one_per_layer(weights)
    if not owners:
        raise ValueError("The model holds no weightnorm `WeightNorm` scales to initialize.")
    order = list(dict.fromkeys(layer for layer, _ in run(flat, set(owners))))
    missing = sorted(set(owners) - set(order))
    if missing:
        raise ValueError(f"The wrapped layers {missing} were not called on this batch.")
    for layer in order:
        scale_path = owners[layer].scale
        bias_path = f"{layer}/{bias_name}" if layer else bias_name
        bias_path = bias_path if bias_path in flat else None
        old_scale = jnp.asarray(flat[scale_path])
        flat[scale_path] = jnp.ones_like(old_scale)
        if bias_path is not None:
            flat[bias_path] = jnp.zeros_like(flat[bias_path])
        t = jnp.asarray(run(flat, {layer})[0][1])
        scale, bias = core.data_dependent_scale_bias(t, feature_axis=feature_axis, epsilon=epsilon)
        if old_scale.shape != scale.shape:
            raise ValueError(
                f"Data-dependent init needs one scale per output feature, but scale "
                f"{scale_path!r} has shape {old_scale.shape} and the layer has "
                f"{scale.shape[0]} output features. Use the layer's output-feature axis "
                "as `feature_axes` (the default)."
            )
        flat[scale_path] = scale.astype(old_scale.dtype)
        if bias_path is not None:
            old_bias = jnp.asarray(flat[bias_path])
            if _squeezed(old_bias.shape) != bias.shape:
                raise ValueError(
                    f"Bias {bias_path!r} has shape {old_bias.shape}, expected {bias.shape} "
                    "(one per output feature, size-1 axes allowed) for data-dependent init."
                )
            flat[bias_path] = bias.reshape(old_bias.shape).astype(old_bias.dtype)
    return flat


def _squeezed(shape: tuple[int, ...]) -> tuple[int, ...]:
    """`shape` without its size-1 axes, keeping one axis for a single feature."""
    kept = tuple(size for size in shape if size != 1)
    return kept or (int(np.prod(shape)),)


@dataclasses.dataclass(frozen=True)
class ModelTrace:
    """What running a model abstractly tells: its structure, call order and weight norms.

    Attributes:
      variables: the model's variables or params (`jax.ShapeDtypeStruct`s when
        made by the trace).
      modules: `{module path: module type}` in the order of first call.
      weight_norms: the model's `NormalizedWeight`s, with their wrappers'
        feature axes and epsilon.
    """

    variables: Any
    modules: Mapping[str, type]
    weight_norms: tuple[NormalizedWeight, ...]
