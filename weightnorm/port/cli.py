"""`python -m weightnorm convert`: a checkpoint file into another framework's names and layouts.

The output is a flat safetensors file whose keys are the input's module paths
in the destination's form (`resblocks/0/convs1/0/kernel` for Linen), with each
array in the destination's layout and each weight norm kept as direction plus
`<weight>/scale`. Its metadata records the source framework, every layer's
kind and every weight norm's feature axes and epsilon, so `weightnorm.port.load`
(or `convert IN` again) reads it back without guessing anything. The file is
written as a stream (one layer in memory at a time) and atomically: a run
stopped at any point, even killed, leaves no partial file that loads (on
Linux, nothing at all). It gets the mode the umask gives;
an existing file is replaced only with `--force`, and never the input under
any name. A symbolic link at the output is written through; a file with other
hard links, a FIFO, a device or a directory is refused.

Exit codes: 0 written; 2 refused (a usage mistake, an unreadable input, an
output that must not be written, a port that cannot be exact), nothing
written; 1 an unexpected failure (a bug: please report it), nothing written;
130 interrupted, nothing written.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import traceback
from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import core
from ..adapters import NormalizedWeight
from ._checkpoint import (
    Checkpoint,
    atomic_output,
    check_output,
    load_checkpoint,
    provenance_metadata,
)
from ._convert import Spelling, apply_kinds, format_report, port_views
from ._frameworks import FRAMEWORKS, ModelView, PortError, read_model
from ._layers import (
    Layer,
    canonical_axes,
    canonical_shape,
    feature_axes,
    read_layers,
)
from ._layouts import TENSOR, axis_names
from ._pairing import resolve_kinds
from ._safetensors import SafetensorsWriter

__all__ = ["add_parser", "run", "convert_file"]

#: Every framework the CLI can write: all of the registry's.
DESTINATIONS = tuple(FRAMEWORKS)
CLI = Spelling(kinds="--kind", feature_axes="feature axes", mapping="--kind")


class _Usage(ValueError):
    """A mistake in the command line, said as a sentence."""


def _kind_rules(rules: Sequence[str]) -> dict[str, str]:
    parsed = {}
    for rule in rules:
        pattern, sep, kind = rule.rpartition("=")
        if not sep or kind not in FRAMEWORKS["torch"].layouts:
            raise _Usage(
                f"--kind takes REGEX=KIND with KIND one of {list(FRAMEWORKS['torch'].layouts)}, "
                f"got {rule!r}."
            )
        try:
            re.compile(pattern)
        except re.error as error:
            raise _Usage(
                f"--kind {rule!r}: {pattern!r} is not a regular expression ({error})."
            ) from None
        parsed[pattern] = kind
    return parsed


class _Spec:
    """The shape and dtype of an array not made yet."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)


