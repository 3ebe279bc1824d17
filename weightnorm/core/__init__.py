"""Framework-free weight normalization on flat path-keyed dicts.

Imports jax and numpy only. Every adapter (Linen, Haiku, Equinox) maps its
framework's parameters onto these functions.
"""

from ._config import FeatureAxes as FeatureAxes
from ._config import WeightNormConfig as WeightNormConfig
from ._filters import VariableFilter as VariableFilter
from ._filters import select as select
from ._fold import fold as fold
from ._fold import unfold as unfold
from ._init import data_dependent_scale_bias as data_dependent_scale_bias
from ._init import init_scales as init_scales
from ._normalize import SCALE_SUFFIX as SCALE_SUFFIX
from ._normalize import decompose as decompose
from ._normalize import normalize as normalize
from ._normalize import scale_shapes as scale_shapes
from ._sharding import scale_partition_spec as scale_partition_spec
from ._sharding import scale_partition_specs as scale_partition_specs
from ._sharding import scale_shardings as scale_shardings
from ._tree import flatten as flatten
from ._tree import unflatten as unflatten
from ._warnings import NoVariableSelectedWarning as NoVariableSelectedWarning

__all__ = [
    "FeatureAxes",
    "NoVariableSelectedWarning",
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
]
