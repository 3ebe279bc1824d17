"""Real third-party weight-normed models (transformers 5.x) as torch fixtures and JAX twins.

`ARCHITECTURES` maps a name to an `Architecture`:

- `torch_model(api="new"|"old")`: the transformers torch module, eval mode,
  seeded random values (weight-norm magnitudes too), weight norm under the
  `parametrizations` API ("new", what transformers uses) or the old one.
- `example()`: a fixed numpy input in torch's layout; `torch_apply(model, x)`.
- `jax_model(framework, naming)`: a `JaxModel` (`like, apply, extras`) for
  `framework` in `FRAMEWORKS` and `naming` in `NAMINGS`, computing the torch
  function once given the torch weights.

See README.md here for what each model is and why it was chosen. transformers
is imported only by `torch_model`.
"""

from __future__ import annotations

from ._arch import Architecture, JaxModel
from ._jax import FRAMEWORKS, NAMINGS, ExtraLeaf, Extras
from ._torch import APIS
from .dac import DacDecoder
from .hifigan import HifiGan
from .vits import VitsPosteriorEncoder
from .wav2vec2 import Wav2Vec2

ARCHITECTURES: dict[str, Architecture] = {
    arch.name: arch for arch in (HifiGan(), DacDecoder(), Wav2Vec2(), VitsPosteriorEncoder())
}

__all__ = [
    "APIS",
    "ARCHITECTURES",
    "FRAMEWORKS",
    "NAMINGS",
    "Architecture",
    "ExtraLeaf",
    "Extras",
    "JaxModel",
]
