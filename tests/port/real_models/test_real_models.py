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

pytest.importorskip("transformers")  # not among the project's test dependencies

import safetensors.torch
import torch

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


def _may_refuse(error: PortError, extras, files_plain: bool, ambiguous: list[str]) -> bool:
    """Whether `error` is a refusal the port may make here, naming what it cannot decide.

    A file's keys come back sorted, so with "plain" names the port may refuse to
    guess the order of same-shaped layers, naming at least two of them; a scale
    whose axes `like` does not tell may be refused naming its layer and saying
    that its axes are what is in doubt.
    """
    message = str(error)
    every_layer = [*extras.layers, *extras.layers.values()]
    if files_plain and len(_layer_paths_named(message, every_layer)) >= 2:
        return True
    if not ambiguous or re.search(r"\baxi[sx]", message) is None:
        return False
    keys = [key.removeprefix("params/") for key in ambiguous]
    layers = [key.rpartition("/")[0] for key in keys]
    torch_layers = [src for src, dst in extras.layers.items() if dst in layers]
    return bool(_layer_paths_named(message, [*keys, *layers, *torch_layers]))


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize(("arch", "framework", "naming"), CASES)
def test_torch_weights_run_in_jax_as_in_torch(arch, framework, naming, source, tmp_path):
    architecture = ARCHITECTURES[arch]
    kind, api = source.split("-")
    model = architecture.torch_model(api)
    x = architecture.example()
    like, apply, extras = architecture.jax_model(framework, naming)
    ambiguous = _ambiguous_axes(like, extras)
    files_plain = naming == "plain" and kind in FILES

    expected = architecture.torch_apply(model, x)
    try:
        ported = convert(_source(kind, model, tmp_path), src="torch", dst=framework, like=like)
    except PortError as error:
        if not _may_refuse(error, extras, files_plain, ambiguous):
            raise
        if files_plain and not ambiguous:  # the module itself, whose order is known, ports
            from_module = convert(model, src="torch", dst=framework, like=like)
            np.testing.assert_allclose(apply(from_module, x), expected, atol=TOLERANCE, rtol=0)
        return
    np.testing.assert_allclose(apply(ported, x), expected, atol=TOLERANCE, rtol=0)
    if kind != "module":  # every source gives what the module gives, bit for bit
        _assert_same_arrays(
            ported, convert(model, src="torch", dst=framework, like=like), framework
        )


@pytest.mark.parametrize(("arch", "framework", "naming"), CASES)
def test_every_kind_of_like_gives_the_same_result(arch, framework, naming):
    architecture = ARCHITECTURES[arch]
    model = architecture.torch_model("new")
    x = architecture.example()
    like, apply, extras = architecture.jax_model(framework, naming)
    if framework in ("linen", "haiku"):
        # The module (Haiku: the hk.Transformed) and an input, for exact tracing:
        # the wrappers' feature axes are known, never guessed from shapes.
        got = convert(model, src="torch", dst=framework, like=extras.module, example=extras.example)
    else:  # built with eqx.filter_eval_shape / nnx.eval_shape
        got = convert(model, src="torch", dst=framework, like=extras.abstract)
    np.testing.assert_allclose(
        apply(got, x), architecture.torch_apply(model, x), atol=TOLERANCE, rtol=0
    )
    try:
        expected = convert(model, src="torch", dst=framework, like=like)
    except PortError as error:
        if not _may_refuse(error, extras, False, _ambiguous_axes(like, extras)):
            raise
        return
    _assert_same_arrays(got, expected, framework)


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize(("arch", "framework", "naming"), CASES)
def test_back_to_torch_gives_every_tensor_bit_for_bit(arch, framework, naming, api):
    architecture = ARCHITECTURES[arch]
    model = architecture.torch_model(api)
    like, _, extras = architecture.jax_model(framework, naming)
    try:
        ported = convert(model, src="torch", dst=framework, like=like)
    except PortError as error:
        if not _may_refuse(error, extras, False, _ambiguous_axes(like, extras)):
            raise
        ported = convert(
            model, src="torch", dst=framework, like=extras.module, example=extras.example
        )

    other = architecture.torch_model(api)  # the same architecture holding other values
    _torch.randomize(other, seed=architecture.seed + 100, gain=architecture.gain)
    back = convert(ported, src=framework, dst="torch", like=other)

    state = back.state_dict() if isinstance(back, torch.nn.Module) else back
    expected = model.state_dict()
    assert list(state) == list(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(np.asarray(state[key]), value.numpy(), err_msg=key)
