"""Porting real transformers models with weight norm, as the port is meant to.

For each architecture of `ARCHITECTURES` (HiFi-GAN vocoder, DAC decoder,
wav2vec2, VITS posterior encoder), each JAX framework and each naming
("mirror": names as torch's; "plain": the framework's own names), the torch
weights reach the JAX model with a bare
`convert(params, src="torch", dst=framework, like=like)`: no `mapping=`,
`kinds=` or `feature_axes=`. Sources: the torch module, its state dict, a
`.safetensors` file (and a `.pt` file for the new weight-norm API) read with
`weightnorm.port.load_checkpoint`.

What must hold:
- the JAX output is within `TOLERANCE` of torch's, never silently off;
- every source gives bitwise the result of the module, except that with
  "plain" names a file (whose key order is lost) may be refused with a
  `PortError` naming at least two candidate layers;
- where `like` alone cannot tell a weight norm's feature axes (Linen/Haiku
  scales store only their sizes; wav2vec2's square positional conv normalizes
  over its kernel axis, not the default), the port may instead refuse naming
  that layer; with the traced `like=module, example=x` it may not;
- Linen also takes `like=module, example=x`, Haiku `like=transformed,
  example=x`, Equinox and NNX abstract modules, with the same result;
- back to torch (`like=` a torch model holding other values), every tensor
  of the state dict, buffers included, comes back bit for bit.

The fixtures themselves are checked in `test_fixtures.py` (explicit pairing).
"""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest
import safetensors.torch
import torch

from weightnorm.adapters import haiku as wh
from weightnorm.adapters import linen as wl
from weightnorm.port import PortError, convert, load_checkpoint

from . import APIS, ARCHITECTURES, FRAMEWORKS, NAMINGS, _torch
from ._jax import flat_arrays

TOLERANCE = 2e-5

#: (what the source is, weight-norm API): `.pt` files for the new API only.
SOURCES = [
    f"{kind}-{api}"
    for api in APIS
    for kind in ("module", "state_dict", "safetensors", "pt")
    if not (kind == "pt" and api == "old")
]
FILES = ("safetensors", "pt")
CASES = list(itertools.product(ARCHITECTURES, FRAMEWORKS, NAMINGS))


def _source(kind: str, model: torch.nn.Module, tmp_path) -> object:
    if kind == "module":
        return model
    if kind == "state_dict":
        return model.state_dict()
    if kind == "safetensors":
        path = tmp_path / "model.safetensors"
        safetensors.torch.save_file(model.state_dict(), path)
        return load_checkpoint(path)
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    return load_checkpoint(path)


def _assert_same_arrays(got, expected, framework: str) -> None:
    got, expected = flat_arrays(got, framework), flat_arrays(expected, framework)
    assert list(got) == list(expected)
    for key, value in expected.items():
        assert np.asarray(got[key]).dtype == np.asarray(value).dtype, key
        np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(value), err_msg=key)


def _layer_paths_named(message: str, paths) -> list[str]:
    """The layer paths `message` names, alone or as the start of a key (`conv1.bias`).

    Whole names only: `conv1` is not named by `res_unit1.conv1`, nor `Conv_1` by `Conv_10`;
    Linen keys may carry their collection (`params/Conv_1/kernel` names `Conv_1`).
    """
    message = re.sub(r"(?<![\w/])params/", "", message)
    return [
        path
        for path in paths
        if re.search(rf"(?<![\w.~/]){re.escape(path)}(?!\w)", message) is not None
    ]