def _target(source: ModelView, layers: list[Layer], dst: str) -> ModelView:
    """A destination in `dst`'s names and layouts holding every source layer as it is."""
    framework = FRAMEWORKS[dst]
    separator = framework.separator
    specs: dict[str, _Spec] = {}
    origin: dict[str, str] = {}
    kinds: dict[str, str] = {}
    weights: dict[str, NormalizedWeight] = {}
    where: dict[str, tuple[str, str]] = {}
    collisions = []

    def add(key: str, spec: _Spec, source_key: str, path: str, name: str) -> None:
        if key in specs:
            collisions.append(f"{origin[key]!r} and {source_key!r} both become {key!r}")
            return
        specs[key], origin[key], where[key] = spec, source_key, (path, name)

    for layer in layers:
        path = separator.join(_segments(layer.path, source))
        if layer.kind == TENSOR:
            param = layer.params["value"]
            module, _, name = path.rpartition(separator)
            add(path, _Spec(param.shape, param.dtype), param.key, module, name)
            continue
        if layer.kind not in framework.layouts:
            raise PortError(
                f"{layer.path!r} is a {layer.kind}, which {dst} has no layer for "
                "(Equinox and Haiku keep BatchNorm statistics as state)."
            )
        if len(layer.kinds) == 1:
            kinds[path] = layer.kind
        table = framework.layouts[layer.kind]
        for role, param in layer.params.items():
            if role not in table:
                continue  # BatchNorm's step count: no JAX framework keeps it (reported)
            leaf = table[role]
            key = separator.join(filter(None, (path, leaf.name)))
            canonical = canonical_shape(layer, role, layer.kind)
            names = axis_names(layer.canonical(role), layer.spatial)
            sizes = dict(zip(names, canonical, strict=True))
            dst_names = axis_names(leaf.layout, layer.spatial)
            shape = [sizes.get(n, 1) for n in dst_names]
            if param.scale_key is None:
                add(key, _Spec(shape, param.dtype), param.key, path, leaf.name)
                continue
            held = [names[a] for a in _canonical_axes(layer, role)]
            axes = tuple(i for i, n in enumerate(dst_names) if n in held)
            if dst == "torch":  # the parametrizations API, `g` keeping the reduced axes
                stem = separator.join(filter(None, (path, "parametrizations", leaf.name)))
                key, scale = f"{stem}.original1", f"{stem}.original0"
                # torch's `dim=None` keeps a 0-d `g`, which its modules load back as such
                scale_shape = [sizes[n] if n in held else 1 for n in dst_names] if held else []
            else:
                scale, scale_shape = (
                    core.scale_path(key),
                    [sizes[n] for n in dst_names if n in held],
                )
            add(key, _Spec(shape, param.dtype), param.key, path, leaf.name)
            scale_dtype = source.specs[param.scale_key][1]
            add(scale, _Spec(scale_shape, scale_dtype), param.scale_key, path, leaf.name)
            weights[key] = NormalizedWeight(key, scale, path, path, axes, param.epsilon)
    if collisions:
        raise PortError("Two inputs would be written to one key:\n  - " + "\n  - ".join(collisions))
    return ModelView(
        dst,
        specs,
        {key: (spec.shape, spec.dtype) for key, spec in specs.items()},
        lambda key: where[key],
        kinds,
        weights,
        frozenset(),
        {path: i for i, path in enumerate(dict.fromkeys(p for p, _ in where.values()))},
        lambda new: new,
    )


def _segments(path: str, view: ModelView) -> list[str]:
    separator = FRAMEWORKS[view.framework].separator
    return [part for part in path.split(separator) if part and part != "~"] if path else []


def _canonical_axes(layer: Layer, role: str) -> tuple[int, ...]:
    return canonical_axes(layer, role, feature_axes(layer, role))


