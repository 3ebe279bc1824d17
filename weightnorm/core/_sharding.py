"""The sharding rule: a scale is sharded like its variable's kept axes.

A scale holds one entry per feature (and per stacked layer), so it takes the
variable's partitioning at exactly those axes. A kernel sharded on its
feature axis then normalizes with no communication at all (each device holds
whole columns and their scales); one sharded on a reduced axis needs a single
all-reduce of the per-feature sums of squares, the size of the scale.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
from jax.sharding import NamedSharding, PartitionSpec

from ._config import WeightNormConfig
from ._normalize import _targets

__all__ = ["scale_partition_spec", "scale_partition_specs", "scale_shardings"]

#: One entry per array axis: a mesh axis name, a tuple of names, or None.
AxisNames = Sequence[Any]


def scale_partition_spec(kernel_names: AxisNames | None, kept_axes: Sequence[int]) -> Any:
    """The partitioning of a scale, from its variable's and the variable's kept axes.

    Args:
      kernel_names: the variable's `PartitionSpec`, or any per-axis sequence of
        names (mesh axis names or
        `nn.with_logical_partitioning` logical names); it may be shorter than
        the array (missing trailing entries mean unsharded). None means
        replicated.
      kept_axes: the variable's axes that the scale keeps (feature and stacked
        axes), sorted, non-negative.

    Returns:
      The names at `kept_axes`, of the same type as `kernel_names` (a
      `PartitionSpec` for a `PartitionSpec`, else a tuple).

    Examples:
      >>> scale_partition_spec(PartitionSpec(None, "model"), (1,)) == PartitionSpec("model")
      True
      >>> scale_partition_spec(("embed", "mlp"), (0,))
      ('embed',)
    """
    if kernel_names is None:
        return PartitionSpec()
    names = tuple(kernel_names)
    kept = tuple(names[axis] if axis < len(names) else None for axis in kept_axes)
    if isinstance(kernel_names, PartitionSpec):
        return PartitionSpec(*kept)
    return kept


def scale_partition_specs(
    flat: Mapping[str, Any], specs: Mapping[str, Any], config: WeightNormConfig
) -> dict[str, Any]:
    """The partitioning of every scale of `flat`, from its variables' partitionings.

    Use it to shard the scales of parameters held outside any wrapper (e.g. to build
    `out_shardings` or a `device_put` tree) the same way as their kernels.

    Args:
      flat: a flat `{path: array}` dict (only shapes are read).
      specs: `{path: PartitionSpec or per-axis names}` for the selected
        variables; a missing path means replicated.
      config: the weight-norm settings.

    Returns:
      `{"<path>/scale": spec}` for every scale that `scale_shapes` lists.

    Examples:
      >>> import jax.numpy as jnp
      >>> from weightnorm.core import WeightNormConfig
      >>> flat = {"Dense_0/kernel": jnp.zeros((4, 8))}
      >>> specs = scale_partition_specs(
      ...     flat, {"Dense_0/kernel": PartitionSpec(None, "model")}, WeightNormConfig()
      ... )
      >>> specs == {"Dense_0/kernel/scale": PartitionSpec("model")}
      True
    """
    if not config.use_scale:
        return {}
    return {
        target.scale_key: scale_partition_spec(specs.get(target.path), target.kept_axes)
        for target in _targets(flat, config)
    }


def scale_shardings(flat: Mapping[str, Any], config: WeightNormConfig) -> dict[str, Any]:
    """`NamedSharding`s for the scales of the selected arrays that have one.

    Reads each selected array's `.sharding`; arrays without a `NamedSharding`
    (unsharded, or tracers) give no entry.

    Args:
      flat: a flat `{path: jax.Array}` dict.
      config: the weight-norm settings.

    Returns:
      `{"<path>/scale": NamedSharding}` for every selected array placed with a
      `NamedSharding`.
    """
    if not config.use_scale:
        return {}
    shardings = {}
    for target in _targets(flat, config):
        sharding = _named_sharding(flat[target.path])
        if sharding is not None:
            spec = scale_partition_spec(sharding.spec, target.kept_axes)
            shardings[target.scale_key] = NamedSharding(sharding.mesh, spec)
    return shardings


def _named_sharding(array: Any) -> NamedSharding | None:
    if isinstance(array, jax.core.Tracer):
        return None
    sharding = getattr(array, "sharding", None)
    return sharding if isinstance(sharding, NamedSharding) else None
