"""Flax Linen adapter: a drop-in replacement for `flax.linen.WeightNorm`.

Same fields, defaults, variable names and numbers as flax's class; the math is
the core's. Where flax is wrong this one differs (see docs/differences.md):
only the `params` collection is normalized, every other collection
(`batch_stats`, `intermediates`, ...) passes through and stays mutable, and a
bare string `variable_filter` is one item, not its characters.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

try:
    import flax.linen as nn
except ImportError as error:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "weightnorm.adapters.linen needs flax: pip install 'weightnorm[linen]'"
    ) from error
import jax
import jax.numpy as jnp

from .. import core
from ._common import ModelTrace, NormalizedWeight, data_dependent_init_in_order

__all__ = [
    "WeightNorm",
    "data_dependent_init",
    "flatten",
    "fold",
    "trace",
    "unflatten",
    "unfold",
    "weight_norms",
]


class WeightNorm(nn.Module):
    """L2 weight normalization of a wrapped Linen module's parameters.

    A drop-in for `flax.linen.WeightNorm` (Salimans & Kingma 2016): the
    selected parameters `v` of `layer_instance` are replaced, for the call, by
    `scale * v * rsqrt(sum(v * v over the non-feature axes) + epsilon)`. The
    scales are parameters of this module named `"<layer name>/<path>/scale"`,
    as in flax; the wrapped module's parameters keep their names.

    Unlike flax's class, only the `params` collection is normalized, and other
    collections pass through: a wrapped `BatchNorm` updates its `batch_stats`
    under `apply(..., mutable=["batch_stats"])` and `sow`n values are kept.

    Attributes:
      layer_instance: the module to wrap.
      epsilon: added to the sum of squares inside the square root.
      dtype: dtype of the normalized parameters (default: promoted from the
        parameter and its scale).
      param_dtype: dtype of the scales.
      use_scale: whether to learn a scale per feature.
      scale_init: flax's `ones` initializer (default; `"ones"` is the same), `"norm"` (the norm of
        the layer's initial weight, so the wrapped layer starts as the plain
        layer: flax stores the normalized weight at init, which with this
        scale is the initial weight itself), or an initializer
        `(key, shape, dtype) -> array`.
      feature_axes: axes that keep their own norm (default: the last); None
        means one norm over the whole array.
      variable_filter: which parameters to normalize, by flax's substring rule
        on `"<layer name>/<path>"` (default `{"kernel"}`); None or empty for
        every parameter; a bare string is one item; or a predicate on the path.
      stack_axes: leading axes of stacked parameters (e.g. a wrapped
        `nn.scan`) kept out of the reduction, so each layer keeps its own
        norm; `feature_axes` then count within one layer. Default 0.

    Partitioned parameters: a kernel boxed by `nn.with_partitioning` or
    `nn.with_logical_partitioning` gets a scale boxed the same way, with the
    kernel's names at its feature axes, under the usual name
    `"<layer name>/kernel/scale"`; `nn.get_partition_spec` reads it (see
    docs/sharding.md).

    Examples:
      >>> import jax, jax.numpy as jnp, flax.linen as nn
      >>> model = WeightNorm(nn.Dense(3))
      >>> variables = model.init(jax.random.key(0), jnp.ones((1, 2)))
      >>> jax.tree.map(jnp.shape, variables["params"])
      {'layer_instance': {'bias': (3,), 'kernel': (2, 3)}, 'layer_instance/kernel/scale': (3,)}
    """

    layer_instance: nn.Module
    epsilon: float = 1e-12
    dtype: Any = None
    param_dtype: Any = jnp.float32
    use_scale: bool = True
    scale_init: Any = nn.initializers.ones
    feature_axes: Any = -1
    variable_filter: Any = dataclasses.field(default_factory=lambda: {"kernel"})
    stack_axes: int = 0

    @property
    def config(self) -> core.WeightNormConfig:
        """The core settings these fields describe."""
        return core.WeightNormConfig(
            epsilon=self.epsilon,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            use_scale=self.use_scale,
            scale_init=self.scale_init,
            feature_axes=self.feature_axes,
            variable_filter=self.variable_filter,
            stack_axes=self.stack_axes,
        )

    @nn.compact
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Calls the wrapped module with its parameters weight-normalized.

        Every argument is passed through to `layer_instance`.
        """
        config = self.config

        def forward(layer: nn.Module) -> Any:
            return layer(*args, **kwargs)

        def normalize_params(variables: Mapping[str, Any]) -> dict[str, Any]:
            variables = dict(variables)
            if "params" in variables:
                variables["params"] = self._normalize(variables["params"], config)
            return variables

        return nn.map_variables(
            forward,
            "params",
            trans_in_fn=normalize_params,
            init=self.is_initializing(),
            mutable=False,
        )(self.layer_instance)

    def _normalize(self, params: Any, config: core.WeightNormConfig) -> Any:
        # Paths are "<layer name>/<path in layer>", which is what flax filters
        # on and names the scales after.
        named = {self.layer_instance.name: params}
        boxes = _boxes(named)
        unboxed = jax.tree.map(_unbox, named, is_leaf=_is_box) if boxes else named
        flat = core.flatten(unboxed)
        if self.is_initializing():
            core.warn_if_nothing_selected(flat, config, stacklevel=2)
        names = {path: box.names for path, box in boxes.items() if isinstance(box, nn.Partitioned)}
        specs = core.scale_partition_specs(flat, names, config) if names else {}
        initializer = _scale_initializer(flat, config)
        scales = {
            name: self._scale(name, shape, initializer, boxes, specs, config)
            for name, shape in core.scale_shapes(flat, config).items()
        }
        normalized = core.unflatten(core.normalize(flat, scales, config), like=unboxed)
        if boxes:
            normalized = jax.tree.map(_rebox, named, normalized, is_leaf=_is_box)
        return normalized[self.layer_instance.name]

    def _scale(
        self,
        name: str,
        shape: tuple[int, ...],
        initializer: Any,
        boxes: Mapping[str, Any],
        specs: Mapping[str, Any],
        config: core.WeightNormConfig,
    ) -> Any:
        """A scale: made at init (as `Module.param`), else read as it is.

        `Module.param` also checks an existing variable against its initializer, by
        tracing the initializer at every call; `core.normalize` checks the shapes
        anyway, so reading skips that tracing (a deep model's compile time).
        """
        if not self.is_initializing() and self.has_variable("params", name):
            return nn.meta.unbox(self.get_variable("params", name))
        init = _boxed_like_kernel(
            initializer(name), boxes.get(core.weight_path(name)), specs.get(name)
        )
        return self.param(name, init, shape, config.param_dtype)


