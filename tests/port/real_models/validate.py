"""Checks that the fixtures are right, with today's port forced to the right pairing.

For each (architecture, framework, naming, api): the torch model's weights go
into the JAX model through `weightnorm.port.convert` with an explicit
`mapping=` (every torch layer to its JAX layer, from the spec), `kinds=` and
`feature_axes=` (every weight-normed variable's axes), so no pairing is left
to order or shapes. The tensors of no layer kind (DAC's snake `alpha`,
HiFi-GAN's `mean`/`scale`), which the port refuses today, are taken out of
both models before and copied by hand after (`copy_extra_leaves`). The JAX
output must then equal torch's within `TOLERANCE`.

Also structural self-checks: the spec lists exactly the torch state dict's
keys and shapes, and the JAX model holds exactly the layers and leaves the
fixture says, under the paths it says.

Run `python -m tests.port.real_models.validate` for the table of max abs diffs.
"""

from __future__ import annotations

import re
import time
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from . import ARCHITECTURES, FRAMEWORKS, NAMINGS, _torch
from ._arch import Architecture
from ._jax import KIND, Extras, flat_keys
from ._spec import LAYERS, Array, Conv, ConvTranspose, Snake, torch_path, walk

TOLERANCE = 2e-5


# --- structural self-checks ------------------------------------------------------------------


