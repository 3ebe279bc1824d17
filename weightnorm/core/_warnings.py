"""`NoVariableSelectedWarning`: a variable filter that selects nothing is reported, not ignored."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from ._config import WeightNormConfig
from ._filters import matches

__all__ = ["NoVariableSelectedWarning", "warn_if_nothing_selected"]


class NoVariableSelectedWarning(UserWarning):
    """The variable filter of a weight norm selects none of the variables.

    Rather than silently normalizing nothing, weightnorm warns once per
    wrapper (when its scales are made), so a misspelled filter is noticed.
    Silence it with `warnings.filterwarnings("ignore", category=NoVariableSelectedWarning)`.
    """


def warn_if_nothing_selected(
    flat: Mapping[str, Any], config: WeightNormConfig, *, stacklevel: int = 3
) -> None:
    """Warns with `NoVariableSelectedWarning` when `flat` has variables but none is selected."""
    if not flat or any(matches(config.variable_filter, path) for path in flat):
        return
    shown = list(flat)[:6]
    more = f" and {len(flat) - len(shown)} more" if len(flat) > len(shown) else ""
    warnings.warn(
        f"`variable_filter` {config.variable_filter!r} selects none of the variables "
        f"{shown}{more}, so nothing is weight-normalized. A string item selects the "
        "variables whose '/'-joined path contains it (one of the names shown); None "
        "selects every variable.",
        NoVariableSelectedWarning,
        stacklevel=stacklevel,
    )
