"""Flax NNX adapter: weight normalization that never overwrites the wrapped layer.

`WeightNorm(layer)` takes `flax.nnx.WeightNorm`'s arguments and gives its
numbers, but each call runs a copy of the layer whose selected parameters hold
`g * v / ||v||`, so the wrapped layer keeps the raw directions `v`. flax's class
writes the normalized weight back into the layer on every call. The scales are
`nnx.Param`s (trainable), keyed as the core keys them: `scales["kernel/scale"]`.
The math is the core's. `flatten` and `unflatten` convert NNX state to and from
flat `{"a/b/c": array}` dicts; `fold`, `unfold` and `data_dependent_init` work
on whole models holding wrappers.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

try:
    from flax import nnx
except ImportError as error:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "weightnorm.adapters.nnx needs flax: pip install 'weightnorm[nnx]'"
    ) from error
import jax
import jax.numpy as jnp

from .. import core
from ._common import (
    NormalizedWeight,
    RecordingWrapper,
    data_dependent_init_in_order,
    wrapper_weights,
)

__all__ = [
    "WeightNorm",
    "data_dependent_init",
    "flatten",
    "fold",
    "unflatten",
    "unfold",
    "weight_norms",
]

_FILTER_CLASSES = (
    type,
    bool,
    type(Ellipsis),
    nnx.filterlib.WithTag,
    nnx.filterlib.PathContains,
    nnx.filterlib.PathIn,
    nnx.filterlib.OfType,
    nnx.filterlib.Any,
    nnx.filterlib.All,
    nnx.filterlib.Not,
    nnx.filterlib.Everything,
    nnx.filterlib.Nothing,
)


#: The default filter, as in flax: params with a path component equal to "kernel".
_KERNELS = nnx.PathContains("kernel")


def _is_nnx_filter(variable_filter: Any) -> bool:
    """An NNX filter object, a Variable type, `...`, a bool, or a list/tuple of them."""
    if isinstance(variable_filter, (list, tuple)):
        return bool(variable_filter) and all(_is_nnx_filter(f) for f in variable_filter)
    return isinstance(variable_filter, _FILTER_CLASSES)


def _state(node: Any) -> nnx.State:
    if isinstance(node, nnx.State):
        return node
    if isinstance(node, nnx.Module):
        return nnx.state(node)
    raise TypeError(
        f"Expected an nnx.Module or an nnx.State, got {type(node).__name__}. "
        "Pass the model itself or `nnx.state(model)`."
    )


def _variables(state: nnx.State) -> dict[str, tuple[tuple[Any, ...], nnx.Variable]]:
    """`{"a/0/b": (path, variable)}` for every variable of `state`, in NNX's order."""
    keyed: dict[str, tuple[tuple[Any, ...], nnx.Variable]] = {}
    for path, variable in nnx.to_flat_state(state):
        key = "/".join(map(str, path))
        if key in keyed:
            raise ValueError(
                f"Two different paths give the same flat key {key!r}: {keyed[key][0]} "
                f"and {path}. Rename one of them."
            )
        keyed[key] = (path, variable)
    return keyed