def _is_box(node: Any) -> bool:
    return isinstance(node, nn.meta.AxisMetadata)


def _unbox(node: Any) -> Any:
    # No sharding constraint here: the wrapped layer applies it when it reads the
    # (re-boxed) normalized parameter.
    if isinstance(node, nn.Partitioned):
        return node.value
    return node.unbox() if _is_box(node) else node


def _rebox(original: Any, normalized: Any) -> Any:
    return original.replace_boxed(normalized) if _is_box(original) else normalized


def _boxes(tree: Any) -> dict[str, Any]:
    """`{path: box}` of the metadata-boxed (e.g. partitioned) leaves, keyed like `core.flatten`."""
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_box)[0]
    return {
        jax.tree_util.keystr(key_path, simple=True, separator="/"): leaf
        for key_path, leaf in leaves
        if _is_box(leaf)
    }


def _boxed_like_kernel(init_fn: Any, box: Any, names: Any) -> Any:
    """`init_fn`, boxed like a partitioned kernel with the kernel's names at its feature axes."""
    if not isinstance(box, nn.Partitioned):
        return init_fn

    def init(key: Any, shape: tuple[int, ...], dtype: Any) -> Any:
        return dataclasses.replace(box, value=init_fn(key, shape, dtype), names=names)

    return init


def flatten(variables: Any) -> dict[str, Any]:
    """Linen variables (or one collection) as a flat `{"a/b/c": array}` dict.

    Keys of WeightNorm scales contain '/', so rebuild with `unflatten(flat, like)`.

    Examples:
      >>> import jax.numpy as jnp
      >>> flatten({"params": {"WeightNorm_0": {"Dense_0/kernel/scale": jnp.ones(2)}}})
      {'params/WeightNorm_0/Dense_0/kernel/scale': Array([1., 1.], dtype=float32)}
    """
    return core.flatten(variables)


