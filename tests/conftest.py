"""Shared test settings: hypothesis profiles sized for a 2-core CI machine."""

import os

from hypothesis import HealthCheck, settings

# Each example traces and compiles small JAX programs, so examples are slow
# (tens of ms) and timing varies: no deadline, and few examples unless asked
# for with HYPOTHESIS_PROFILE=thorough.
for name, examples in {"default": 30, "thorough": 300}.items():
    settings.register_profile(
        name,
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        print_blob=True,
    )
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
