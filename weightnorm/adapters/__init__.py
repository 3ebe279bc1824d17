"""Framework adapters: import the one you use.

- `weightnorm.adapters.linen`: a drop-in for `flax.linen.WeightNorm` (needs flax).
- `weightnorm.adapters.haiku`: an `hk.Module` wrapper (needs dm-haiku).
- `weightnorm.adapters.equinox`: an `eqx.Module` wrapper (needs equinox).
- `weightnorm.adapters.nnx`: an `nnx.Module` wrapper that, unlike `flax.nnx.WeightNorm`,
  never overwrites the wrapped layer's parameters (needs flax).

Each module has the same parts: the `WeightNorm` wrapper; `flatten` and
`unflatten` between the framework's parameters and the core's flat dicts;
`weight_norms`, which reads from a model which weight each scale normalizes
(as `NormalizedWeight` records); and `fold`, `unfold` and
`data_dependent_init` built on it. Only the framework-free records are
imported here, so `import weightnorm.adapters` pulls in no framework.
"""

from ._common import ModelTrace as ModelTrace
from ._common import NormalizedWeight as NormalizedWeight

__all__ = ["ModelTrace", "NormalizedWeight"]
