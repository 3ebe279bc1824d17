"""`python -m weightnorm convert`: a PyTorch checkpoint as a flat Linen/Haiku/Equinox checkpoint."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..core import SCALE_SUFFIX
from ..core._layouts import KINDS, LAYOUTS, axis_names
from ._convert import Pairing, _apply_kinds, convert_models, format_report
from ._frameworks import Model, read_model, slash_split
from ._io import load_checkpoint, save_safetensors
from ._layers import PortError, feature_axes, pairing_class, read_layers

__all__ = ["convert_checkpoint", "add_parser", "run"]

DESTINATIONS = ("linen", "haiku", "equinox")


def _kind_rules(rules: Sequence[str]) -> list[tuple[str, str]]:
    parsed = []
    for rule in rules:
        pattern, sep, kind = rule.rpartition("=")
        if not sep or kind not in KINDS:
            raise PortError(
                f"--kind takes REGEX=KIND with KIND one of {list(KINDS)}, got {rule!r}."
            )
        parsed.append((pattern, kind))
    return parsed


def convert_checkpoint(
    state: Mapping[str, Any], dst: str, kinds: Sequence[tuple[str, str]] = ()
) -> tuple[dict[str, np.ndarray], list[Pairing]]:
    """A torch state dict as a flat dict in `dst`'s names and layouts, and the pairing.

    Each torch module `a.b` becomes the layer `a/b` with the destination's leaf
    names (`a/b/kernel`, `a/b/bias` in Linen); a weight-normed weight keeps its
    direction and gets its scale at `<weight key>/scale`, as the wrappers of
    `weightnorm.adapters` store it (the report gives its feature axes).

    Args:
      state: the torch state dict (numpy arrays or tensors).
      dst: `"linen"`, `"haiku"` or `"equinox"`.
      kinds: `(regex, kind)` rules naming the kind of the layers (by module
        path, matched in full) whose parameters fit several kinds.

    Raises:
      PortError: listing the layers whose kind the checkpoint does not tell
        (a 3-D `weight` is a Conv1d or a ConvTranspose1d), and as `convert`.
    """
    if dst not in DESTINATIONS:
        raise PortError(f"--to must be one of {list(DESTINATIONS)}, got {dst!r}.")
    source = read_model(dict(state), "torch", "src")
    layers, unknown = read_layers(
        source.flat,
        "torch",
        split=source.split,
        kind_hints={},
        scale_of={},
        natural_order=False,
    )
    problems = [f"leaves of no layer kind the table knows: {unknown}"] if unknown else []
    # A --kind that names an unknown kind, or one the layer's parameters don't fit, is
    # reported (as `convert` reports its `kinds=`), never silently ignored.
    problems += _apply_kinds(layers, dict(kinds))
    for layer in layers:
        if len({pairing_class(kind) for kind in layer.kinds}) > 1:
            problems.append(
                f"{layer.path!r} could be a {' or a '.join(layer.kinds)}; say which with "
                f"--kind '{re.escape(layer.path)}={layer.kinds[-1]}'"
            )
    if problems:
        raise PortError("Cannot convert the checkpoint:\n  - " + "\n  - ".join(problems))
    like: dict[str, Any] = {}
    hints = {}
    scale_axes = {}
    for layer in layers:
        path = layer.path.replace(".", "/")
        hints[path] = layer.kind
        table = LAYOUTS[layer.kind][dst]
        for role, param in layer.params.items():
            if role not in table:
                continue  # e.g. BatchNorm's count: nothing holds it
            key = f"{path}/{table[role].name}" if path else table[role].name
            dtype = np.asarray(source.flat[param.key]).dtype
            names = axis_names(layer.canonical(role), layer.spatial)
            sizes = dict(zip(names, param.shape, strict=True))
            dst_names = axis_names(table[role].layout, layer.spatial)
            like[key] = np.zeros([sizes.get(n, 1) for n in dst_names], dtype)
            if param.scale_key is not None:
                held = [names[a] for a in feature_axes(layer, role)]
                like[key + SCALE_SUFFIX] = np.zeros(
                    [sizes[n] for n in dst_names if n in held], dtype
                )
                scale_axes[key + SCALE_SUFFIX] = tuple(
                    i for i, n in enumerate(dst_names) if n in held
                )
    scale_of = {key + SCALE_SUFFIX: key for key in like if key + SCALE_SUFFIX in like}
    target = Model(
        dst, like, slash_split(False), hints, scale_of, False, lambda new: new, scale_axes
    )
    resolved = {re.escape(layer.path): layer.kind for layer in layers}
    resolved.update({re.escape(path): kind for path, kind in hints.items()})
    return convert_models(source, target, kinds=resolved)


def add_parser(commands: Any) -> None:
    """Adds the `convert` command to an argparse subparsers object."""
    parser = commands.add_parser(
        "convert",
        help="a PyTorch checkpoint as a flat Linen/Haiku/Equinox safetensors checkpoint",
        description=(
            "Reads a PyTorch state dict (.safetensors, or .pt/.bin with torch installed), "
            "ports every layer the layout table knows into the destination's names and "
            "layouts (weight norm kept: direction plus '<weight>/scale'), prints the "
            "pairing and writes a flat .safetensors file."
        ),
    )
    parser.add_argument("input", help="the torch checkpoint")
    parser.add_argument("--from", dest="src", choices=["torch"], default="torch")
    parser.add_argument("--to", dest="dst", choices=DESTINATIONS, required=True)
    parser.add_argument("-o", "--output", required=True, help="the .safetensors file to write")
    parser.add_argument(
        "--kind",
        action="append",
        default=[],
        metavar="REGEX=KIND",
        help=f"the kind of layers whose parameters fit several ({', '.join(KINDS)})",
    )


def run(args: argparse.Namespace) -> int:
    """Runs `convert`; 0 on success, 2 (with the reason on stderr) when refused."""
    try:
        state = load_checkpoint(args.input)
        flat, pairings = convert_checkpoint(state, args.dst, _kind_rules(args.kind))
        save_safetensors(flat, args.output)
    except (PortError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_report(pairings))
    print(f"\nwrote {len(flat)} arrays to {args.output}")
    return 0