def _wn_scale_shape(leaf: Any, weight: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(size if axis == leaf.wn_dim else 1 for axis, size in enumerate(weight))


def expected_torch_state(arch: Architecture) -> dict[str, tuple[int, ...]]:
    """The state-dict keys and shapes (api "new") the spec implies."""
    expected = {}
    for path, leaf in walk(arch.spec()):
        name = torch_path(path)
        if isinstance(leaf, Array):
            expected[name] = leaf.shape
            continue
        if isinstance(leaf, Snake):
            expected[f"{name}.alpha"] = (1, leaf.channels, 1)
            continue
        if isinstance(leaf, Conv):
            weight = (leaf.c_out, leaf.c_in // leaf.groups, leaf.kernel)
        elif isinstance(leaf, ConvTranspose):
            weight = (leaf.c_in, leaf.c_out, leaf.kernel)
        elif hasattr(leaf, "c_in"):  # Linear
            weight = (leaf.c_out, leaf.c_in)
        else:  # LayerNorm, GroupNorm
            weight = (leaf.channels,)
        if getattr(leaf, "wn_dim", None) is not None:
            expected[f"{name}.parametrizations.weight.original0"] = _wn_scale_shape(leaf, weight)
            expected[f"{name}.parametrizations.weight.original1"] = weight
        else:
            expected[f"{name}.weight"] = weight
        if getattr(leaf, "bias", True):
            expected[f"{name}.bias"] = (
                (weight[1],) if isinstance(leaf, ConvTranspose) else weight[:1]
            )
    return expected


def check_spec(arch: Architecture) -> None:
    """The spec says exactly which tensors the torch model has, and which are weight-normed."""
    model = arch.torch_model("new")
    state = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    expected = expected_torch_state(arch)
    assert state == expected, (
        f"{arch.name}: spec and torch differ: only torch {sorted(set(state) - set(expected))}, "
        f"only spec {sorted(set(expected) - set(state))}, shapes "
        f"{[(k, v, expected[k]) for k, v in state.items() if expected.get(k, v) != v]}"
    )
    dims = {name: dim for name, _, dim in _torch.parametrized_weights(model)}
    spec_dims = {
        torch_path(path): leaf.wn_dim
        for path, leaf in walk(arch.spec())
        if getattr(leaf, "wn_dim", None) is not None
    }
    assert dims == spec_dims, (arch.name, dims, spec_dims)


def check_like(arch: Architecture, framework: str, naming: str) -> None:
    """Every leaf of the JAX model belongs to a listed layer or extra leaf, and vice versa."""
    like, _, extras = arch.jax_model(framework, naming)
    keys = flat_keys(like, framework)
    if framework == "linen":
        keys = [key.removeprefix("params/") for key in keys]
    leaves = {leaf.key.removeprefix("params/") for leaf in extras.leaves}
    claimed = set()
    for layer in extras.layers.values():
        owned = [key for key in keys if key.startswith(layer + "/")]
        assert owned, f"{framework}/{naming}: no leaf under layer path {layer!r}: {keys}"
        claimed.update(owned)
    assert leaves <= set(keys), (framework, naming, leaves - set(keys))
    # The wrappers' scales: `<layer>/kernel/scale` (Linen, also in a `WeightNorm_i`),
    # `<module>/w/scale` (Haiku), `.../scales/weight/scale` (Equinox, NNX: kernel).
    scales = [key for key in keys if re.search(r"/(kernel|w|weight)/scale$", key)]
    n_scales = sum(1 for _, leaf in walk(arch.spec()) if getattr(leaf, "wn_dim", None) is not None)
    assert len(scales) == n_scales, (framework, naming, scales)
    rest = set(keys) - claimed - leaves - set(scales)
    assert not rest, (framework, naming, sorted(rest))
    assert len(extras.layers) == sum(1 for _, leaf in walk(arch.spec()) if isinstance(leaf, LAYERS))


# --- extra leaves, by hand -------------------------------------------------------------------


def _get(node: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        indexed = isinstance(part, int) or isinstance(node, dict)
        node = node[part] if indexed else getattr(node, part)
    return node


def _dict_without(tree: dict, paths: list[tuple[Any, ...]]) -> dict:
    tree = jax.tree.map(lambda x: x, tree)  # a copy of the dict structure
    for path in paths:
        parents = [tree]
        for part in path[:-1]:
            parents.append(parents[-1][part])
        del parents[-1][path[-1]]
        for parent, part in zip(reversed(parents[:-1]), reversed(path[:-1]), strict=True):
            if not parent[part]:
                del parent[part]
    return tree


def _dict_with(tree: dict, values: dict[tuple[Any, ...], Any]) -> dict:
    tree = jax.tree.map(lambda x: x, tree)
    for path, value in values.items():
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return tree


def strip_extra_leaves(like: Any, extras: Extras) -> Any:
    """`like` without the extra leaves (a copy; Equinox/NNX fields set to None)."""
    paths = [leaf.path for leaf in extras.leaves]
    if not paths:
        return like
    if extras.framework in ("linen", "haiku"):
        return _dict_without(like, paths)
    if extras.framework == "equinox":
        return eqx.tree_at(lambda m: [_get(m, p) for p in paths], like, [None] * len(paths))
    like = nnx.clone(like)
    for path in paths:
        setattr(_get(like, path[:-1]), path[-1], None)
    return like


def copy_extra_leaves(ported: Any, extras: Extras, state: dict[str, np.ndarray]) -> Any:
    """`ported` with each extra leaf set from the torch state dict, reshaped (by hand)."""
    values = {
        leaf.path: jnp.asarray(state[leaf.torch_key].reshape(leaf.shape)) for leaf in extras.leaves
    }
    if not values:
        return ported
    if extras.framework in ("linen", "haiku"):
        return _dict_with(ported, values)
    if extras.framework == "equinox":
        return eqx.tree_at(
            lambda m: [_get(m, p) for p in values],
            ported,
            list(values.values()),
            is_leaf=lambda x: x is None,
        )
    for path, value in values.items():
        setattr(_get(ported, path[:-1]), path[-1], nnx.Param(value))
    return ported


def explicit_kinds(arch: Architecture, extras: Extras) -> dict[str, str]:
    """`kinds=` for both sides: every torch layer path and every JAX layer path.

    Haiku reads a module named `layer_norm` as a LayerNorm by its name, and
    wav2vec2's GroupNorm is named `layer_norm`: for Haiku that layer is
    ported as a `layer_norm` on both sides (the two kinds store the same
    parameters the same way, so the numbers are the same).
    """
    kinds = {}
    for path, leaf in walk(arch.spec()):
        if isinstance(leaf, LAYERS):
            kind = KIND[type(leaf)]
            target = extras.layers[torch_path(path)]
            if extras.framework == "haiku" and target.endswith("/layer_norm"):
                kind = "layer_norm"
            kinds[re.escape(torch_path(path))] = kind
            kinds[re.escape(target)] = kind
    return kinds


def _swapped(mapping: dict[str, Any], pair: tuple[str, str] | None) -> dict[str, Any]:
    mapping = dict(mapping)
    if pair is not None:
        first, second = pair
        mapping[first], mapping[second] = mapping[second], mapping[first]
    return mapping


def port_explicitly(
    arch: Architecture,
    model: Any,
    framework: str,
    naming: str,
    swap_layers: tuple[str, str] | None = None,
    swap_leaves: tuple[str, str] | None = None,
) -> Any:
    """`model` (a torch module of `arch`) in `framework`, every layer paired explicitly.

    The source is `model`'s state dict less the extra leaves; those are copied
    by hand afterwards. `swap_layers`/`swap_leaves` (two torch layer paths /
    state-dict keys) pair wrongly on purpose, to show that it would be seen.
    """
    from weightnorm.port import convert

    like, _, extras = arch.jax_model(framework, naming)
    state = _torch.numpy_state(model)
    extra_keys = {leaf.torch_key for leaf in extras.leaves}
    source = {key: value for key, value in state.items() if key not in extra_keys}
    state = _swapped(state, swap_leaves)
    ported = convert(
        source,
        src="torch",
        dst=framework,
        like=strip_extra_leaves(like, extras),
        mapping={re.escape(src): dst for src, dst in _swapped(extras.layers, swap_layers).items()},
        kinds=explicit_kinds(arch, extras),
        feature_axes={re.escape(key): axes for key, axes in extras.feature_axes.items()},
    )
    return copy_extra_leaves(ported, extras, state)


def max_abs_diff(arch: Architecture, framework: str, naming: str, api: str, **swaps: Any) -> float:
    """Max |JAX - torch| on `arch.example()` after an explicit port of `torch_model(api)`."""
    model = arch.torch_model(api)
    x = arch.example()
    expected = arch.torch_apply(model, x)
    _, apply, _ = arch.jax_model(framework, naming)
    ported = port_explicitly(arch, model, framework, naming, **swaps)
    got = apply(ported, x)
    assert got.shape == expected.shape, (got.shape, expected.shape)
    return float(np.max(np.abs(got - expected)))


def main() -> None:
    rows = []
    for name, arch in ARCHITECTURES.items():
        check_spec(arch)
        for framework in FRAMEWORKS:
            for naming in NAMINGS:
                start = time.perf_counter()
                arch.jax_model(framework, naming)
                built = time.perf_counter() - start
                check_like(arch, framework, naming)
                diffs, first = [], None
                for api in _torch.APIS:
                    start = time.perf_counter()
                    diffs.append(max_abs_diff(arch, framework, naming, api))
                    first = first or time.perf_counter() - start
                start = time.perf_counter()
                max_abs_diff(arch, framework, naming, "new")
                again = time.perf_counter() - start
                rows.append((name, framework, naming, *diffs, built, first, again))
                print(
                    f"{name:9} {framework:8} {naming:7} new {diffs[0]:.2e} old {diffs[1]:.2e}  "
                    f"build {built:.2f}s  port+first apply {first:.2f}s  port+apply {again:.2f}s",
                    flush=True,
                )
    worst = max(max(row[3], row[4]) for row in rows)
    print(f"worst {worst:.2e} (tolerance {TOLERANCE})")
    assert worst <= TOLERANCE


if __name__ == "__main__":
    main()
