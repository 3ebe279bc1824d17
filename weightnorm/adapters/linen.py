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

__all__ = ["WeightNorm", "flatten", "unflatten"]


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
      scale_init: initializer of the scales.
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

    Example:
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
        names = {path: box.names for path, box in boxes.items() if isinstance(box, nn.Partitioned)}
        specs = core.scale_partition_specs(flat, names, config) if names else {}
        scales = {
            name: self.param(
                name,
                _scale_init(config, boxes.get(name[: -len(core.SCALE_SUFFIX)]), specs.get(name)),
                shape,
                config.param_dtype,
            )
            for name, shape in core.scale_shapes(flat, config).items()
        }
        normalized = core.unflatten(core.normalize(flat, scales, config), like=unboxed)
        if boxes:
            normalized = jax.tree.map(_rebox, named, normalized, is_leaf=_is_box)
        return normalized[self.layer_instance.name]


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


def _scale_init(config: core.WeightNormConfig, box: Any, names: Any) -> Any:
    """`scale_init`, boxed like a partitioned kernel with the kernel's names at its feature axes."""
    if not isinstance(box, nn.Partitioned):
        return config.scale_init

    def init(key: Any, shape: tuple[int, ...], dtype: Any) -> Any:
        return dataclasses.replace(box, value=config.scale_init(key, shape, dtype), names=names)

    return init


def flatten(variables: Any) -> dict[str, Any]:
    """Linen variables (or one collection) as a flat `{"a/b/c": array}` dict.

    Keys of WeightNorm scales contain '/', so rebuild with `unflatten(flat, like)`.

    Example:
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
