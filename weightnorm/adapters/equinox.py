"""Equinox adapter: a weight-norm wrapper around any `eqx.Module`.

The wrapper stores the raw directions `v` (inside the wrapped layer) and the
scales `g`; the math is the core's. Where `equinox.nn.WeightNorm` falls short
this one differs: an `epsilon` keeps all-zero weights finite, every argument
(`key=`, a `state`, ...) reaches the wrapped layer, every affine weight inside
a whole model is normalized (not one named attribute of one layer), and two
identically built wrappers are `eqx.tree_equal`, so `eqx.filter_jit` does not
retrace.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

try:
    import equinox as eqx
except ImportError as error:  # pragma: no cover - exercised in a test that hides equinox
    raise ImportError(
        "weightnorm.adapters.equinox needs equinox: pip install 'weightnorm[equinox]'"
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
    "affine_weights",
    "data_dependent_init",
    "flatten",
    "fold",
    "unflatten",
    "unfold",
    "weight_norms",
]

_Layer = TypeVar("_Layer")

#: The layers whose `weight` the default filter selects (subclasses included:
#: `Conv1d/2d/3d`, `ConvTranspose1d/2d/3d`, user subclasses).
_AFFINE_LAYERS = (eqx.nn.Linear, eqx.nn.Conv, eqx.nn.ConvTranspose)


class _AffineWeights:
    """Sentinel default of `WeightNorm`'s `variable_filter`."""

    def __repr__(self) -> str:
        return "<weights of affine layers>"


_AFFINE_WEIGHTS = _AffineWeights()


def _is_state_index(node: Any) -> bool:
    return isinstance(node, eqx.nn.StateIndex)


def _split_params(module: Any) -> tuple[Any, Any]:
    """(inexact arrays, everything else) of a module.

    The initial values inside `eqx.nn.StateIndex` are state, not parameters,
    so they go with the rest whatever the filter says.
    """
    return eqx.partition(module, _is_inexact, is_leaf=_is_state_index)


def _is_array(node: Any) -> bool:
    """An array, or an array's shape and dtype (in a module from `eqx.filter_eval_shape`)."""
    return eqx.is_array(node) or isinstance(node, jax.ShapeDtypeStruct)


def _is_inexact(node: Any) -> bool:
    """A floating or complex array, or the shape and dtype of one."""
    if isinstance(node, jax.ShapeDtypeStruct):
        return bool(jnp.issubdtype(node.dtype, jnp.inexact))
    return eqx.is_inexact_array(node)


def affine_weights(layer: Any) -> core.PathFilter:
    """The default filter: the `weight` of every Linear, Conv and ConvTranspose in `layer`.

    Subclasses count (`Conv2d`, `ConvTranspose1d`, ...). LayerNorm, GroupNorm,
    Embedding and every bias are left out.

    Args:
      layer: an Equinox module (or any pytree holding modules).

    Returns:
      A `weightnorm.PathFilter` of the paths of those weights, keyed as
      `flatten` keys them.

    Examples:
      >>> import jax, equinox as eqx
      >>> mlp = eqx.nn.MLP(2, 3, width_size=4, depth=1, key=jax.random.key(0))
      >>> affine_weights(mlp)
      PathFilter(['layers/0/weight', 'layers/1/weight'])
    """
    found = jax.tree_util.tree_flatten_with_path(
        layer, is_leaf=lambda node: isinstance(node, _AFFINE_LAYERS)
    )[0]
    weight = jax.tree_util.GetAttrKey("weight")
    return core.PathFilter(
        frozenset(
            core.path_key((*key_path, weight))
            for key_path, node in found
            if isinstance(node, _AFFINE_LAYERS) and node.weight is not None
        )
    )


def _scales_made_at_construction(key: Any, shape: Any, dtype: Any) -> Any:
    """Stands in for `scale_init` in a wrapper whose scales already exist."""
    raise RuntimeError(
        "This WeightNorm made its scales at construction and keeps no `scale_init`; "
        "build a new WeightNorm to make new scales."
    )


