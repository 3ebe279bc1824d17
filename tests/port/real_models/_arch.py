"""`Architecture`: one transformers model as a torch fixture and as the same model in JAX."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from . import _jax, _torch
from ._jax import Extras, Ops
from ._spec import Module


@dataclasses.dataclass(frozen=True)
class JaxModel:
    """One architecture in one JAX framework; unpacks as `like, apply, extras`.

    Attributes:
      like: what `convert(..., like=like)` takes: Linen variables and Haiku
        params as `jax.ShapeDtypeStruct`s (`jax.eval_shape` of `init`), the
        Equinox and NNX modules (concrete; their abstract twins, made with
        `eqx.filter_eval_shape` / `nnx.eval_shape`, are `extras.abstract`).
      apply: `apply(params_or_module, x)`: `x` a numpy input in torch's layout
        (`Architecture.example()`), the output a numpy array in torch's layout,
        directly comparable with `Architecture.torch_apply`. Jitted once.
      extras: the module itself, the abstract/concrete twin, an example in the
        framework's own layout, and the torch -> JAX layer pairing (`Extras`).
    """

    like: Any
    apply: Callable[[Any, np.ndarray], np.ndarray]
    extras: Extras

    def __iter__(self) -> Iterator[Any]:
        return iter((self.like, self.apply, self.extras))


class Architecture:
    """A transformers model with weight norm, and the same function in Linen/Haiku/Equinox/NNX.

    Subclasses give the torch module (`build_torch`), its module tree
    (`spec`), the forward pass written once channels-last (`forward`), the
    layouts of input and output, and `example()`.
    """

    name: str
    #: seed of the torch model's random values.
    seed: int
    #: weight-norm magnitudes are drawn in gain * [0.5, 1.5).
    gain: float = 1.0

    # --- to give -------------------------------------------------------------------------

    def build_torch(self) -> Any:
        """The transformers module with weight norm applied as transformers applies it."""
        raise NotImplementedError

    def spec(self) -> Module:
        """The torch module's tree of layers (`_spec`), in registration order."""
        raise NotImplementedError

    def forward(self, layers: Any, x: Any, ops: Ops) -> Any:
        """The model on channels-last `x` (batched, or one Equinox example); layers by name."""
        raise NotImplementedError

    def to_jax(self, x: np.ndarray) -> np.ndarray:
        """An input in torch's layout -> the channels-last input of `forward`."""
        return x

    def from_jax(self, y: Any) -> np.ndarray:
        """An output of `forward` -> torch's output layout."""
        return np.asarray(y)

    def example(self) -> np.ndarray:
        """A fixed input in torch's layout (float32, batch 2)."""
        raise NotImplementedError

    def torch_apply(self, model: Any, x: np.ndarray) -> np.ndarray:
        """`model` (from `torch_model`) on `x`, as numpy, under `torch.no_grad()`."""
        raise NotImplementedError

    # --- made here -----------------------------------------------------------------------

    def torch_model(self, api: str = "new") -> Any:
        """A fresh torch model in eval mode with seeded random values.

        Args:
          api: `"new"`: weight norm as transformers applies it
            (`torch.nn.utils.parametrizations.weight_norm`); `"old"`: the same
            modules, `dim`s and `g`/`v` values under `torch.nn.utils.weight_norm`.
        """
        if api not in _torch.APIS:
            raise ValueError(f"api must be one of {_torch.APIS}, got {api!r}")
        torch = _torch.import_torch()
        torch.manual_seed(self.seed)
        model = _torch.randomize(self.build_torch(), self.seed, self.gain)
        if api == "old":
            _torch.to_old_api(model)
        return model.eval()

    def jax_model(self, framework: str, naming: str) -> JaxModel:
        """This model in `framework` (`linen`, `haiku`, `equinox`, `nnx`), named `naming`.

        `"mirror"`: module and attribute names mirror torch's (`resblocks_0/convs1_2`
        in Linen, `resblocks/0/convs1/2` in Equinox/NNX, Haiku `convs1_2` inside
        `resblocks_0`); `"plain"`: layers made in torch's declaration order with
        the framework's automatic names (Linen `Conv_0`, Haiku `conv1_d_1`) or
        one flat `layers` list (Equinox, NNX). Built once and cached.
        """
        return _jax_model(self, framework, naming)


@functools.cache
def _jax_model(arch: Architecture, framework: str, naming: str) -> JaxModel:
    example = arch.to_jax(arch.example())
    like, channels_last, extras = _jax.build(arch.spec(), arch.forward, framework, naming, example)

    def apply(params_or_module: Any, x: np.ndarray) -> np.ndarray:
        return arch.from_jax(channels_last(params_or_module, arch.to_jax(np.asarray(x))))

    return JaxModel(like, apply, extras)
