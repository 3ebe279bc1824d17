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

__all__ = ["WeightNorm", "flatten", "unflatten"]


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

    A `scale_init` that needs no randomness (the default `ones`) takes no rng
    key, so the wrapped model initializes exactly as it would unwrapped; a
    random one takes one key of `hk.next_rng_key()` per scale at init.

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
      scale_init: jax-style initializer `(key, shape, dtype) -> array` of the
        scales.
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

    Example:
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
        scale_init: Callable[..., Any] = jax.nn.initializers.ones,
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

        def getter(next_getter: Callable[[Any], Any], value: Any, context: Any) -> Any:
            if context.module is not self:  # the wrapper's own scales pass through
                value = self._normalize(context.full_name, value)
            return next_getter(value)

        with hk.custom_getter(getter, params=True, state=False):
            return self.module(*args, **kwargs)

    def _normalize(self, path: str, value: Any) -> Any:
        # A module method runs in this module's name scope, so the scales are
        # created in (and read from) the wrapper's bundle (Haiku transforms such
        # as `hk.layer_stack` may add a prefix to that bundle's name).
        flat = {path: value}
        scales = {
            key: hk.get_parameter(key, shape, self.config.param_dtype, init=self._scale_init)
            for key, shape in core.scale_shapes(flat, self.config).items()
        }
        return core.normalize(flat, scales, self.config)[path]

    def _scale_init(self, shape: tuple[int, ...], dtype: Any) -> jax.Array:
        # Haiku initializers take (shape, dtype); ours take a key first. An
        # initializer that needs no randomness (the default `ones`) gets no key,
        # so it leaves the rng sequence, and every later parameter, as it was.
        try:
            return self.config.scale_init(None, shape, dtype)
        except Exception:
            return self.config.scale_init(hk.next_rng_key(), shape, dtype)


def flatten(params: Any) -> dict[str, Any]:
    """Haiku params (or state) as a flat `{"module/~/name/param": array}` dict.

    Haiku's bundle names and the scale names contain '/', so rebuild with
    `unflatten(flat, like)`.

    Example:
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

    Example:
      >>> unflatten({"mlp/~/linear_0/w": 1.0}, like={"mlp/~/linear_0": {"w": 0.0}})
      {'mlp/~/linear_0': {'w': 1.0}}
    """
    return core.unflatten(flat, like=like)
