"""Hypothesis strategies and builders for testing code that uses weightnorm.

Needs hypothesis (`pip install 'weightnorm[testing]'`); the builders import
each framework only when asked for it.
"""

from ._stacks import STACK_FRAMEWORKS as STACK_FRAMEWORKS
from ._stacks import LayerSpec as LayerSpec
from ._stacks import LayerStack as LayerStack
from ._stacks import build as build
from ._stacks import inputs as inputs
from ._stacks import layer_stacks as layer_stacks

__all__ = ["STACK_FRAMEWORKS", "LayerSpec", "LayerStack", "build", "inputs", "layer_stacks"]
