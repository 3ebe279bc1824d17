"""Framework adapters: import the one you use.

- `weightnorm.adapters.linen`: a drop-in for `flax.linen.WeightNorm` (needs flax).
- `weightnorm.adapters.haiku`: an `hk.Module` wrapper (needs dm-haiku).
- `weightnorm.adapters.equinox`: an `eqx.Module` wrapper (needs equinox).

Nothing is imported here, so `import weightnorm` never pulls in a framework.
"""
