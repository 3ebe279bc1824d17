"""Checkpoint files: flat dicts as safetensors, and PyTorch `.pt`/`.bin` state dicts."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..core._tree import check_flat
from ._frameworks import import_torch

__all__ = ["load_safetensors", "save_safetensors", "load_torch", "load_checkpoint"]


def _safetensors() -> Any:
    try:
        from safetensors import numpy as st_numpy
    except ImportError as error:  # pragma: no cover - exercised with safetensors hidden
        raise ImportError(
            "Reading and writing .safetensors needs safetensors: "
            "pip install 'weightnorm[safetensors]'"
        ) from error
    return st_numpy


def save_safetensors(
    flat: Mapping[str, Any], path: str | os.PathLike, metadata: Mapping[str, str] | None = None
) -> None:
    """Writes a flat `{key: array}` dict to a `.safetensors` file (numpy; no torch needed).

    The caller's dict is not modified. Keys may contain '/' (Linen/Haiku paths)
    or '.' (torch names).

    Raises:
      TypeError: when `flat` is not a flat dict with string keys, or a value is
        not an array (a nested dict: flatten it first with `weightnorm.flatten`).

    Examples:
      >>> import numpy as np, tempfile, pathlib
      >>> path = pathlib.Path(tempfile.mkdtemp()) / "w.safetensors"
      >>> save_safetensors({"Dense_0/kernel": np.ones((2, 3), np.float32)}, path)
      >>> load_safetensors(path)["Dense_0/kernel"].shape
      (2, 3)
    """
    check_flat(flat)
    arrays = {}
    for key, value in flat.items():
        if isinstance(value, Mapping) or not hasattr(value, "shape"):
            raise TypeError(
                f"{key!r} holds a {type(value).__name__}, not an array; save a flat dict "
                "(`weightnorm.flatten(tree)`)."
            )
        array = value.detach().cpu().numpy() if hasattr(value, "detach") else value
        arrays[key] = np.ascontiguousarray(np.asarray(array))
    _safetensors().save_file(arrays, os.fspath(path), metadata=dict(metadata or {}) or None)


def load_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a `.safetensors` file (also one exported from torch) as `{key: numpy array}`.

    Raises:
      ValueError: naming the file when it is not a readable safetensors file
        (truncated, corrupted, another format).
      FileNotFoundError: when there is no such file.
    """
    st_numpy = _safetensors()
    if not os.path.exists(path):
        raise FileNotFoundError(f"No checkpoint at {os.fspath(path)!r}.")
    try:
        return dict(st_numpy.load_file(os.fspath(path)))
    except Exception as error:
        raise ValueError(
            f"{os.fspath(path)!r} is not a readable safetensors file ({error}). It may be "
            "truncated or corrupted; export it again."
        ) from error


def load_torch(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a PyTorch `.pt`/`.bin` state dict (tensors only, `weights_only=True`) as numpy.

    Raises:
      ImportError: when torch is not installed, naming `weightnorm[torch]`.
      ValueError: naming the file when it cannot be read, or holds something
        other than a flat `{name: tensor}` state dict (the offending keys listed).
    """
    torch = import_torch()
    if not os.path.exists(path):
        raise FileNotFoundError(f"No checkpoint at {os.fspath(path)!r}.")
    try:
        state = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(
            f"{os.fspath(path)!r} is not a readable PyTorch checkpoint ({error})."
        ) from error
    if not isinstance(state, Mapping):
        raise ValueError(f"{os.fspath(path)!r} holds a {type(state).__name__}, not a state dict.")
    not_tensors = [key for key, value in state.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise ValueError(
            f"{os.fspath(path)!r} is not a flat state dict: {not_tensors} hold no tensor. "
            "Save `model.state_dict()` itself (or the sub-dict that holds the weights)."
        )
    return {key: value.detach().cpu().numpy() for key, value in state.items()}


def load_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A flat checkpoint by its extension: `.safetensors`, else a torch `.pt`/`.bin`."""
    if os.fspath(path).endswith(".safetensors"):
        return load_safetensors(path)
    return load_torch(path)