class WeightNorm(nnx.Module):
    """L2 weight normalization (Salimans & Kingma 2016) of a wrapped NNX module.

    For each call, the selected `nnx.Param`s `v` of `layer_instance` are
    replaced by `scale * v * rsqrt(sum(v * v over the non-feature axes) + epsilon)`
    in a copy of the layer, and the copy is called. The wrapped layer's params
    are never written: they stay the raw directions `v` that the optimizer
    trains. Every other variable (BatchNorm's `BatchStat`s, dropout's rng
    counts, unselected params) is the layer's own, so its updates land in the
    layer. Same numbers as `flax.nnx.WeightNorm`'s first call on fresh weights
    and as `weightnorm.adapters.linen.WeightNorm`.

    Attributes:
      layer_instance: the wrapped module, holding the directions `v`.
      scales: `{"<path in layer>/scale": nnx.Param}`, e.g. `"kernel/scale"`,
        so `flatten(wrapper)` has `"scales/kernel/scale"`; empty when
        `use_scale=False`. A scale is sharded like its param's feature axes
        (the param's `out_sharding` names at those axes, and its mesh).
      config: the core settings (a static attribute).

    Examples:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> model = WeightNorm(nnx.Linear(3, 4, rngs=nnx.Rngs(0)))
      >>> {path: value.shape for path, value in flatten(model).items()}
      {'layer_instance/bias': (4,), 'layer_instance/kernel': (3, 4), 'scales/kernel/scale': (4,)}
      >>> model(jnp.ones((2, 3))).shape
      (2, 4)
    """

    def __init__(
        self,
        layer_instance: nnx.Module,
        *,
        feature_axes: core.FeatureAxes = -1,
        use_scale: bool = True,
        scale_init: str | Callable[..., Any] = jax.nn.initializers.ones,
        epsilon: float = 1e-12,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        variable_filter: Any = _KERNELS,
        rngs: nnx.Rngs | None = None,
        stack_axes: int = 0,
    ) -> None:
        """Wraps `layer_instance` and makes the scales of its selected params.

        Args:
          layer_instance: the module to wrap; its selected params become the
            directions `v`.
          feature_axes: axes that keep their own norm and scale (default: the
            last); None means one norm over the whole array.
          use_scale: whether to learn a scale per feature.
          scale_init: flax's `ones` initializer (default; `"ones"` is the
            same), `"norm"` (each scale is the norm of its param, so the
            wrapper computes what the plain layer computes, as torch's
            `weight_norm` does; see `unfold`), or an initializer
            `(key, shape, dtype) -> array`.
          epsilon: added to the sum of squares inside the square root.
          dtype: dtype of the normalized params (default: promoted from the
            param and its scale).
          param_dtype: dtype of the scales.
          variable_filter: which `nnx.Param`s of the layer to normalize (other
            variable types never are). An NNX filter (`nnx.PathContains`, the
            default, selects params with a path component equal to `"kernel"`;
            also `nnx.OfType` or a Variable type, `nnx.Any`, `nnx.All`,
            `nnx.Not`, `nnx.Everything`, or a list/tuple of them) is applied
            as flax applies it, to `(path tuple, variable)`, when the wrapper
            is made. Otherwise as in every weightnorm adapter: None or empty for
            every param, a string or strings by flax's substring rule on the
            '/'-joined path (`"layers/0/kernel"`), or a predicate on that path.
          rngs: random streams; a key is drawn from `rngs.params()` only when
            `scale_init` needs one, so a deterministic `scale_init` (the
            default `ones`, `"norm"`) leaves the streams as they were.
          stack_axes: leading axes of stacked params (e.g. an `nnx.vmap`-built
            ensemble) kept out of the reduction, so each member keeps its own
            norm; `feature_axes` then count within one member. Default 0.

        Warns:
          NoVariableSelectedWarning: when the filter selects none of the
            layer's params (once, here; never at a call).

        Raises:
          TypeError: when `layer_instance` is not an `nnx.Module`, and as
            `WeightNormConfig` for settings of the wrong type.
          ValueError: as `WeightNormConfig` for settings out of range; naming
            the param's path and shape when a feature axis does not fit it;
            when `scale_init` needs randomness and `rngs` is None; for
            `"norm"`, naming a selected param that holds NaN or inf.
        """
        if not isinstance(layer_instance, nnx.Module):
            raise TypeError(
                f"`layer_instance` must be an nnx.Module, got {type(layer_instance).__name__}. "
                "Wrap a module instance, e.g. `WeightNorm(nnx.Linear(3, 4, rngs=rngs))`."
            )
        params = _variables(nnx.state(layer_instance, nnx.Param))
        if _is_nnx_filter(variable_filter):
            predicate = nnx.filterlib.to_predicate(variable_filter)
            variable_filter = core.PathFilter(
                frozenset(key for key, (path, param) in params.items() if predicate(path, param)),
                f"selected by {variable_filter!r}",
            )
        self.config = core.WeightNormConfig(
            epsilon=epsilon,
            dtype=dtype,
            param_dtype=param_dtype,
            use_scale=use_scale,
            scale_init=scale_init,
            feature_axes=feature_axes,
            variable_filter=variable_filter,
            stack_axes=stack_axes,
        )
        self.layer_instance = layer_instance
        flat = {key: param.get_value() for key, (_, param) in params.items()}
        core.scale_shapes(flat, self.config)  # checks the axes before anything else
        if core.select(flat, self.config.variable_filter):
            scales = _init_scales(flat, self.config, rngs)
        else:  # warn here, pointing at the caller, rather than from inside init_scales
            core.warn_if_nothing_selected(flat, self.config, stacklevel=_caller_stacklevel())
            scales = {}
        self.scales = nnx.data(
            {
                key: _scale_param(scale, core.weight_path(key), params, self.config)
                for key, scale in scales.items()
            }
        )

    def normalized_layer(self) -> nnx.Module:
        """A copy of the layer whose selected params hold `scale * v / ||v||`.

        Only the selected params are new variables; every other variable is
        shared with the wrapped layer (`nnx.clone` the result for an
        independent plain module). The wrapped layer is not changed.
        """
        graphdef, params, rest = nnx.split(self.layer_instance, nnx.Param, ...)
        variables = _variables(params)
        flat = {key: param.get_value() for key, (_, param) in variables.items()}
        scales = {key: scale.get_value() for key, scale in self.scales.items()}
        normalized = core.normalize(flat, scales, self.config)
        # `normalize` returns the variables it does not select as they are (the same
        # objects), so a new object marks a normalized one: no second selection pass.
        params = nnx.from_flat_state(
            (path, param if normalized[key] is flat[key] else param.replace(normalized[key]))
            for key, (path, param) in variables.items()
        )
        return nnx.merge(graphdef, params, rest, copy=False)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Calls the wrapped layer with its selected params weight-normalized.

        Every argument is passed through to `layer_instance`, and its result
        returned.
        """
        return self.normalized_layer()(*args, **kwargs)


#: weightnorm's and flax.nnx's source folders: the frames a warning should skip.
_OWN_DIRS = tuple(
    os.path.dirname(path) + os.sep for path in (os.path.dirname(__file__), nnx.__file__)
)


def _caller_stacklevel() -> int:
    """The `stacklevel` for `warn_if_nothing_selected` called here that names the user's line.

    Counts the frames of weightnorm and flax (the Module metaclass's
    `__call__`) between `WeightNorm.__init__` and the user's code.
    """
    level, frame = 3, sys._getframe(2)  # 0: here, 1: WeightNorm.__init__
    while frame is not None and frame.f_code.co_filename.startswith(_OWN_DIRS):
        level, frame = level + 1, frame.f_back
    return level


def _init_scales(
    flat: Mapping[str, Any], config: core.WeightNormConfig, rngs: nnx.Rngs | None
) -> dict[str, jax.Array]:
    """`core.init_scales`, drawing one key from `rngs.params` only when `scale_init` needs one."""
    if rngs is None and core.needs_key(config.scale_init):
        raise ValueError(
            f"`scale_init` needs randomness to make {sorted(core.scale_shapes(flat, config))}: "
            "pass `rngs=nnx.Rngs(0)` (or any seed) to WeightNorm."
        )
    return core.init_scales(flat, config, None if rngs is None else rngs.params)


def _scale_param(
    scale: jax.Array, path: str, params: Mapping[str, Any], config: core.WeightNormConfig
) -> nnx.Param:
    """The scale of `params[path]` as an `nnx.Param`, sharded as the param's kept axes are.

    A param made with `nnx.with_partitioning(init, (None, "model"))` carries
    `out_sharding=(None, "model")`; the scale of its feature axis `-1` gets
    `("model",)` (the core's `scale_partition_specs` rule, stacked axes
    included), and the param's mesh (from its metadata or its value's
    sharding), so it is made sharded even outside the mesh's context.
    """
    param = params[path][1]
    metadata = param.get_metadata()
    names = metadata.get("out_sharding")
    if not names:
        return nnx.Param(scale)
    flat = {path: param.get_value()}
    spec = core.scale_partition_specs(flat, {path: tuple(names)}, config)[core.scale_path(path)]
    sharding = {"out_sharding": tuple(spec)}
    for name in ("mesh", "sharding_rules", "eager_sharding"):
        if metadata.get(name) is not None:
            sharding[name] = metadata[name]
    value_sharding = getattr(param.get_value(), "sharding", None)
    if sharding.get("mesh") is None and isinstance(value_sharding, jax.sharding.NamedSharding):
        sharding["mesh"] = value_sharding.mesh
    return nnx.Param(scale, **sharding)


def flatten(node: nnx.Module | nnx.State) -> dict[str, Any]:
    """The variables of an NNX module or state as a flat `{"a/0/b": array}` dict.

    Every variable type is included (params, batch stats, rng keys and
    counts); pass `nnx.state(model, nnx.Param)` for the params alone. Keys of
    WeightNorm scales contain '/', so rebuild with `unflatten(flat, like)`.

    Args:
      node: an `nnx.Module`, or an `nnx.State` such as `nnx.state(model, nnx.Param)`.

    Returns:
      `{path: value}` with the paths '/'-joined (list indices as digits).

    Raises:
      TypeError: when `node` is neither a module nor a state.
      ValueError: when two paths give the same key, naming both.

    Examples:
      >>> from flax import nnx
      >>> model = nnx.Sequential(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), nnx.relu)
      >>> sorted(flatten(nnx.state(model, nnx.Param)))
      ['layers/0/bias', 'layers/0/kernel']
    """
    return {key: variable.get_value() for key, (_, variable) in _variables(_state(node)).items()}


def unflatten(flat: Mapping[str, Any], like: Any) -> Any:
    """A new module or state of `like`'s structure holding the values of `flat`.

    The inverse of `flatten`: each variable of `like` is copied (its type and
    metadata, e.g. sharding, kept) with the value of `flat` at its key. `like`
    itself is not changed; for a module, `nnx.update(model, unflatten(flat,
    nnx.state(model)))` loads the values into it in place.

    Args:
      flat: a `{path: value}` dict, as made by `flatten`.
      like: an `nnx.Module` (a new module is returned) or an `nnx.State` (a
        new state is returned).

    Returns:
      A module or state like `like`.

    Raises:
      ValueError: listing the keys that `flat` lacks or has in excess.
      TypeError: when `like` is neither a module nor a state, or `flat` is not
        a dict with string keys.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> linear = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
      >>> zeroed = unflatten(jax.tree.map(jnp.zeros_like, flatten(linear)), like=linear)
      >>> float(abs(zeroed.kernel[...]).sum()), float(abs(linear.kernel[...]).sum()) > 0
      (0.0, True)
    """
    variables = _variables(_state(like))
    values = core.unflatten(
        flat, like={key: variable.get_value() for key, (_, variable) in variables.items()}
    )
    state = nnx.from_flat_state(
        (path, variable.replace(values[key])) for key, (path, variable) in variables.items()
    )
    if isinstance(like, nnx.State):
        return state
    graphdef, _ = nnx.split(like)
    return nnx.merge(graphdef, state)


def _check_module(model: Any, name: str = "model") -> None:
    if not isinstance(model, nnx.Module):
        raise TypeError(
            f"`{name}` must be an nnx.Module, got {type(model).__name__}. Pass the model "
            "itself (not `nnx.state(model)`)."
        )


def _is_container(node: Any) -> bool:
    return isinstance(node, (nnx.List, nnx.Dict, list, dict))


def _child(node: Any, key: Any) -> Any:
    return node[key] if _is_container(node) else getattr(node, key)


def _set_child(node: Any, key: Any, value: Any) -> None:
    if _is_container(node):
        node[key] = value
    else:
        setattr(node, key, value)


def _at(node: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        node = _child(node, key)
    return node


def _wrappers(model: nnx.Module) -> list[tuple[tuple[Any, ...], WeightNorm]]:
    """(graph path, wrapper) of every `WeightNorm` in `model`, each once, outermost first."""
    found = [(path, node) for path, node in nnx.iter_graph(model) if isinstance(node, WeightNorm)]
    return sorted(found, key=lambda item: len(item[0]))


def fold(model: nnx.Module) -> nnx.Module:
    """A plain copy of `model`: every `WeightNorm` replaced by its layer, weights folded.

    Each wrapper becomes its `normalized_layer()`: the wrapped layer with
    `scale * v / ||v||` baked into its selected params and no scales, so the
    result computes what `model` computes, without a norm per call. `model`
    may be a `WeightNorm` (the result is then its plain layer) or any module
    holding some (in attributes, `nnx.List`s or `nnx.Dict`s; a wrapper used
    twice becomes one plain layer used twice). `model` is not changed: the
    result is a copy sharing no variable with it. `unfold` goes the other way.

    Args:
      model: an `nnx.Module`.

    Returns:
      The folded copy; a plain copy of `model` when it holds no `WeightNorm`.

    Raises:
      TypeError: when `model` is not an `nnx.Module`.
      ValueError: naming a selected direction that holds NaN or inf.

    Examples:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> model = WeightNorm(nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
      >>> plain = fold(model)
      >>> type(plain).__name__, bool(jnp.allclose(plain(jnp.ones(2)), model(jnp.ones(2))))
      ('Linear', True)
    """
    _check_module(model)
    model = nnx.clone(model)
    plain: dict[int, tuple[WeightNorm, nnx.Module]] = {}  # the wrapper is kept alive with its id
    while found := _wrappers(model):
        path, wrapper = found[0]
        if id(wrapper) not in plain:
            params = _variables(nnx.state(wrapper.layer_instance, nnx.Param))
            flat = {key: param.get_value() for key, (_, param) in params.items()}
            selected = core.select(flat, wrapper.config.variable_filter)
            core.check_finite(flat, selected, "the folded weight")
            plain[id(wrapper)] = (wrapper, wrapper.normalized_layer())
        if not path:
            model = plain[id(wrapper)][1]
        else:
            _set_child(_at(model, path[:-1]), path[-1], plain[id(wrapper)][1])
    return model


def unfold(layer: nnx.Module, **kwargs: Any) -> WeightNorm:
    """`WeightNorm(layer, scale_init="norm", **kwargs)`: a wrapper with `layer`'s outputs.

    Each selected param keeps its value as direction `v` and gets its norm as
    scale, so a plain (e.g. pretrained) model becomes a weight-normed one that
    computes the same function; `fold` gives the plain model back. As with
    `WeightNorm`, the wrapper holds `layer` itself (training it updates
    `layer`'s params); pass `nnx.clone(layer)` to keep the original apart.

    Args:
      layer: the plain module.
      **kwargs: any other `WeightNorm` argument (`feature_axes`,
        `variable_filter`, `epsilon`, ...).

    Returns:
      The wrapper.

    Raises:
      ValueError: as `WeightNorm`; when `use_scale=False` (no scale can hold
        the norms) or `scale_init` is given; naming a selected param that
        holds NaN or inf.

    Examples:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> linear = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
      >>> bool(jnp.allclose(unfold(linear)(jnp.ones(2)), linear(jnp.ones(2))))
      True
    """
    _check_module(layer, "layer")
    if "scale_init" in kwargs:
        raise ValueError(
            "`unfold` sets `scale_init='norm'`; for another initialization call "
            "`WeightNorm(layer, scale_init=...)`."
        )
    if kwargs.get("use_scale", True) is not True:
        raise ValueError(
            "`unfold` needs `use_scale=True`: without scales the wrapper cannot keep the "
            "layer's function."
        )
    return WeightNorm(layer, scale_init="norm", **kwargs)


def weight_norms(node: nnx.Module | nnx.State) -> list[NormalizedWeight]:
    """Every `WeightNorm` in an NNX model, and exactly which param each scale normalizes.

    From a module, read from the wrappers themselves: a wrapper at `P`
    scales `P/layer_instance/X` with `P/scales/X/scale`, over the feature
    axes and with the epsilon of its config. From a bare `nnx.State` the same
    naming rule says the params (exact: the wrapper's attribute names are
    fixed), but not the axes or epsilon (None).

    Args:
      node: an `nnx.Module`, or an `nnx.State` (e.g. `nnx.state(model, nnx.Param)`).

    Returns:
      One `NormalizedWeight` per normalized param (with `scale=None` for a
      wrapper with `use_scale=False`), outermost wrappers first; paths are
      keys of `flatten(node)`. A wrapper used at two places is read once, at
      its first.

    Examples:
      >>> from flax import nnx
      >>> model = nnx.Sequential(WeightNorm(nnx.Linear(2, 3, rngs=nnx.Rngs(0))))
      >>> [(w.weight, w.scale) for w in weight_norms(model)]
      [('layers/0/layer_instance/kernel', 'layers/0/scales/kernel/scale')]
    """
    if isinstance(node, nnx.State):
        flat = flatten(node)
        found = []
        for key in flat:
            parts = key.split("/")
            for i, part in enumerate(parts[:-1]):
                name = "/".join(parts[i + 1 :])
                if part != "scales" or not core.is_scale_path(name):
                    continue
                wrapper = "/".join(parts[:i])
                weight = "/".join(filter(None, (wrapper, "layer_instance", core.weight_path(name))))
                if weight in flat:
                    found.append(NormalizedWeight(weight, key, weight.rsplit("/", 1)[0], wrapper))
                    break
        return found
    _check_module(node)
    found, seen = [], set()
    for path, wrapper in _wrappers(node):
        if id(wrapper) in seen:
            continue
        seen.add(id(wrapper))
        params = _variables(nnx.state(wrapper.layer_instance, nnx.Param))
        flat = {key: param.get_value() for key, (_, param) in params.items()}
        prefix = "/".join(map(str, path))
        found += wrapper_weights(prefix, "layer_instance", flat, wrapper.config)
    return found


class _Recording(RecordingWrapper):
    """A wrapper's stand-in; paths are graph paths, replaced in place (the layer is a copy)."""

    def place(self, layer: Any, path: tuple[Any, ...], record: Callable[[Any], Any]) -> Any:
        if not path:
            return record(layer)
        parent = _at(layer, path[:-1])
        _set_child(parent, path[-1], record(_child(parent, path[-1])))
        return layer


def data_dependent_init(
    model: nnx.Module, *args: Any, epsilon: float = 1e-6, **kwargs: Any
) -> nnx.Module:
    """Data-dependent initialization (Salimans & Kingma 2016, section 3) of every wrapped layer.

    `model` (a `WeightNorm`, or any module holding some) is called as
    `model(*args, **kwargs)` on a batch. For each weight-normed layer, in the
    order the model calls them, its outputs are computed with scale 1 and
    bias 0 (so with the normalized direction: `t = x . v / ||v||`), and it
    gets `scale = 1 / std(t)` and `bias = -mean(t) / std(t)` per output
    feature (the last axis: NNX's Linear and Conv;
    `weightnorm.data_dependent_scale_bias`). Later layers see the outputs of
    those already initialized, so afterwards the pre-activations of every
    wrapped layer have mean 0 and std 1 on the batch. A layer's bias is its
    param `bias`; without one only the scale is set. The model is called
    eagerly, on copies, as it is (so in `eval()` mode for dropout-free
    moments); its rng counts and batch statistics are not advanced.

    Args:
      model: the NNX model.
      *args: the batch (and any other positional arguments of `model`).
      epsilon: added to the variance.
      **kwargs: keyword arguments of `model`.

    Returns:
      A copy of `model` with the scales and biases set (`model` is not
      changed; `nnx.update(model, nnx.state(result))` loads them in place).

    Raises:
      TypeError: when `model` is not an `nnx.Module`.
      ValueError: when `model` holds no `WeightNorm` with scales, a wrapped
        layer is not called, or its scale is not one per output feature.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> model = WeightNorm(nnx.Linear(3, 2, rngs=nnx.Rngs(0)))
      >>> x = jax.random.normal(jax.random.key(1), (64, 3))
      >>> y = data_dependent_init(model, x)(x)
      >>> jnp.round(y.mean(0), 3) + 0.0, jnp.round(y.std(0), 3)
      (Array([0., 0.], dtype=float32), Array([1., 1.], dtype=float32))
    """
    _check_module(model)
    weights = weight_norms(model)
    if not any(w.scale is not None for w in weights):
        raise ValueError(
            f"{type(model).__name__} holds no weightnorm `WeightNorm` with scales to initialize."
        )

    def with_params(flat_params: Mapping[str, Any]) -> nnx.Module:
        copy = nnx.clone(model)
        nnx.update(copy, unflatten(flat_params, like=nnx.state(copy, nnx.Param)))
        return copy

    def run(flat_params: Mapping[str, Any], wanted: set[str]) -> list[tuple[str, Any]]:
        current, calls = with_params(flat_params), []
        for path, wrapper in _wrappers(current):
            prefix = "/".join(map(str, path))
            recorded = [
                (tuple(_graph_path(w.layer, prefix)), w.layer)
                for w in weights
                if w.wrapper == prefix and w.layer in wanted
            ]
            if not recorded:
                continue
            stand_in = _Recording(wrapper, recorded, calls)
            if not path:
                current = stand_in
            else:
                _set_child(_at(current, path[:-1]), path[-1], stand_in)
        current(*args, **kwargs)
        return calls

    flat = data_dependent_init_in_order(
        flatten(nnx.state(model, nnx.Param)),
        weights,
        run,
        bias_name="bias",
        feature_axis=-1,
        epsilon=epsilon,
    )
    return with_params(flat)


def _graph_path(layer: str, wrapper: str) -> list[Any]:
    """The graph path, within its wrapper's `layer_instance`, of the module at `layer`."""
    relative = layer.removeprefix(wrapper).strip("/").split("/")[1:]  # drop "layer_instance"
    return [int(part) if part.isdigit() else part for part in relative]
