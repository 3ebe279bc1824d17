"""Port models between Flax Linen, NNX, Haiku, Equinox and PyTorch checkpoints.

`convert(params, src=..., dst=..., like=...)` moves every parameter (weight
norm included) into a destination model of the same architecture, exactly,
or refuses with an error listing what does not fit. Layers pair by their
names first, then by what only one layer could be, then by the models' own
order where both have one (see docs/porting.md). `load_checkpoint` opens a
checkpoint file of any format lazily; `load(path, dst=..., like=...)` ports a
file into a model in one call. The registry `FRAMEWORKS` says how each
framework stores each layer kind. Imports jax and numpy only; torch is
imported when a torch model or `.pt` file is read, each framework when one of
its models is. `python -m weightnorm convert` is the command line (`cli`).
"""

from . import cli as cli
from ._checkpoint import Checkpoint as Checkpoint
from ._checkpoint import load_checkpoint as load_checkpoint
from ._checkpoint import load_safetensors as load_safetensors
from ._checkpoint import load_torch as load_torch
from ._checkpoint import save_safetensors as save_safetensors
from ._convert import Pairing as Pairing
from ._convert import convert as convert
from ._convert import format_report as format_report
from ._convert import load as load
from ._convert import save as save
from ._frameworks import FRAMEWORKS as FRAMEWORKS
from ._frameworks import Framework as Framework
from ._frameworks import PortError as PortError
from ._frameworks import read_model as read_model
from ._layouts import KIND_SPECS as KIND_SPECS
from ._layouts import Leaf as Leaf

KINDS = tuple(KIND_SPECS)
"""Every layer kind the port knows."""

LAYOUTS = {
    kind: {name: entry.layouts[kind] for name, entry in FRAMEWORKS.items() if kind in entry.layouts}
    for kind in KINDS
}
"""kind -> framework -> role -> `Leaf`: the registry's layouts, kind by kind (read only)."""

__all__ = [
    "Checkpoint",
    "FRAMEWORKS",
    "Framework",
    "KINDS",
    "KIND_SPECS",
    "LAYOUTS",
    "Leaf",
    "Pairing",
    "PortError",
    "convert",
    "format_report",
    "load",
    "load_checkpoint",
    "load_safetensors",
    "load_torch",
    "cli",
    "read_model",
    "save",
    "save_safetensors",
]
