"""A framework-free description of a torch model's module tree, read by every JAX builder.

Each architecture describes its transformers module once, as a tree of
`Module` (a torch `nn.Module` with named children, in registration order),
`ModuleList` and leaf layers (`Conv`, `ConvTranspose`, `Linear`,
`LayerNorm`, `GroupNorm`, `Snake`, `Array`). The JAX builders make each
framework's model from it, mirroring torch's names or not, and know from it
which torch layer each JAX layer is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any


@dataclasses.dataclass(frozen=True)
class Conv:
    """A torch `nn.Conv1d`; `wn_dim` is torch's weight-norm `dim` (None: no weight norm)."""

    c_in: int
    c_out: int
    kernel: int
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    groups: int = 1
    bias: bool = True
    wn_dim: int | None = None


@dataclasses.dataclass(frozen=True)
class ConvTranspose:
    """A torch `nn.ConvTranspose1d` (groups 1, output_padding 0); `wn_dim` as `Conv`'s."""

    c_in: int
    c_out: int
    kernel: int
    stride: int = 1
    padding: int = 0
    bias: bool = True
    wn_dim: int | None = None


@dataclasses.dataclass(frozen=True)
class Linear:
    """A torch `nn.Linear`."""

    c_in: int
    c_out: int
    bias: bool = True


@dataclasses.dataclass(frozen=True)
class LayerNorm:
    """A torch `nn.LayerNorm` over the channels."""

    channels: int
    eps: float = 1e-5


@dataclasses.dataclass(frozen=True)
class GroupNorm:
    """A torch `nn.GroupNorm` on `(batch, channels, time)`."""

    groups: int
    channels: int
    eps: float = 1e-5


@dataclasses.dataclass(frozen=True)
class Snake:
    """DAC's `Snake1d`: `x + sin(alpha x)^2 / (alpha + 1e-9)`, `alpha` of torch shape (1, C, 1)."""

    channels: int


@dataclasses.dataclass(frozen=True)
class Array:
    """A bare tensor of the module (a torch parameter or buffer, e.g. HiFi-GAN's `mean`)."""

    shape: tuple[int, ...]
    init: float = 0.0


Leaf = Conv | ConvTranspose | Linear | LayerNorm | GroupNorm | Snake | Array
#: Leaves that are layers (have a weight); `Snake` and `Array` are extra tensors.
LAYERS = (Conv, ConvTranspose, Linear, LayerNorm, GroupNorm)


@dataclasses.dataclass(frozen=True)
class ModuleList:
    """A torch `nn.ModuleList`."""

    items: tuple[Any, ...]


@dataclasses.dataclass(frozen=True)
class Module:
    """A torch module: its children by attribute name, in registration order.

    `torch_class` names the torch class (the Haiku top-level module and the
    Equinox classes are named after it).
    """

    torch_class: str
    children: tuple[tuple[str, Any], ...]

    def __getitem__(self, name: str) -> Any:
        return dict(self.children)[name]


def module(torch_class: str, **children: Any) -> Module:
    """A `Module` whose children are given in order as keyword arguments."""
    return Module(torch_class, tuple(children.items()))


def walk(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """Every leaf with its path (names and list indices), in torch declaration order."""
    if isinstance(node, Module):
        for name, child in node.children:
            yield from walk(child, (*path, name))
    elif isinstance(node, ModuleList):
        for index, child in enumerate(node.items):
            yield from walk(child, (*path, index))
    else:
        yield path, node


def torch_path(path: tuple[Any, ...]) -> str:
    """The torch name of a path: `("resblocks", 0, "convs1", 2)` -> `resblocks.0.convs1.2`."""
    return ".".join(str(part) for part in path)


class Bunch:
    """A plain namespace: the layers of a flat ("plain") model, re-nested as torch nests them.

    The forward functions read `layers.resblocks[0].convs1[2]` whether the
    model mirrors torch's names or keeps its layers in one flat list.
    """

    def __init__(self, **attributes: Any) -> None:
        self.__dict__.update(attributes)


def nest(node: Any, leaves: Iterator[Any]) -> Any:
    """`node`'s tree with each leaf replaced by the next of `leaves` (declaration order)."""
    if isinstance(node, Module):
        return Bunch(**{name: nest(child, leaves) for name, child in node.children})
    if isinstance(node, ModuleList):
        return [nest(child, leaves) for child in node.items]
    return next(leaves)