class WeightNorm(eqx.Module, Generic[_Layer]):
    """L2 weight normalization (Salimans & Kingma 2016) of a wrapped Equinox module.

    For the call, each selected array `v` of `layer` is replaced by
    `scale * v * rsqrt(sum(v * v over the non-feature axes) + epsilon)`; the
    stored `layer` keeps the raw directions `v`, which are what is trained.
    By default the `weight` of every `eqx.nn.Linear`, `Conv*` and
    `ConvTranspose*` anywhere inside `layer` is normalized per output feature
    (axis 0, Equinox's `(out, in, ...)` layout).

    Attributes:
      layer: the wrapped module, holding the directions `v`.
      scales: `{"<path in layer>/scale": array}`, e.g. `"weight/scale"` for a
        Linear, `"layers/0/weight/scale"` for an `eqx.nn.MLP`.
      config: the settings, a static (hashable, equal-by-value) field. Its
        `scale_init` is only needed to make the scales, so it is not kept
        (two wrappers built alike, even with fresh initializer closures, stay
        equal and share one `filter_jit` trace).

    The default filter is fixed when the wrapper is made: a layer swapped in
    later (`eqx.tree_at`) brings no scales; wrap the new model again instead.

    Examples:
      >>> import jax, jax.numpy as jnp, equinox as eqx
      >>> model = WeightNorm(eqx.nn.Linear(2, 3, key=jax.random.key(0)))
      >>> {name: scale.shape for name, scale in model.scales.items()}
      {'weight/scale': (3,)}
      >>> model(jnp.ones(2)).shape
      (3,)
    """

    layer: _Layer
    scales: dict[str, jax.Array]
    config: core.WeightNormConfig = eqx.field(static=True)

    def __init__(
        self,
        layer: _Layer,
        *,
        epsilon: float = 1e-12,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        use_scale: bool = True,
        scale_init: Any = "ones",
        feature_axes: core.FeatureAxes = 0,
        variable_filter: Any = _AFFINE_WEIGHTS,
        key: jax.Array | None = None,
        stack_axes: int = 0,
    ) -> None:
        """Wraps `layer` and makes the scales of its selected arrays.

        Args:
          layer: the module to wrap; its selected arrays become the directions.
          epsilon: added to the sum of squares inside the square root; keeps
            all-zero weights (and their gradients) finite.
          dtype: dtype of the normalized arrays (default: promoted from the
            array and its scale).
          param_dtype: dtype of the scales.
          use_scale: whether to learn a scale per feature.
          scale_init: `"ones"` (default), `"norm"` (each scale is the norm of
            its weight, so the wrapper computes what `layer` computes, as
            `equinox.nn.WeightNorm` and torch do; see `unfold`), or an
            initializer `(key, shape, dtype) -> array`.
          feature_axes: axes that keep their own norm and scale (default 0, the
            output axis of Equinox weights); None for one norm per array.
          variable_filter: which arrays to normalize. Default: the `weight` of
            every affine layer (see `affine_weights`). Otherwise None for every
            floating array, a string or strings (substrings of the '/'-joined
            path, e.g. `"weight"`), or a predicate on the path (a
            `weightnorm.PathFilter` or a module-level function keeps equal
            wrappers equal; a fresh lambda per wrapper does not). Initial values inside an
            `eqx.nn.StateIndex` are state and never selected.
          key: PRNG key for `scale_init`; may be None when it is deterministic.
          stack_axes: leading axes of stacked weights (an `eqx.filter_vmap`-built
            stack) kept out of the reduction, so each layer keeps its own norm;
            `feature_axes` then count within one layer. Default 0.

        A selected array placed with a `NamedSharding` gets its scale placed
        on the same mesh, sharded like the array's feature axes.

        Raises:
          ValueError: naming the path and shape when a feature axis does not
            fit a selected array; when `scale_init` needs a key and none is given.
          TypeError: for settings of the wrong type.
        """
        if variable_filter is _AFFINE_WEIGHTS:
            variable_filter = affine_weights(layer)
        config = core.WeightNormConfig(
            epsilon=epsilon,
            dtype=dtype,
            param_dtype=param_dtype,
            use_scale=use_scale,
            scale_init=scale_init,
            feature_axes=feature_axes,
            variable_filter=variable_filter,
            stack_axes=stack_axes,
        )
        params, _ = _split_params(layer)
        flat = core.flatten(params)
        self.layer = layer
        self.scales = _placed(
            core.init_scales(flat, config, key), core.scale_shardings(flat, config)
        )
        self.config = config.replace(scale_init=_scales_made_at_construction)

    def normalized_layer(self) -> _Layer:
        """The wrapped layer with its selected arrays replaced by `g * v / ||v||`.

        The stored `layer` is not changed. `fold(model)` does this for every
        wrapper inside a model.
        """
        params, rest = _split_params(self.layer)
        normalized = core.normalize(core.flatten(params), self.scales, self.config)
        return eqx.combine(core.unflatten(normalized, like=params), rest)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Calls the wrapped layer with normalized weights.

        Every argument (`x`, `key=`, a `state`, ...) is passed through unchanged,
        and the layer's return value (e.g. `(y, state)`) is returned as it is.
        """
        return self.normalized_layer()(*args, **kwargs)


def _placed(scales: dict[str, Any], shardings: Mapping[str, Any]) -> dict[str, Any]:
    """Each scale put on its sharding, where it has one."""
    return {
        name: jax.device_put(scale, shardings[name]) if name in shardings else scale
        for name, scale in scales.items()
    }


def flatten(module: Any) -> dict[str, Any]:
    """The array leaves of an Equinox module as a flat `{"a/b/c": array}` dict.

    Non-array fields (activations, static settings) are left out; the
    `jax.ShapeDtypeStruct` leaves of a module made by `eqx.filter_eval_shape`
    count as arrays. Keys of
    WeightNorm scales contain '/', so rebuild with `unflatten(flat, like)`.

    Examples:
      >>> import jax, equinox as eqx
      >>> mlp = eqx.nn.MLP(2, 3, width_size=4, depth=1, key=jax.random.key(0))
      >>> list(flatten(mlp))
      ['layers/0/weight', 'layers/0/bias', 'layers/1/weight', 'layers/1/bias']
    """
    return core.flatten(eqx.filter(module, _is_array))


def unflatten(flat: Mapping[str, Any], like: Any) -> Any:
    """A module of `like`'s structure with the arrays of `flat`, the inverse of `flatten`.

    `like`'s non-array parts (activations, static fields) are kept; its arrays
    are replaced.

    Raises:
      ValueError: listing the keys that `flat` lacks or has in excess.

    Examples:
      >>> import jax, equinox as eqx
      >>> linear = eqx.nn.Linear(2, 3, key=jax.random.key(0))
      >>> zeroed = unflatten(jax.tree.map(jax.numpy.zeros_like, flatten(linear)), like=linear)
      >>> float(abs(zeroed.weight).sum()), zeroed.out_features
      (0.0, 3)
    """
    arrays, rest = eqx.partition(like, _is_array)
    return eqx.combine(core.unflatten(flat, like=arrays), rest)


def _is_wrapper(node: Any) -> bool:
    return isinstance(node, WeightNorm)


def fold(model: Any) -> Any:
    """`model` with every `WeightNorm` inside it replaced by its plain layer, weights folded.

    Each wrapper becomes its `normalized_layer()`: the wrapped layer with
    `scale * v / ||v||` baked into its weights and no scales, computing the
    same outputs. `model` may be a `WeightNorm` or any pytree holding some;
    one holding none is returned as it is. `unfold` goes the other way.

    Examples:
      >>> import jax, jax.numpy as jnp, equinox as eqx
      >>> model = WeightNorm(eqx.nn.Linear(2, 3, key=jax.random.key(0)))
      >>> plain = fold(model)
      >>> type(plain).__name__, bool(jnp.allclose(plain(jnp.ones(2)), model(jnp.ones(2))))
      ('Linear', True)
    """
    return jax.tree.map(
        lambda node: node.normalized_layer() if _is_wrapper(node) else node,
        model,
        is_leaf=_is_wrapper,
    )


def unfold(layer: _Layer, **kwargs: Any) -> WeightNorm[_Layer]:
    """`WeightNorm(layer, scale_init="norm", **kwargs)`: a wrapper with `layer`'s outputs.

    Each selected weight keeps its value as direction and gets its norm as
    scale, so a plain (e.g. pretrained) model becomes a weight-normed one that
    computes the same function; `fold` gives the plain model back.

    Args:
      layer: the plain module.
      **kwargs: any other `WeightNorm` argument (`feature_axes`, ...).

    Raises:
      ValueError: as `WeightNorm`, and when a selected weight holds NaN or inf.

    Examples:
      >>> import jax, jax.numpy as jnp, equinox as eqx
      >>> linear = eqx.nn.Linear(2, 3, key=jax.random.key(0))
      >>> bool(jnp.allclose(unfold(linear)(jnp.ones(2)), linear(jnp.ones(2))))
      True
    """
    return WeightNorm(layer, scale_init="norm", **kwargs)


def _at(key_path: tuple[Any, ...]) -> Callable[[Any], Any]:
    """The `eqx.tree_at` accessor of the node at `key_path`."""

    def where(tree: Any) -> Any:
        for entry in key_path:
            if isinstance(entry, jax.tree_util.GetAttrKey):
                tree = getattr(tree, entry.name)
            elif isinstance(entry, jax.tree_util.SequenceKey):
                tree = tree[entry.idx]
            else:
                tree = tree[entry.key]
        return tree

    return where


def _wrappers(model: Any) -> list[tuple[tuple[Any, ...], WeightNorm]]:
    """(key path, wrapper) of every `WeightNorm` in `model`, outermost only."""
    nodes = jax.tree_util.tree_flatten_with_path(model, is_leaf=_is_wrapper)[0]
    return [(path, node) for path, node in nodes if _is_wrapper(node)]


def weight_norms(model: Any) -> list[NormalizedWeight]:
    """Every `WeightNorm` in an Equinox model, and exactly which weight each scale normalizes.

    Read from the wrappers themselves: a wrapper at `P` scales `P/layer/X`
    with `P/scales/X/scale`, over the feature axes and with the epsilon of
    its own config.

    Args:
      model: a `WeightNorm`, or any pytree holding some.

    Returns:
      One `NormalizedWeight` per normalized array (with `scale=None` for a
      wrapper with `use_scale=False`), in the model's order; paths are keys of
      `flatten(model)`.

    Examples:
      >>> import jax, equinox as eqx
      >>> mlp = WeightNorm(eqx.nn.MLP(2, 3, width_size=4, depth=1, key=jax.random.key(0)))
      >>> [(w.weight, w.layer) for w in weight_norms(mlp)]
      [('layer/layers/0/weight', 'layer/layers/0'), ('layer/layers/1/weight', 'layer/layers/1')]
    """
    found = []
    for key_path, wrapper in _wrappers(model):
        params, _ = _split_params(wrapper.layer)
        found += wrapper_weights(
            core.path_key(key_path), "layer", core.flatten(params), wrapper.config
        )
    return found


class _Recording(RecordingWrapper):
    """A wrapper's stand-in; paths are key paths, replaced with `eqx.tree_at`."""

    def place(self, layer: Any, path: tuple[Any, ...], record: Callable[[Any], Any]) -> Any:
        return eqx.tree_at(_at(path), layer, replace_fn=record) if path else record(layer)


