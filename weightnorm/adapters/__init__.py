"""Framework adapters: import the one you use.

- `weightnorm.adapters.linen`: a drop-in for `flax.linen.WeightNorm` (needs flax).
- `weightnorm.adapters.haiku`: an `hk.Module` wrapper (needs dm-haiku).
- `weightnorm.adapters.equinox`: an `eqx.Module` wrapper (needs equinox).
- `weightnorm.adapters.nnx`: an `nnx.Module` wrapper that, unlike `flax.nnx.WeightNorm`,
  never overwrites the wrapped layer's parameters (needs flax).

Nothing is imported here, so `import weightnorm` never pulls in a framework.
"""
