"""Haiku adapter: weight normalization as an `hk.Module` wrapper.

`WeightNorm(module)` calls `module` under a Haiku custom getter that
weight-normalizes the selected parameters as they are read. The wrapped
module's parameters keep their usual names, so a plain Haiku checkpoint loads
into them; the scales live in the wrapper's own bundle, keyed by the full name
of the parameter they scale (`"linear/w/scale"`). The math is the core's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

try:
    import haiku as hk
except ImportError as error:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "weightnorm.adapters.haiku needs dm-haiku: pip install 'weightnorm[haiku]'"
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


@dataclasses.dataclass(frozen=True)
class _NamedParameter:
    """Selects the parameters whose own name (last path component) is `name`.

    Equal and hashable by value, so configs using it stay hashable and equal.
    """

    name: str

    def __call__(self, path: str) -> bool:
        return path.rsplit("/", 1)[-1] == self.name

    def __repr__(self) -> str:
        return f"<parameters named {self.name!r}>"


class WeightNorm(hk.Module):
    """L2 weight normalization of a wrapped Haiku module's parameters.

    While `module` runs, each selected parameter `v` it reads is replaced by
    `scale * v * rsqrt(sum(v * v over the non-feature axes) + epsilon)`
    (Salimans & Kingma 2016), with the same numbers as `flax.linen.WeightNorm`.
    The wrapped module's parameters stay where a plain Haiku model has them;
    the scales are parameters of this module named after the full name of the
    parameter they scale. State (`hk.get_state`) passes through untouched.
    Calling the wrapper several times reuses one set of scales.

    A `scale_init` that needs no randomness (`"ones"`, the default, `"norm"`,
    jax's `ones`) takes no rng key, so the wrapped model initializes exactly
    as it would unwrapped; any other callable takes one key of
    `hk.next_rng_key()` per normalized parameter at init (see
    `weightnorm.core.needs_key`).

    Haiku's transposed convolutions store `w` as `(..., out, in)`, so for them
    pass `feature_axes=-2` to get one norm per output channel (the default
    `-1` gives one per input channel).

    Args:
      module: the module (or any callable that reads Haiku parameters) to wrap.
      epsilon: added to the sum of squares inside the square root.
      dtype: dtype of the normalized parameters (default: promoted from the
        parameter and its scale).
      param_dtype: dtype of the scales.
      use_scale: whether to learn a scale per feature.
      scale_init: `"ones"` (default), `"norm"` (the norm of the parameter's
        initial value, so the wrapped module starts as the plain one), or a
        jax-style initializer `(key, shape, dtype) -> array`.
      feature_axes: axes that keep their own norm (default: the last); None
        means one norm over the whole array.
      variable_filter: which parameters to normalize. The default selects the
        parameters whose own name is exactly `"w"` (so a module named `"wide"`
        keeps its bias `"wide/b"` as it is). Otherwise as the core takes it:
        None or empty for every parameter, strings by flax's substring rule on
        the full name (`"mlp/~/linear_0/w"`), or a predicate on the full name.
      stack_axes: leading axes of parameters stacked by hand (e.g. a module
        that creates one `(layers, in, out)` parameter) kept out of the
        reduction, so each layer keeps its own norm; `feature_axes` then count
        within one layer. `hk.layer_stack` needs none: it reads its layers'
        parameters one at a time, so each gets its own norm and Haiku stacks
        the scales.
      name: the wrapper's module name (default `"weight_norm"`).

    Sharded parameters: shard each scale like its parameter's feature axes,
    e.g. with `weightnorm.core.scale_partition_specs` (see docs/sharding.md).

    Raises:
      TypeError: when `module` is not callable, and as `WeightNormConfig` for
        settings of the wrong type.
      ValueError: as `WeightNormConfig` for settings out of range; at call
        time, naming the parameter's path, when a feature axis does not fit it.

    Examples:
      >>> import haiku as hk, jax, jax.numpy as jnp
      >>> model = hk.transform(lambda x: WeightNorm(hk.Linear(4))(x))
      >>> params = model.init(jax.random.key(0), jnp.ones((1, 3)))
      >>> jax.tree.map(jnp.shape, params)
      {'linear': {'b': (4,), 'w': (3, 4)}, 'weight_norm': {'linear/w/scale': (4,)}}
    """

    def __init__(
        self,
        module: Callable[..., Any],
        *,
        epsilon: float = 1e-12,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        use_scale: bool = True,
        scale_init: str | Callable[..., Any] = "ones",
        feature_axes: core.FeatureAxes = -1,
        variable_filter: core.VariableFilter = _NamedParameter("w"),
        stack_axes: int = 0,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        if not callable(module):
            raise TypeError(
                f"`module` must be a Haiku module or a callable, got {module!r}. "
                "Wrap a module instance, e.g. `WeightNorm(hk.Linear(4))`."
            )
        self.module = module
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

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Calls the wrapped module with its selected parameters weight-normalized.

        Every argument is passed through to `module`, and its result returned.
        """

        read: dict[str, None] = {}

        def getter(next_getter: Callable[[Any], Any], value: Any, context: Any) -> Any:
            if context.module is not self:  # the wrapper's own scales pass through
                read[context.full_name] = None
                value = self._normalize(context.full_name, value)
            return next_getter(value)

        with hk.custom_getter(getter, params=True, state=False):
            out = self.module(*args, **kwargs)
        if hk.running_init():
            core.warn_if_nothing_selected(read, self.config, stacklevel=2)
        return out

    def _normalize(self, path: str, value: Any) -> Any:
        # A module method runs in this module's name scope, so the scales are
        # created in (and read from) the wrapper's bundle (Haiku transforms such
        # as `hk.layer_stack` may add a prefix to that bundle's name).
        flat = {path: value}
        scales = {
            key: hk.get_parameter(
                key,
                shape,
                self.config.param_dtype,
                init=lambda *_, key=key: core.init_scales(flat, self.config, hk.next_rng_key)[key],
            )
            for key, shape in core.scale_shapes(flat, self.config).items()
        }
        return core.normalize(flat, scales, self.config)[path]


def flatten(params: Any) -> dict[str, Any]:
    """Haiku params (or state) as a flat `{"module/~/name/param": array}` dict.

    Haiku's bundle names and the scale names contain '/', so rebuild with
    `unflatten(flat, like)`.

    Examples:
      >>> import jax.numpy as jnp
      >>> flatten({"mlp/~/linear_0": {"w": jnp.ones(2)}})
      {'mlp/~/linear_0/w': Array([1., 1.], dtype=float32)}
    """
    return core.flatten(params)


def unflatten(flat: Mapping[str, Any], like: Any) -> Any:
    """Rebuilds Haiku params of `like`'s structure from a flat dict made by `flatten`.

    `like` is required: Haiku's keys contain '/', so the nesting cannot be
    read back from the flat keys alone.

    Raises:
      ValueError: listing the keys that `flat` lacks or has in excess.

    Examples:
      >>> unflatten({"mlp/~/linear_0/w": 1.0}, like={"mlp/~/linear_0": {"w": 0.0}})
      {'mlp/~/linear_0': {'w': 1.0}}
    """
    return core.unflatten(flat, like=like)


def _default_config() -> core.WeightNormConfig:
    return core.WeightNormConfig(feature_axes=-1, variable_filter=_NamedParameter("w"))


def _check_params(params: Any) -> None:
    if not isinstance(params, Mapping) or not all(isinstance(b, Mapping) for b in params.values()):
        raise TypeError(
            "Expected Haiku params `{module name: {parameter name: array}}`, as "
            f"`transformed.init` returns, got {type(params).__name__}."
        )


def weight_norms(params: Any) -> list[NormalizedWeight]:
    """Every `WeightNorm` scale in Haiku params, and the parameter it scales.

    A wrapper keys each scale by the full name of the parameter it scales
    (`"mlp/~/linear_0/w/scale"` in the wrapper's bundle), so the parameter is
    named exactly. Feature axes and epsilon are not in the params (they are
    None here); `trace` reads them from the wrappers.

    Args:
      params: Haiku params `{module name: {parameter name: array}}`.

    Returns:
      One `NormalizedWeight` per scale, in the params' order; paths are keys of
      `flatten(params)`.

    Raises:
      TypeError: for params that are not Haiku's two-level dicts.

    Examples:
      >>> import haiku as hk, jax, jax.numpy as jnp
      >>> model = hk.transform(lambda x: WeightNorm(hk.Linear(2))(x))
      >>> params = model.init(jax.random.key(0), jnp.ones((1, 3)))
      >>> [(w.weight, w.scale) for w in weight_norms(params)]
      [('linear/w', 'weight_norm/linear/w/scale')]
    """
    _check_params(params)
    names = {f"{bundle}/{name}" for bundle, inner in params.items() for name in inner}
    found = []
    for bundle, inner in params.items():
        for name in inner:
            if core.is_scale_path(name) and core.weight_path(name) in names:
                weight = core.weight_path(name)
                layer = weight.rsplit("/", 1)[0]
                found.append(NormalizedWeight(weight, f"{bundle}/{name}", layer, bundle))
    return found


def trace(transformed: Any, *args: Any, params: Any = None, **kwargs: Any) -> ModelTrace:
    """The modules in call order and the weight norms of a transformed function, run abstractly.

    The function's `init` runs on `args` under `jax.eval_shape` (no
    computation; its apply may or may not take an rng). Each
    `WeightNorm` call says which wrapper holds which scales and with which
    feature axes and epsilon.

    Args:
      transformed: an `hk.transform`ed function (with or without state; apply
        rng may be None).
      *args: example inputs (arrays or `jax.ShapeDtypeStruct`s).
      params: the params, if already made.
      **kwargs: keyword arguments of the function.

    Returns:
      A `ModelTrace`: the params' shapes, `{module name: type}` in call order,
      and the `NormalizedWeight`s with their axes and epsilon.

    Examples:
      >>> import haiku as hk, jax.numpy as jnp
      >>> model = hk.transform(lambda x: WeightNorm(hk.Linear(2), epsilon=1e-6)(x))
      >>> [(w.weight, w.epsilon) for w in trace(model, jnp.ones((1, 3))).weight_norms]
      [('linear/w', 1e-06)]
    """
    modules: dict[str, type] = {}
    configs: dict[str, core.WeightNormConfig] = {}

    def interceptor(next_fun: Any, call_args: Any, call_kwargs: Any, context: Any) -> Any:
        if context.method_name == "__call__":
            module = context.module
            modules.setdefault(module.module_name, type(module))
            if isinstance(module, WeightNorm):
                configs[module.module_name] = module.config
        return next_fun(*call_args, **call_kwargs)

    with hk.intercept_methods(interceptor):  # `init` calls every module `apply` would
        made = jax.eval_shape(lambda: transformed.init(jax.random.key(0), *args, **kwargs))
    if params is None:
        params = made[0] if isinstance(made, tuple) else made
    found = []
    for weight in weight_norms(params):
        config = configs.get(weight.wrapper)
        if config is None:
            found.append(weight)
            continue
        bundle, name = weight.weight.rsplit("/", 1)
        kept = core.kept_axes(weight.weight, tuple(params[bundle][name].shape), config)
        found.append(dataclasses.replace(weight, feature_axes=kept, epsilon=config.epsilon))
    return ModelTrace(params, modules, tuple(found))


def fold(params: Any, config: core.WeightNormConfig | None = None) -> dict[str, Any]:
    """Params of the plain (unwrapped) function, with `scale * v / ||v||` baked in.

    Every WeightNorm scale (`"<wrapper>"/"<module>/<param>/scale"`) is folded
    into the parameter it names and dropped, with bundles left empty removed,
    so the result is what `hk.transform` of the same function without the
    `WeightNorm` wrappers expects (the wrapped modules must be made outside the
    wrapper, as in `WeightNorm(hk.Linear(4))`, so they keep their names).

    Args:
      params: Haiku params of the wrapped function.
      config: the wrappers' `epsilon`, `feature_axes` and `dtype` (default:
        `WeightNorm`'s defaults); the scales say which parameters are folded,
        except with `use_scale=False`, where `variable_filter` does.

    Returns:
      Plain params `{module name: {parameter name: array}}`.

    Raises:
      TypeError: for params that are not Haiku's two-level dicts.
      ValueError: as `weightnorm.fold`.

    Examples:
      >>> import haiku as hk, jax, jax.numpy as jnp
      >>> wrapped = hk.transform(lambda x: WeightNorm(hk.Linear(2))(x))
      >>> plain = hk.transform(lambda x: hk.Linear(2)(x))
      >>> x = jnp.ones((1, 3))
      >>> params = wrapped.init(jax.random.key(0), x)
      >>> bool(jnp.allclose(plain.apply(fold(params), None, x), wrapped.apply(params, None, x)))
      True
    """
    config = _default_config() if config is None else config
    weights = weight_norms(params)
    scale_paths = {w.scale for w in weights}
    every = flatten(params)
    flat = {key: value for key, value in every.items() if key not in scale_paths}
    if config.use_scale:
        config = config.replace(
            variable_filter=core.PathFilter(frozenset(w.weight for w in weights))
        )
    scales = {core.scale_path(w.weight): every[w.scale] for w in weights}
    folded = core.fold(flat, scales, config)
    plain = {
        bundle: {n: folded[f"{bundle}/{n}"] for n in inner if f"{bundle}/{n}" not in scale_paths}
        for bundle, inner in params.items()
    }
    return {bundle: inner for bundle, inner in plain.items() if inner}


def unfold(
    params: Any, config: core.WeightNormConfig | None = None, *, name: str = "weight_norm"
) -> dict[str, Any]:
    """Params of the wrapped function from params of the plain one, same outputs.

    Each selected parameter keeps its value as direction and gets its norm as
    scale (`weightnorm.unfold`), stored in the bundle `name` of the wrapper.

    Args:
      params: Haiku params of the plain function.
      config: the wrapper's settings (default: `WeightNorm`'s defaults, which
        select the parameters named `"w"`).
      name: the wrapper's module name (`"weight_norm"` unless it was renamed).

    Returns:
      Params for the function with one `WeightNorm` wrapper named `name`.

    Raises:
      TypeError: for params that are not Haiku's two-level dicts.
      ValueError: as `weightnorm.unfold`, or when a bundle `name` exists.

    Examples:
      >>> import jax.numpy as jnp
      >>> unfold({"linear": {"w": jnp.array([[3.0], [4.0]]), "b": jnp.zeros(1)}})["weight_norm"]
      {'linear/w/scale': Array([5.], dtype=float32)}
    """
    _check_params(params)
    if name in params:
        raise ValueError(f"The params already have a bundle {name!r}; pass another `name`.")
    config = _default_config() if config is None else config
    directions, scales = core.unfold(flatten(params), config)
    return {**unflatten(directions, like=params), name: scales}


def data_dependent_init(
    apply: Callable[..., Any], params: Any, *args: Any, epsilon: float = 1e-6, **kwargs: Any
) -> dict[str, Any]:
    """Data-dependent initialization (Salimans & Kingma 2016, section 3) of every wrapped module.

    For each weight-normed module, in the order the function calls them, its
    outputs on the batch are computed with scale 1 and bias 0 (so with the
    normalized direction: `t = x . v / ||v||`), and it gets
    `scale = 1 / std(t)` and `bias = -mean(t) / std(t)` per output feature
    (last axis; `weightnorm.data_dependent_scale_bias`). Later modules see the
    outputs of those already initialized, so afterwards the pre-activations of
    every wrapped module have mean 0 and std 1 on this batch. A module's bias
    is its parameter `"b"`; without one only the scale is set.

    Args:
      apply: the transformed function's `apply`, called as
        `apply(params, *args, **kwargs)`, e.g. `transformed.apply` with
        `args = (rng, batch)` (or `(state, rng, batch)` with state).
      params: the params to start from, e.g. from `transformed.init`.
      *args: the arguments after `params`.
      epsilon: added to the variance.
      **kwargs: keyword arguments of `apply`.

    Returns:
      `params` with the scales and biases set.

    Raises:
      ValueError: when `params` has no WeightNorm scales, a wrapped module is
        not called, or its scale is not one per output feature.

    Examples:
      >>> import haiku as hk, jax, jax.numpy as jnp
      >>> model = hk.transform(lambda x: WeightNorm(hk.Linear(2))(x))
      >>> x = jax.random.normal(jax.random.key(0), (64, 3))
      >>> params = data_dependent_init(model.apply, model.init(jax.random.key(1), x), None, x)
      >>> y = model.apply(params, None, x)
      >>> jnp.round(y.mean(0), 3) + 0.0, jnp.round(y.std(0), 3)
      (Array([0., 0.], dtype=float32), Array([1., 1.], dtype=float32))
    """
    weights = weight_norms(params)

    def run(flat_params: Mapping[str, Any], wanted: Any) -> list[tuple[str, Any]]:
        outputs: list[tuple[str, Any]] = []

        def interceptor(next_fun: Any, a: Any, k: Any, context: Any) -> Any:
            out = next_fun(*a, **k)
            name = context.module.module_name
            if context.method_name == "__call__" and name in wanted:
                outputs.append((name, out))
            return out

        with hk.intercept_methods(interceptor):
            apply(unflatten(flat_params, like=params), *args, **kwargs)
        return outputs

    flat = data_dependent_init_in_order(
        flatten(params), weights, run, bias_name="b", feature_axis=-1, epsilon=epsilon
    )
    return unflatten(flat, like=params)