def _ambiguous_axes(like, extras) -> list[str]:
    """Weight-normed variables whose feature axes `like` alone does not tell.

    Linen and Haiku scales store only the sizes of the feature axes: a scale of
    16 on wav2vec2's (16, 8, 16) positional kernel fits the kernel axis (what
    the wrapper uses, torch's dim=2) and the output axis (the default) alike.
    Variables on the default axis are not listed (the default decides a tie).
    """
    if extras.framework not in ("linen", "haiku"):
        return []
    shapes = {key: tuple(value.shape) for key, value in flat_arrays(like, extras.framework).items()}
    found = []
    for key, axes in extras.feature_axes.items():
        shape = shapes[key]
        if axes == (len(shape) - 1,):
            continue
        fits = [
            other
            for other in itertools.combinations(range(len(shape)), len(axes))
            if [shape[a] for a in other] == [shape[a] for a in axes]
        ]
        if len(fits) > 1:
            found.append(key)
    return found


def _may_refuse(
    error: PortError, extras, *, order_doubt: bool, ambiguous: list[str], kinds_unknown: bool
) -> bool:
    """Whether `error` is a refusal the port may make here, naming what it cannot decide.

    Three things the inputs may not tell, each refused naming what is in doubt:
    - with "plain" names, which of several same-shaped layers (or extra tensors)
      goes where, when the two orders are not of one kind (a file's keys come
      back sorted; Linen and Haiku number default-named layers in call order,
      torch in declaration order): at least two candidates named;
    - a Linen/Haiku scale whose axes the variables do not tell (`ambiguous`):
      its feature axes named as the doubt;
    - a square Conv1d against a layer that could be a ConvTranspose1d, when
      neither side has module classes (a state dict or file into Linen/Haiku
      variables with names of the user's choosing): the two kinds named.
    """
    message = str(error)
    candidates = [
        *extras.layers,
        *extras.layers.values(),
        *(leaf.torch_key for leaf in extras.leaves),
    ]
    if order_doubt and "cannot tell which of the" in message:
        return len(_layer_paths_named(message, candidates)) >= 2
    if kinds_unknown and "could each be a conv or a conv_transpose" in message:
        return bool(_layer_paths_named(message, candidates))
    if not ambiguous or re.search(r"\bfeature axes\b", message) is None:
        return False
    keys = [key.removeprefix("params/") for key in ambiguous]
    layers = [key.rpartition("/")[0] for key in keys]
    torch_layers = [src for src, dst in extras.layers.items() if dst in layers]
    return bool(_layer_paths_named(message, [*keys, *layers, *torch_layers]))


def _mapping(extras, back: bool = False) -> dict[str, str]:
    """The pairing said explicitly: every torch layer and extra tensor to its JAX path."""
    pairs = dict(extras.layers)
    for leaf in extras.leaves:
        path = leaf.path[1:] if extras.framework == "linen" else leaf.path  # no collection
        pairs[leaf.torch_key] = "/".join(map(str, path))
    if back:
        pairs = {dst: src for src, dst in pairs.items()}
    return {re.escape(src): dst for src, dst in pairs.items()}


def _trace(framework: str, extras, variables):
    """Linen variables or Haiku params with their model, read exactly by the port."""
    if framework == "linen":
        return wl.trace(extras.module, extras.example, variables=variables)
    return wh.trace(extras.module, extras.example, params=variables)


def _exact_like(framework: str, like, extras) -> dict:
    """`convert` arguments whose destination says everything: a traced Linen/Haiku model."""
    if framework in ("linen", "haiku"):
        return {"like": extras.module, "example": extras.example}
    return {"like": like}


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize(("arch", "framework", "naming"), CASES)
def test_torch_weights_run_in_jax_as_in_torch(arch, framework, naming, source, tmp_path):
    architecture = ARCHITECTURES[arch]
    kind, api = source.split("-")
    model = architecture.torch_model(api)
    x = architecture.example()
    like, apply, extras = architecture.jax_model(framework, naming)
    order_doubt = naming == "plain" and (kind in FILES or framework in ("linen", "haiku"))
    kinds_unknown = kind != "module" and framework in ("linen", "haiku") and naming == "mirror"
    expected = architecture.torch_apply(model, x)
    params = _source(kind, model, tmp_path)
    options = {"like": like}
    try:
        ported = convert(params, src="torch", dst=framework, like=like)
    except PortError as error:
        allowed = _may_refuse(
            error,
            extras,
            order_doubt=order_doubt,
            ambiguous=_ambiguous_axes(like, extras),
            kinds_unknown=kinds_unknown,
        )
        assert allowed, str(error)
        # What the refusal asks for decides it: the pairing said (`mapping=`), a
        # destination that says its kinds and axes (a traced Linen/Haiku model).
        options = _exact_like(framework, like, extras)
        if order_doubt:
            options["mapping"] = _mapping(extras)
        ported = convert(params, src="torch", dst=framework, **options)
    np.testing.assert_allclose(apply(ported, x), expected, atol=TOLERANCE, rtol=0)
    if params is not model:  # every source gives what the module gives, bit for bit
        _assert_same_arrays(
            ported, convert(model, src="torch", dst=framework, **options), framework
        )


