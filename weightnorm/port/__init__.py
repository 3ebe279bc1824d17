"""Port models between Flax Linen, NNX, Haiku, Equinox and PyTorch checkpoints.

`convert(params, src=..., dst=..., like=...)` moves every parameter (weight
norm included) into a destination model of the same architecture, exactly, or
refuses with an error listing what does not fit. The layout table it reads
(`LAYOUTS`) is plain data in `weightnorm.core`. Imports jax and numpy only;
torch and safetensors are imported when a checkpoint needs them.
"""

from ..core._layouts import KINDS as KINDS
from ..core._layouts import LAYOUTS as LAYOUTS
from ..core._layouts import Leaf as Leaf
from ._convert import Pairing as Pairing
from ._convert import convert as convert
from ._convert import format_report as format_report
from ._io import load_checkpoint as load_checkpoint
from ._io import load_safetensors as load_safetensors
from ._io import load_torch as load_torch
from ._io import save_safetensors as save_safetensors
from ._layers import PortError as PortError

__all__ = [
    "KINDS",
    "LAYOUTS",
    "Leaf",
    "Pairing",
    "PortError",
    "convert",
    "format_report",
    "load_checkpoint",
    "load_safetensors",
    "load_torch",
    "save_safetensors",
]
