"""weightnorm: one exact weight normalization for every JAX framework.

The core (re-exported here) works on flat `{path: array}` dicts and needs only
jax. Framework wrappers live in `weightnorm.adapters.linen`, `.haiku` and
`.equinox`, each importing only its own framework.
"""

from . import core
from .core import *  # noqa: F403 - the package's API is exactly the core's

__version__ = "0.1.0"

__all__ = list(core.__all__)