@pytest.mark.parametrize(("arch", "framework", "naming"), CASES)
def test_every_kind_of_like_gives_the_same_result(arch, framework, naming):
    architecture = ARCHITECTURES[arch]
    model = architecture.torch_model("new")
    x = architecture.example()
    like, apply, extras = architecture.jax_model(framework, naming)
    # Linen and Haiku number default-named layers in call order, torch in declaration
    # order: with "plain" names the pairing is said.
    order_doubt = naming == "plain" and framework in ("linen", "haiku")
    said = {"mapping": _mapping(extras)} if order_doubt else {}
    if framework in ("linen", "haiku"):
        # The module (Haiku: the hk.Transformed) and an input, for exact tracing:
        # the wrappers' feature axes are known, never guessed from shapes.
        exact = {"like": extras.module, "example": extras.example}
    else:  # built with eqx.filter_eval_shape / nnx.eval_shape
        exact = {"like": extras.abstract}
    got = convert(model, src="torch", dst=framework, **exact, **said)
    np.testing.assert_allclose(
        apply(got, x), architecture.torch_apply(model, x), atol=TOLERANCE, rtol=0
    )
    try:
        expected = convert(model, src="torch", dst=framework, like=like, **said)
    except PortError as error:
        assert _may_refuse(
            error,
            extras,
            order_doubt=False,
            ambiguous=_ambiguous_axes(like, extras),
            kinds_unknown=False,
        ), str(error)
        return
    _assert_same_arrays(got, expected, framework)


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize(("arch", "framework", "naming"), CASES)
def test_back_to_torch_gives_every_tensor_bit_for_bit(arch, framework, naming, api):
    architecture = ARCHITECTURES[arch]
    model = architecture.torch_model(api)
    like, _, extras = architecture.jax_model(framework, naming)
    order_doubt = naming == "plain" and framework in ("linen", "haiku")
    back_said = {"mapping": _mapping(extras, back=True)} if order_doubt else {}
    try:
        ported = convert(model, src="torch", dst=framework, like=like)
    except PortError as error:
        assert _may_refuse(
            error,
            extras,
            order_doubt=order_doubt,
            ambiguous=_ambiguous_axes(like, extras),
            kinds_unknown=False,
        ), str(error)
        # Go there, and back, with what the refusal asked for.
        options = _exact_like(framework, like, extras)
        if order_doubt:
            options["mapping"] = _mapping(extras)
        ported = convert(model, src="torch", dst=framework, **options)
        if framework in ("linen", "haiku"):
            ported = _trace(framework, extras, ported)

    other = architecture.torch_model(api)  # the same architecture holding other values
    _torch.randomize(other, seed=architecture.seed + 100, gain=architecture.gain)
    back = convert(ported, src=framework, dst="torch", like=other, **back_said)

    state = back.state_dict() if isinstance(back, torch.nn.Module) else back
    expected = model.state_dict()
    assert list(state) == list(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(np.asarray(state[key]), value.numpy(), err_msg=key)
