"""Framework-free weight normalization on flat path-keyed dicts.

Imports jax and numpy only, and names no framework. Every adapter in
`weightnorm.adapters` maps its framework's parameters onto these functions;
the names after `unfold` in `__all__` are the
building blocks adapters share (the scale-key convention, the `scale_init` key
rule, checks and warnings), public so that no adapter reaches into the core's
private modules.
"""

from ._config import FeatureAxes as FeatureAxes
from ._config import WeightNormConfig as WeightNormConfig
from ._config import resolve_feature_axes as resolve_feature_axes
from ._filters import PathFilter as PathFilter
from ._filters import VariableFilter as VariableFilter
from ._filters import select as select
from ._fold import fold as fold
from ._fold import unfold as unfold
from ._init import KeySource as KeySource
from ._init import check_finite as check_finite
from ._init import data_dependent_scale_bias as data_dependent_scale_bias
from ._init import init_scales as init_scales
from ._init import needs_key as needs_key
from ._normalize import SCALE_SUFFIX as SCALE_SUFFIX
from ._normalize import decompose as decompose
from ._normalize import is_scale_path as is_scale_path
from ._normalize import kept_axes as kept_axes
from ._normalize import normalize as normalize
from ._normalize import scale_path as scale_path
from ._normalize import scale_shapes as scale_shapes
from ._normalize import weight_path as weight_path
from ._sharding import scale_partition_spec as scale_partition_spec
from ._sharding import scale_partition_specs as scale_partition_specs
from ._sharding import scale_shardings as scale_shardings
from ._tree import check_flat as check_flat
from ._tree import flatten as flatten
from ._tree import path_key as path_key
from ._tree import unflatten as unflatten
from ._warnings import NoVariableSelectedWarning as NoVariableSelectedWarning
from ._warnings import warn_if_nothing_selected as warn_if_nothing_selected

__all__ = [
    # The weight norm on flat dicts.
    "FeatureAxes",
    "NoVariableSelectedWarning",
    "PathFilter",
    "SCALE_SUFFIX",
    "VariableFilter",
    "WeightNormConfig",
    "data_dependent_scale_bias",
    "decompose",
    "flatten",
    "fold",
    "init_scales",
    "normalize",
    "scale_partition_spec",
    "scale_partition_specs",
    "scale_shapes",
    "scale_shardings",
    "select",
    "unflatten",
    "unfold",
    # Building blocks the adapters share.
    "KeySource",
    "check_finite",
    "check_flat",
    "is_scale_path",
    "kept_axes",
    "needs_key",
    "path_key",
    "resolve_feature_axes",
    "scale_path",
    "warn_if_nothing_selected",
    "weight_path",
]
