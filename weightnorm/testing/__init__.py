"""Hypothesis strategies, model builders and assertions for testing code that uses weightnorm.

Needs hypothesis: `pip install 'weightnorm[testing]'`. `import weightnorm`
never imports it; the layer-stack builders import each framework only when asked for it.
"""

try:
    import hypothesis as _hypothesis  # noqa: F401
except ImportError as error:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "weightnorm.testing needs hypothesis: pip install 'weightnorm[testing]'"
    ) from error

from ._assertions import assert_params_equal as assert_params_equal
from ._assertions import assert_same_function as assert_same_function
from ._assertions import assert_trees_close as assert_trees_close
from ._assertions import assert_weight_normed as assert_weight_normed
from ._assertions import default_tolerance as default_tolerance
from ._stacks import STACK_FRAMEWORKS as STACK_FRAMEWORKS
from ._stacks import LayerSpec as LayerSpec
from ._stacks import LayerStack as LayerStack
from ._stacks import build as build
from ._stacks import inputs as inputs
from ._stacks import layer_stacks as layer_stacks
from ._strategies import float_arrays as float_arrays
from ._strategies import float_dtypes as float_dtypes
from ._strategies import param_dicts as param_dicts
from ._strategies import scale_dicts as scale_dicts
from ._strategies import weight_norm_configs as weight_norm_configs

__all__ = [
    "STACK_FRAMEWORKS",
    "LayerSpec",
    "LayerStack",
    "build",
    "inputs",
    "layer_stacks",
    "assert_params_equal",
    "assert_same_function",
    "assert_trees_close",
    "assert_weight_normed",
    "default_tolerance",
    "float_arrays",
    "float_dtypes",
    "param_dicts",
    "scale_dicts",
    "weight_norm_configs",
]
