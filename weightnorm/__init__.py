"""weightnorm: one exact weight normalization for every JAX framework.

The core (re-exported here) works on flat `{path: array}` dicts and needs only
jax. Framework wrappers live in `weightnorm.adapters.linen`, `.haiku` and
`.equinox`, each importing only its own framework.
"""

from .core import SCALE_SUFFIX as SCALE_SUFFIX
from .core import FeatureAxes as FeatureAxes
from .core import VariableFilter as VariableFilter
from .core import WeightNormConfig as WeightNormConfig
from .core import decompose as decompose
from .core import flatten as flatten
from .core import init_scales as init_scales
from .core import normalize as normalize
from .core import scale_shapes as scale_shapes
from .core import select as select
from .core import unflatten as unflatten

__version__ = "0.1.0"

__all__ = [
    "FeatureAxes",
    "SCALE_SUFFIX",
    "VariableFilter",
    "WeightNormConfig",
    "decompose",
    "flatten",
    "init_scales",
    "normalize",
    "scale_shapes",
    "select",
    "unflatten",
]
