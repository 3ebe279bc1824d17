"""weightnorm: one exact weight normalization for every JAX framework.

The core's user-facing functions are re-exported here; they work on flat
`{path: array}` dicts and need only jax. Framework wrappers live in
`weightnorm.adapters.linen`, `.haiku`, `.equinox` and `.nnx`, each importing
only its own framework; porting between frameworks is `weightnorm.port`.
"""

from .core import SCALE_SUFFIX as SCALE_SUFFIX
from .core import FeatureAxes as FeatureAxes
from .core import NoVariableSelectedWarning as NoVariableSelectedWarning
from .core import PathFilter as PathFilter
from .core import VariableFilter as VariableFilter
from .core import WeightNormConfig as WeightNormConfig
from .core import data_dependent_scale_bias as data_dependent_scale_bias
from .core import decompose as decompose
from .core import flatten as flatten
from .core import fold as fold
from .core import init_scales as init_scales
from .core import normalize as normalize
from .core import scale_partition_spec as scale_partition_spec
from .core import scale_partition_specs as scale_partition_specs
from .core import scale_shapes as scale_shapes
from .core import scale_shardings as scale_shardings
from .core import select as select
from .core import unflatten as unflatten
from .core import unfold as unfold

__version__ = "0.1.0"

__all__ = [
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
]