def data_dependent_init(model: Any, batch: Any, *, epsilon: float = 1e-6) -> Any:
    """Data-dependent initialization (Salimans & Kingma 2016, section 3) of every wrapped layer.

    `model` (a `WeightNorm`, or any module holding some) is called on each
    example of `batch` (`jax.vmap(model)(batch)`). For each weight-normed
    layer, in the order the model calls them, its outputs are computed with
    scale 1 and bias 0 (so with the normalized direction:
    `t = v . x / ||v||`), and it gets `scale = 1 / std(t)` and
    `bias = -mean(t) / std(t)` per output feature (axis 0 of one example's
    output: Equinox's channels-first layout, for Linear and Conv layers
    alike; `weightnorm.data_dependent_scale_bias`). Later layers see the
    outputs of those already initialized, so afterwards the pre-activations
    of every wrapped layer have mean 0 and std 1 on the batch. A layer's bias
    is its `bias` field (a conv's `(out, 1, ...)` bias too); without one only
    the scale is set. The calls are recorded on copies of the model, so
    several threads may initialize models at once.

    Args:
      model: the Equinox model.
      batch: inputs with a leading batch axis.
      epsilon: added to the variance.

    Returns:
      `model` with the scales and biases set.

    Raises:
      ValueError: when `model` holds no `WeightNorm`, a wrapped layer is not
        called, or its scale is not one per output feature.

    Examples:
      >>> import jax, jax.numpy as jnp, equinox as eqx
      >>> model = WeightNorm(eqx.nn.Linear(3, 2, key=jax.random.key(0)))
      >>> x = jax.random.normal(jax.random.key(1), (64, 3))
      >>> y = jax.vmap(data_dependent_init(model, x))(x)
      >>> jnp.round(y.mean(0), 3) + 0.0, jnp.round(y.std(0), 3)
      (Array([0., 0.], dtype=float32), Array([1., 1.], dtype=float32))
    """
    weights = weight_norms(model)
    if not weights:
        raise ValueError(f"{type(model).__name__} holds no weightnorm `WeightNorm` to initialize.")
    # Where each recorded layer sits: its wrapper's key path, then its key path in the layer.
    places = {}
    for key_path, wrapper in _wrappers(model):
        prefix = core.path_key(key_path)
        for path, _ in jax.tree_util.tree_flatten_with_path(wrapper.layer)[0]:
            place = "/".join(filter(None, (prefix, "layer", core.path_key(path))))
            places[place] = (key_path, path)

    def run(flat_params: Mapping[str, Any], wanted: set[str]) -> list[tuple[str, Any]]:
        current = unflatten(flat_params, like=model)
        names: list[str] = []

        def per_example(x: Any) -> list[Any]:
            calls: list[tuple[str, Any]] = []
            recording = current
            for key_path, wrapper in _wrappers(current):
                inner = []
                for w in weights:
                    if w.layer in wanted and w.wrapper == core.path_key(key_path):
                        leaf_path = places[w.weight][1]
                        inner.append((leaf_path[:-1], w.layer))
                if inner:
                    stand_in = _Recording(wrapper, inner, calls)
                    if key_path:
                        recording = eqx.tree_at(_at(key_path), recording, stand_in)
                    else:
                        recording = stand_in
            recording(x)
            names[:] = [name for name, _ in calls]
            return [out for _, out in calls]

        outputs = jax.vmap(per_example)(batch)
        return list(zip(names, outputs, strict=True))

    flat = data_dependent_init_in_order(
        flatten(model), weights, run, bias_name="bias", feature_axis=1, epsilon=epsilon
    )
    return unflatten(flat, like=model)