def convert_file(
    input_path: str,
    output_path: str,
    dst: str,
    *,
    src: str | None = None,
    kinds: dict[str, str] | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> tuple[Any, int]:
    """Converts one checkpoint file into `dst`'s names and layouts: (pairings, arrays written).

    Raises:
      PortError, ValueError, FileExistsError, FileNotFoundError: refusals, each
        naming the path and the fix; nothing is written.
    """
    target_path = check_output(output_path, overwrite=overwrite, inputs=(input_path,))
    try:
        checkpoint = load_checkpoint(input_path)
    except OSError as error:
        if isinstance(error, FileNotFoundError) and not error.filename:
            raise  # load_checkpoint's own sentence
        raise _Usage(f"cannot read {os.fspath(input_path)!r}: {error.strerror or error}") from None
    src = src or checkpoint.framework
    if checkpoint.provenance and src != checkpoint.framework:
        raise _Usage(
            f"--from {src} contradicts {input_path!r}, which weightnorm wrote in "
            f"{checkpoint.framework}'s names; leave --from out."
        )
    source = read_model(checkpoint, src, "src")
    layers = read_layers(source)
    problems = apply_kinds(layers, kinds, CLI)
    for layer in layers:
        layer.kinds = resolve_kinds(layer, [])
        if len(layer.kinds) > 1 and not _same_everywhere(layer, dst):
            options = " or ".join(
                f"--kind '{re.escape(layer.path)}={kind}'" for kind in layer.kinds
            )
            problems.append(
                f"{layer.path!r} could be {' or '.join(map(_a, layer.kinds))}: say which, {options}"
            )
    if problems:
        raise PortError("Cannot convert the checkpoint:\n  - " + "\n  - ".join(problems))
    target = _target(source, layers, dst)
    exact = {re.escape(layer.path): layer.kind for layer in layers if layer.kind != TENSOR}
    plan = port_views(source, target, kinds=exact, spelling=CLI)
    provenance = {
        "framework": dst,
        "source": src,
        "ordered": True,
        "layers": target.kinds,
        "weight_norms": [
            {
                "weight": w.weight,
                "scale": w.scale,
                "feature_axes": list(w.feature_axes),
                "epsilon": w.epsilon,
            }
            for w in target.weight_norms.values()
        ],
    }
    specs = [(key, spec[0], spec[1]) for key, spec in target.specs.items()]
    bar = _progress_bar(checkpoint, progress)
    with atomic_output(target_path, overwrite=overwrite, name=os.fspath(output_path)) as file:
        writer = SafetensorsWriter(file, specs, provenance_metadata(provenance))
        pairings = plan.run(writer.write, progress=None if bar is None else bar.update)
        writer.finish()
    if bar is not None:
        bar.close()
    return pairings, len(specs)


def _a(kind: str) -> str:
    """A kind with its article: "a dense", "an embed"."""
    return f"{'an' if kind[:1] in 'aeiou' else 'a'} {kind}"


def _same_everywhere(layer: Layer, dst: str) -> bool:
    """Whether every kind a layer might be moves its arrays alike into `dst` (LayerNorm or
    GroupNorm do; a Conv1d and a ConvTranspose1d do not)."""

    def moves(kind: str) -> tuple[Any, ...]:
        table = FRAMEWORKS[dst].layouts.get(kind, {})
        return tuple(
            (role, layer.canonical(role, kind), layer.layout(role, kind), table[role].layout)
            for role in sorted(layer.params)
            if role in table
        )

    return len({moves(kind) for kind in layer.kinds}) == 1


def _progress_bar(checkpoint: Checkpoint, wanted: bool) -> Any:
    if not wanted:
        return None
    try:
        from tqdm import tqdm
    except ImportError as error:
        raise _Usage("--progress needs tqdm: pip install tqdm") from error
    return tqdm(total=checkpoint.nbytes, unit="B", unit_scale=True, file=sys.stderr, desc="convert")


def add_parser(commands: Any) -> None:
    """Adds the `convert` command to an argparse subparsers object."""
    parser = commands.add_parser(
        "convert",
        help="a checkpoint file in another framework's names and layouts",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("input", help="the checkpoint: safetensors or torch.save, told by content")
    parser.add_argument(
        "--from",
        dest="src",
        choices=DESTINATIONS,
        default=None,
        help="the framework whose names the input uses (default: torch, or what the file says)",
    )
    parser.add_argument("--to", dest="dst", choices=DESTINATIONS, required=True)
    parser.add_argument("-o", "--output", required=True, help="the .safetensors file to write")
    parser.add_argument(
        "--kind",
        action="append",
        default=[],
        metavar="REGEX=KIND",
        help="the kind of the layers (module paths matched in full) whose parameters fit "
        f"several kinds; one of {', '.join(FRAMEWORKS['torch'].layouts)}",
    )
    parser.add_argument("--force", action="store_true", help="replace the output if it exists")
    parser.add_argument("--progress", action="store_true", help="a progress bar on stderr")


def run(args: argparse.Namespace) -> int:
    """Runs `convert`: 0 written, 2 refused (reason on stderr), 1 unexpected, 130 interrupted."""
    try:
        pairings, count = convert_file(
            args.input,
            args.output,
            args.dst,
            src=args.src,
            kinds=_kind_rules(args.kind),
            overwrite=args.force,
            progress=args.progress,
        )
    except (PortError, _Usage, ValueError, FileExistsError, FileNotFoundError, TypeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except ImportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"error: cannot write {args.output!r}: {error.strerror or error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing was written", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        print(
            f"error: converting {args.input!r} failed unexpectedly (above); nothing was written. "
            "This is a bug in weightnorm: please report it with the lines above.",
            file=sys.stderr,
        )
        return 1
    print(format_report(pairings))
    print(f"\nwrote {count} arrays to {os.fspath(args.output)}")
    return 0