def unflatten(flat: Mapping[str, Any], like: Any) -> Any:
    """Rebuilds Linen variables of `like`'s structure (dict or FrozenDict) from `flat`.

    Raises:
      ValueError: listing the keys that `flat` lacks or has in excess.
    """
    return core.unflatten(flat, like=like)


def _scale_initializer(flat: Mapping[str, Any], config: core.WeightNormConfig) -> Any:
    """`name -> init_fn(key, *args)` for `Module.param`: the callable, or "ones"/"norm"."""
    if callable(config.scale_init):
        return lambda name: config.scale_init
    made: dict[str, Any] = {}

    def initializer(name: str) -> Any:
        def init_fn(key: Any, *args: Any) -> Any:
            if not made:  # one pass over the layer's variables makes every scale
                made.update(core.init_scales(flat, config))
            return made[name]

        return init_fn

    return initializer


def _split(variables: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(name of the wrapped layer's subtree, the wrapper's scales) of `WeightNorm` variables."""
    if not isinstance(variables, Mapping) or "params" not in variables:
        raise TypeError(
            "Expected the variables of a `WeightNorm` (a dict with a 'params' "
            f"collection, as `model.init` returns), got {type(variables).__name__}."
        )
    params = variables["params"]
    scales = {k: v for k, v in params.items() if _is_linen_scale(k)}
    layers = [k for k in params if k not in scales]
    if len(layers) != 1:
        raise ValueError(
            "Expected the variables of one `WeightNorm`: its layer's subtree plus its "
            f"'<path>/scale' entries, but 'params' has the subtrees {layers}. Fold the "
            "variables of each wrapper, e.g. `fold(wrapper, variables['params'][...])`."
        )
    return layers[0], scales


def fold(
    model: nn.Module, variables: Mapping[str, Any], config: core.WeightNormConfig | None = None
) -> dict[str, Any]:
    """Plain variables with `scale * v / ||v||` baked in and no scales.

    - `model` a `WeightNorm`: the result is the variables of
      `model.layer_instance`, so `model.layer_instance.apply(fold(model,
      variables), x)` equals `model.apply(variables, x)` up to rounding; every
      other collection (`batch_stats`, ...) is carried over.
    - `model` any other module holding `WeightNorm`s (made in its compact
      methods, as `WeightNorm(MLP())(x)`): every scale is folded into the
      weight it names and dropped, so the result is the variables of the same
      model written without the wrappers (the wrapped layers keep their names).
      The wrappers' `epsilon`, `feature_axes` and `dtype` are `config`'s
      (default: flax's); they must have `use_scale=True`.

    `unfold` goes the other way for a `WeightNorm`.

    Args:
      model: the `WeightNorm`, or the module holding them.
      variables: `model.init(...)`'s variables (dict or FrozenDict).
      config: the wrappers' settings, for a module holding them.

    Returns:
      A plain dict of collections.

    Raises:
      TypeError: when `model` is not a Linen module or `variables` has no 'params'.
      ValueError: as `weightnorm.fold` (missing scales, NaN weights, ...), and
        when a module holding wrappers has no scales.

    Examples:
      >>> import jax, jax.numpy as jnp, flax.linen as nn
      >>> model, x = WeightNorm(nn.Dense(3)), jnp.ones((1, 2))
      >>> variables = model.init(jax.random.key(0), x)
      >>> plain = fold(model, variables)
      >>> bool(jnp.allclose(nn.Dense(3).apply(plain, x), model.apply(variables, x)))
      True
    """
    if not isinstance(model, WeightNorm):
        if not isinstance(model, nn.Module):
            raise TypeError(f"Expected a Linen module, got {type(model).__name__}.")
        return _fold_wrapped_inside(
            variables, core.WeightNormConfig() if config is None else config
        )
    name, scales = _split(variables)
    named = {name: variables["params"][name]}
    folded = core.fold(core.flatten(named), scales, model.config)
    plain = {c: dict(tree).get(name, {}) for c, tree in variables.items() if c != "params"}
    return {"params": core.unflatten(folded, like=named)[name], **plain}


def _fold_wrapped_inside(variables: Any, config: core.WeightNormConfig) -> dict[str, Any]:
    params = variables.get("params") if isinstance(variables, Mapping) else None
    if not isinstance(params, Mapping):
        raise TypeError("Expected variables with a 'params' collection, as `model.init` returns.")
    flat = core.flatten(params)
    weights = [w for w in weight_norms(variables) if w.scale is not None]
    if not weights:
        raise ValueError(
            "The variables hold no weightnorm `WeightNorm` scales to fold (wrappers with "
            "`use_scale=False` cannot be found from the variables alone)."
        )
    scale_paths = {w.scale for w in weights}
    folded = core.fold(
        {path: value for path, value in flat.items() if path not in scale_paths},
        {core.scale_path(w.weight): flat[w.scale] for w in weights},
        config.replace(variable_filter=core.PathFilter(frozenset(w.weight for w in weights))),
    )

    def rebuild(node: Mapping[str, Any], prefix: str) -> dict[str, Any]:
        out = {}
        for key, value in node.items():
            path = f"{prefix}{key}"
            if isinstance(value, Mapping):
                inner = rebuild(value, path + "/")
                if inner or not value:  # drop the subtrees that held only scales
                    out[key] = inner
            elif path not in scale_paths:
                out[key] = folded[path]
        return out

    return {**variables, "params": rebuild(params, "")}


def unfold(model: WeightNorm, variables: Mapping[str, Any]) -> dict[str, Any]:
    """Variables of `model` whose function is the plain layer's `variables`.

    Each selected weight becomes its own direction with its norm as scale
    (`weightnorm.unfold`), so `model.apply(unfold(model, variables), x)` equals
    `model.layer_instance.apply(variables, x)` up to rounding: a pretrained
    plain layer becomes a weight-normed one. The inverse of `fold`.

    Args:
      model: the `WeightNorm` to make variables for (`use_scale` must be True).
      variables: variables of the plain layer `model.layer_instance`.

    Returns:
      A plain dict of collections for `model`.

    Raises:
      TypeError, ValueError: as `fold`, and as `weightnorm.unfold`.

    Examples:
      >>> import jax, jax.numpy as jnp, flax.linen as nn
      >>> plain = nn.Dense(3).init(jax.random.key(0), jnp.ones((1, 2)))
      >>> wrapped = unfold(WeightNorm(nn.Dense(3)), plain)
      >>> sorted(wrapped["params"])
      ['layer_instance', 'layer_instance/kernel/scale']
    """
    _check_model(model)
    if not isinstance(variables, Mapping) or "params" not in variables:
        raise TypeError(
            "Expected the variables of the plain layer (a dict with a 'params' "
            f"collection), got {type(variables).__name__}."
        )
    name = model.layer_instance.name or "layer_instance"
    named = {name: variables["params"]}
    directions, scales = core.unfold(core.flatten(named), model.config)
    rest = {c: {name: tree} for c, tree in variables.items() if c != "params"}
    return {"params": {**core.unflatten(directions, like=named), **scales}, **rest}


def _check_model(model: Any) -> None:
    if not isinstance(model, WeightNorm):
        raise TypeError(
            f"Expected a weightnorm.adapters.linen.WeightNorm, got {type(model).__name__}."
        )


def _is_linen_scale(key: str) -> bool:
    """A WeightNorm scale's key within its wrapper: `"<layer name>/<path>/scale"`."""
    return core.is_scale_path(key) and "/" in core.weight_path(key)


def weight_norms(variables: Mapping[str, Any]) -> list[NormalizedWeight]:
    """Every weightnorm `WeightNorm` scale in Linen variables, and the weight it scales.

    A wrapper at path `P` keys each scale by its layer's name and the
    weight's path in that layer (`"Dense_0/kernel/scale"`, flax's names). The
    layer is a child of the wrapper (made outside any module, flax names it
    `layer_instance`) or of the module that made it (usually the wrapper's
    parent); it is looked up from `P` outwards, the nearest module of that
    name first, as Linen's scopes nest. Only `trace` also knows the wrappers'
    feature axes and epsilon; here they are None.

    Args:
      variables: the model's variables (a dict with a `"params"` collection), or
        its params alone.

    Returns:
      One `NormalizedWeight` per scale, in the variables' order; paths are
      keys of `flatten(params)` (no collection prefix).

    Raises:
      TypeError: when `variables` is not a dict of params.
      ValueError: naming a scale whose weight is nowhere in the variables.

    Examples:
      >>> import jax, jax.numpy as jnp, flax.linen as nn
      >>> variables = WeightNorm(nn.Dense(3)).init(jax.random.key(0), jnp.ones((1, 2)))
      >>> [(w.weight, w.scale) for w in weight_norms(variables)]
      [('layer_instance/kernel', 'layer_instance/kernel/scale')]
    """
    if not isinstance(variables, Mapping):
        raise TypeError(f"Expected Linen variables (a dict), got {type(variables).__name__}.")
    params = variables.get("params", variables)
    flat = core.flatten(params)
    found = []

    def walk(node: Mapping[str, Any], prefix: tuple[str, ...]) -> None:
        for key, value in node.items():
            if isinstance(value, Mapping):
                walk(value, (*prefix, key))
            elif _is_linen_scale(key):
                found.append(_named_weight(flat, prefix, key))

    walk(params, ())
    return found


def _named_weight(flat: Mapping[str, Any], wrapper: tuple[str, ...], key: str) -> NormalizedWeight:
    """The weight that the scale `key` of the wrapper at `wrapper` names, nearest module first."""
    relative = core.weight_path(key)
    for depth in range(len(wrapper), -1, -1):
        weight = "/".join((*wrapper[:depth], relative))
        if weight in flat:
            scale = "/".join((*wrapper, key))
            return NormalizedWeight(weight, scale, weight.rsplit("/", 1)[0], "/".join(wrapper))
    raise ValueError(
        f"Scale {'/'.join((*wrapper, key))!r} names the weight {relative!r}, which is neither "
        "in its wrapper nor in any module around it. Pass the variables of the whole model, "
        "as `model.init` returns them."
    )


def trace(model: nn.Module, *args: Any, variables: Any = None, **kwargs: Any) -> ModelTrace:
    """The model's modules in call order and its weight norms, read by running it abstractly.

    `model.init` runs on `args` under `jax.eval_shape` (no computation, no
    memory for weights). Every `WeightNorm` call says exactly
    which module it wraps, so each scale's weight, feature axes and epsilon
    come from the wrapper itself (`weight_norms` from the variables alone
    knows only the names).

    Args:
      model: the Linen module.
      *args: example inputs (arrays or `jax.ShapeDtypeStruct`s).
      variables: the model's variables, if already made (the trace then holds
        them, and reads their structure from the abstract init).
      **kwargs: keyword arguments of the call.

    Returns:
      A `ModelTrace`: the variables' shapes, `{module path: type}` in call
      order, and the `NormalizedWeight`s with their axes and epsilon.

    Examples:
      >>> import jax.numpy as jnp, flax.linen as nn
      >>> traced = trace(WeightNorm(nn.Dense(3), feature_axes=0), jnp.ones((1, 3)))
      >>> [(w.weight, w.feature_axes) for w in traced.weight_norms]
      [('layer_instance/kernel', (0,))]
    """
    modules: dict[str, type] = {}
    wrappers: list[tuple[str, WeightNorm]] = []
    layers: dict[str, str] = {}  # wrapper path -> the path of the module it calls
    stack: list[tuple[str, Any]] = []

    def interceptor(next_fun: Any, call_args: Any, call_kwargs: Any, context: Any) -> Any:
        if context.method_name != "__call__":
            return next_fun(*call_args, **call_kwargs)
        module = context.module
        path = "/".join(module.path)
        if stack and isinstance(stack[-1][1], WeightNorm) and stack[-1][0] not in layers:
            layers[stack[-1][0]] = path
        modules.setdefault(path, type(module))
        if isinstance(module, WeightNorm):
            wrappers.append((path, module))
        stack.append((path, module))
        try:
            return next_fun(*call_args, **call_kwargs)
        finally:
            stack.pop()

    with nn.intercept_methods(interceptor):  # `init` calls every module `apply` would
        made = jax.eval_shape(lambda: model.init(jax.random.key(0), *args, **kwargs))
    variables = made if variables is None else variables
    params = variables.get("params", {})
    flat = core.flatten(params)
    found: dict[str, NormalizedWeight] = {}
    for path, wrapper in wrappers:
        layer = layers.get(path)
        node = _subtree(params, path)
        if layer is None or node is None:
            continue
        name = layer.rsplit("/", 1)[-1]
        config = wrapper.config
        for key in node:
            if not (_is_linen_scale(key) and key.startswith(f"{name}/")):
                continue
            weight = "/".join(filter(None, (layer, core.weight_path(key)[len(name) + 1 :])))
            kept = core.kept_axes(weight, tuple(flat[weight].shape), config)
            scale = "/".join(filter(None, (path, key)))
            found[scale] = NormalizedWeight(
                weight, scale, weight.rsplit("/", 1)[0], path, kept, float(config.epsilon)
            )
    ordered = [found[key] for key in flat if key in found]
    return ModelTrace(variables, modules, tuple(ordered))


def _subtree(params: Mapping[str, Any], path: str) -> Mapping[str, Any] | None:
    node: Any = params
    for part in filter(None, path.split("/")):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node if isinstance(node, Mapping) else None


def data_dependent_init(
    model: nn.Module,
    variables: Mapping[str, Any],
    *args: Any,
    epsilon: float = 1e-6,
    **kwargs: Any,
) -> dict[str, Any]:
    """Data-dependent initialization (Salimans & Kingma 2016, section 3) of every wrapped layer.

    `model` is any Linen module holding `WeightNorm` wrappers (or one itself).
    For each weight-normed layer, in the order the model calls them, the
    layer's outputs on the batch are computed with scale 1 and bias 0 (so
    with the normalized direction: `t = x . v / ||v||`), and the layer gets
    `scale = 1 / std(t)` and `bias = -mean(t) / std(t)` per output feature
    (`weightnorm.data_dependent_scale_bias`). Later layers see the outputs of
    the layers already initialized, so after init the pre-activations of every
    wrapped layer have mean 0 and std 1 on this batch. A layer's bias is its
    sibling parameter `bias`; without one only the scale is set. Output
    features are on the last axis (Linen's Dense and Conv). Which layer each
    scale belongs to is read by tracing the model (`trace`).

    Args:
      model: the Linen module.
      variables: its variables, e.g. from `model.init`.
      *args: the batch (and any other positional arguments of `model.apply`).
      epsilon: added to the variance.
      **kwargs: keyword arguments of `model.apply`.

    Returns:
      `variables` (as plain dicts) with the scales and biases set.

    Raises:
      ValueError: when the model has no `WeightNorm` scales, a wrapped layer is
        not called on the batch, or its scale is not one per output feature.

    Examples:
      >>> import jax, jax.numpy as jnp, flax.linen as nn
      >>> model, x = WeightNorm(nn.Dense(3)), jax.random.normal(jax.random.key(0), (64, 2))
      >>> variables = data_dependent_init(model, model.init(jax.random.key(1), x), x)
      >>> y = model.apply(variables, x)
      >>> jnp.round(y.mean(0), 3) + 0.0, jnp.round(y.std(0), 3)
      (Array([0., 0., 0.], dtype=float32), Array([1., 1., 1.], dtype=float32))
    """
    params = variables["params"] if isinstance(variables, Mapping) else None
    if not isinstance(params, Mapping):
        raise TypeError("Expected variables with a 'params' collection, as `model.init` returns.")
    weights = trace(model, *args, variables=variables, **kwargs).weight_norms

    def run(flat_params: Mapping[str, Any], wanted: Any) -> list[tuple[str, Any]]:
        outputs: list[tuple[str, Any]] = []

        def interceptor(next_fun: Any, a: Any, k: Any, context: Any) -> Any:
            out = next_fun(*a, **k)
            path = "/".join(context.module.path)
            if context.method_name == "__call__" and path in wanted:
                outputs.append((path, out))
            return out

        with nn.intercept_methods(interceptor):
            new = {**variables, "params": core.unflatten(flat_params, like=params)}
            model.apply(new, *args, **kwargs)
        return outputs

    flat = data_dependent_init_in_order(
        core.flatten(params), weights, run, bias_name="bias", feature_axis=-1, epsilon=epsilon
    )
    return {**variables, "params": core.unflatten(flat, like=params)}
