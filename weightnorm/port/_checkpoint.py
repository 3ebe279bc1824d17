"""Checkpoint files: read lazily whatever their format, written atomically, never over a file.

A file's format is told by its first bytes, not its name: a safetensors file
(its header length, then `{`), a PyTorch zip archive (`PK`), or a legacy
PyTorch pickle. Reading gives a `Checkpoint`, a mapping whose arrays are read
one at a time when asked for, with what the file says about itself (the
provenance weightnorm writes: the framework whose names the keys use, each
layer's kind, each weight norm's feature axes and epsilon). Writing goes to an
unnamed file in the target's directory that is linked into place only when
complete, and never replaces a file unless asked to.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import warnings
from collections.abc import Iterator, Mapping
from typing import Any, BinaryIO

import ml_dtypes
import numpy as np

from ._safetensors import SafetensorsWriter, read_header, read_tensor

__all__ = [
    "Checkpoint",
    "import_torch",
    "load_checkpoint",
    "load_safetensors",
    "load_torch",
    "numpy_to_torch",
    "save_safetensors",
    "torch_to_numpy",
    "atomic_output",
    "check_output",
    "PROVENANCE",
]

#: The safetensors metadata key holding weightnorm's provenance (a JSON object).
PROVENANCE = "weightnorm"
FORMAT_VERSION = 1


def import_torch() -> Any:
    try:
        import torch
    except ImportError as error:  # pragma: no cover - exercised with torch hidden
        raise ImportError(
            "Porting PyTorch modules and `.pt`/`.bin` files needs torch: "
            "pip install 'weightnorm[torch]'"
        ) from error
    return torch


# --- torch tensors as numpy, every dtype -------------------------------------------------

#: torch dtypes numpy lacks, as (numpy dtype, torch dtype of the same width to view through).
_VIEWED = {
    "bfloat16": (np.dtype(ml_dtypes.bfloat16), "int16"),
    "float8_e4m3fn": (np.dtype(ml_dtypes.float8_e4m3fn), "uint8"),
    "float8_e4m3fnuz": (np.dtype(ml_dtypes.float8_e4m3fnuz), "uint8"),
    "float8_e5m2": (np.dtype(ml_dtypes.float8_e5m2), "uint8"),
    "float8_e5m2fnuz": (np.dtype(ml_dtypes.float8_e5m2fnuz), "uint8"),
    "float8_e8m0fnu": (np.dtype(ml_dtypes.float8_e8m0fnu), "uint8"),
    "uint16": (np.dtype(np.uint16), "int16"),
    "uint32": (np.dtype(np.uint32), "int32"),
    "uint64": (np.dtype(np.uint64), "int64"),
}


def torch_to_numpy(tensor: Any) -> np.ndarray:
    """A torch tensor as a new numpy array of the same dtype (bfloat16, float8 included).

    Raises:
      TypeError: for tensors numpy cannot hold (packed 4-bit floats, quantized,
        complex32, sparse), naming the dtype or layout and the fix.
    """
    tensor = tensor.detach()
    _check_portable(tensor)
    tensor = tensor.cpu()
    name = str(tensor.dtype).removeprefix("torch.")
    if name in _VIEWED:
        torch = import_torch()
        dtype, through = _VIEWED[name]
        return tensor.contiguous().view(getattr(torch, through)).numpy().view(dtype).copy()
    return tensor.numpy().copy()


def _check_portable(tensor: Any) -> None:
    """Raises TypeError, saying the fix, for a tensor numpy cannot hold."""
    layout = str(getattr(tensor, "layout", "torch.strided"))
    if layout != "torch.strided":
        raise TypeError(
            f"A torch tensor of layout {layout} (not dense) cannot be ported; save it dense "
            "(`.to_dense()`) first."
        )
    numpy_dtype_of(tensor.dtype)


def numpy_dtype_of(torch_dtype: Any) -> np.dtype:
    """The numpy dtype `torch_to_numpy` gives for a torch dtype.

    Raises:
      TypeError: for a dtype numpy cannot hold (complex32, packed 4-bit floats,
        quantized), naming it and the fix.
    """
    name = str(torch_dtype).removeprefix("torch.")
    if name in _VIEWED:
        return _VIEWED[name][0]
    torch = import_torch()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "ComplexHalf support is experimental"
            return torch.empty(0, dtype=torch_dtype).numpy().dtype
    except (TypeError, RuntimeError):
        quantized = name.startswith(("qint", "quint"))
        fix = "`.dequantize()` it" if quantized else "convert it to a dtype numpy holds"
        raise TypeError(
            f"A torch tensor of dtype {torch_dtype} has no numpy equivalent, so it cannot be "
            f"ported; {fix} first."
        ) from None


def numpy_to_torch(array: np.ndarray) -> Any:
    """A numpy array (bfloat16, float8 included) as a new torch tensor of the same dtype."""
    torch = import_torch()
    array = np.array(array)  # a copy: the tensor shares nothing with the caller's array
    for name, (dtype, through) in _VIEWED.items():
        if array.dtype == dtype:
            viewed = torch.from_numpy(array.view(np.dtype(through)))
            return viewed.view(getattr(torch, name))
    return torch.from_numpy(array)


# --- reading -------------------------------------------------------------------------------


class Checkpoint(Mapping):
    """A checkpoint file's tensors, each read into a new numpy array when asked for.

    A mapping `{key: numpy array}` in the file's order; `spec(key)` gives a
    tensor's shape and dtype without reading it, so a port holds one layer's
    arrays at a time.

    Attributes:
      path: the file.
      format: `"safetensors"` or `"torch"`.
      framework: the framework whose names and layouts the keys use
        (`"torch"` for a file weightnorm did not write).
      ordered: whether the keys are in the model's own order (a torch file, or a
        file weightnorm wrote; a safetensors file from elsewhere sorts them).
      provenance: what weightnorm recorded when it wrote the file (layer kinds,
        weight norms with feature axes and epsilon, the source framework), or
        an empty dict.
    """

    def __init__(
        self,
        path: str,
        format: str,
        specs: dict[str, tuple[tuple[int, ...], np.dtype]],
        read: Any,
        ordered: bool,
        provenance: dict[str, Any],
    ) -> None:
        self.path, self.format, self._specs, self._read = path, format, specs, read
        self.ordered, self.provenance = ordered, provenance
        self.framework = provenance.get("framework", "torch")

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self._specs:
            raise KeyError(key)
        return self._read(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def spec(self, key: str) -> tuple[tuple[int, ...], np.dtype]:
        """`(shape, dtype)` of one tensor, without reading it."""
        return self._specs[key]

    @property
    def nbytes(self) -> int:
        """The size of every tensor together, in bytes."""
        return sum(int(np.prod(s)) * d.itemsize for s, d in self._specs.values())

    def __repr__(self) -> str:
        return f"Checkpoint({self.path!r}, {len(self)} tensors, {self.format}, {self.framework})"


def _check_readable(path: str | os.PathLike) -> tuple[str, bytes, int]:
    """(the path, its first 16 bytes, its size), or an error saying what the path is."""
    name = os.fspath(path)
    if not os.path.exists(name):
        raise FileNotFoundError(f"No checkpoint at {name!r}.")
    if os.path.isdir(name):
        raise ValueError(f"{name!r} is a directory, not a checkpoint file; name the file in it.")
    if not os.path.isfile(name):
        raise ValueError(f"{name!r} is not a regular file (a FIFO or a device); give a file.")
    size = os.path.getsize(name)
    if size == 0:
        raise ValueError(f"{name!r} is empty (0 bytes): it is not a checkpoint.")
    with open(name, "rb") as file:
        return name, file.read(16), size


def _format_of(start: bytes, size: int) -> str | None:
    """The format a file's first bytes say: `"safetensors"`, `"torch"`, or None.

    A safetensors file starts with its header's length, which may be any 8
    bytes: a length of 640 starts with the bytes of a pickle (0x80 0x02), so a
    header (a `{` after a length that fits the file) is looked for first.
    """
    header = start[8:9] == b"{"
    if header and int.from_bytes(start[:8], "little") <= size - 8:
        return "safetensors"
    if start.startswith(b"PK\x03\x04"):
        return "torch"
    if start[:1] == b"\x80" and start[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "torch"  # a legacy (pre-zip) torch.save pickle
    if header:
        return "safetensors"  # its length does not fit: the reader says how
    return None


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Opens a checkpoint file of any format weightnorm reads, told by its contents.

    A safetensors file, or a PyTorch `torch.save` file (`.pt`, `.bin`, `.pth`:
    a flat state dict of tensors, read with `weights_only=True` and memory
    mapped, so nothing but tensors is ever unpickled). The name's extension is
    not looked at.

    Args:
      path: the file.

    Returns:
      A `Checkpoint`: a mapping of numpy arrays, read one at a time.

    Raises:
      FileNotFoundError: when there is no such file.
      ValueError: naming the file and what is wrong with it (empty, a
        directory, truncated, not a checkpoint, holds more than tensors).
      ImportError: for a PyTorch file when torch is not installed.

    Examples:
      >>> import numpy as np, tempfile, pathlib
      >>> path = pathlib.Path(tempfile.mkdtemp()) / "w.safetensors"
      >>> save_safetensors({"fc.weight": np.ones((2, 3), np.float32)}, path)
      >>> checkpoint = load_checkpoint(path)
      >>> checkpoint.spec("fc.weight"), checkpoint["fc.weight"].sum()
      (((2, 3), dtype('float32')), np.float32(6.0))
    """
    name, start, size = _check_readable(path)
    kind = _format_of(start, size)
    if kind == "safetensors":
        return _open_safetensors(name, size)
    if kind == "torch":
        return _open_torch(name)
    raise ValueError(
        f"{name!r} is neither a safetensors file nor a PyTorch checkpoint (it starts with "
        f"{start[:8]!r}). Export the state dict with `safetensors.torch.save_file` or "
        "`torch.save(model.state_dict(), path)`."
    )


def _open_safetensors(name: str, size: int) -> Checkpoint:
    with open(name, "rb") as file:
        try:
            header = read_header(file, size, repr(name))
        except ValueError as error:
            raise ValueError(f"{error} {name!r} is not a readable safetensors file.") from None
    provenance: dict[str, Any] = {}
    if PROVENANCE in header.metadata:
        try:
            provenance = json.loads(header.metadata[PROVENANCE])
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{name!r} has weightnorm metadata that is not JSON ({error})."
            ) from error

    def read(key: str) -> np.ndarray:
        with open(name, "rb") as file:
            try:
                return read_tensor(file, header, key)
            except ValueError as error:  # the file shrank since it was opened
                raise ValueError(f"{name!r}: {error} Was it changed while being read?") from None

    specs = {key: (shape, dtype) for key, (dtype, shape, _, _) in header.tensors.items()}
    return Checkpoint(name, "safetensors", specs, read, bool(provenance.get("ordered")), provenance)


def _open_torch(name: str) -> Checkpoint:
    torch = import_torch()
    try:
        # torch's warnings (about pickle protocols, its own future defaults) speak of
        # options weightnorm never takes: the refusal below says what matters.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = _torch_load(torch, name)
    except Exception as error:
        raise ValueError(_torch_load_error(name, error)) from None
    if not isinstance(state, Mapping):
        raise ValueError(f"{name!r} holds a {type(state).__name__}, not a state dict.")
    not_tensors = [key for key, value in state.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise ValueError(
            f"{name!r} is not a flat state dict: {not_tensors} hold no tensor. Save "
            "`model.state_dict()` itself (or the sub-dict that holds the weights)."
        )
    not_strings = [key for key in state if not isinstance(key, str)]
    if not_strings:
        raise ValueError(
            f"{name!r} has keys that are not strings ({not_strings[:5]}): a state dict names "
            "its tensors with strings."
        )
    specs = {}
    for key, value in state.items():
        try:
            _check_portable(value)
        except TypeError as error:
            raise ValueError(f"{name!r}: tensor {key!r}: {error}") from None
        specs[key] = (tuple(value.shape), numpy_dtype_of(value.dtype))
    return Checkpoint(name, "torch", specs, lambda key: torch_to_numpy(state[key]), True, {})


def _torch_load(torch: Any, name: str) -> Any:
    """`torch.load` of tensors only, memory mapped where the file allows it."""
    if name.endswith(".safetensors"):
        # torch.load hands a path so named to the safetensors reader, whatever it holds:
        # a file object is read as what it is (without mmap, which needs a path).
        with open(name, "rb") as file:
            return torch.load(file, map_location="cpu", weights_only=True)
    try:
        return torch.load(name, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as error:
        if "mmap" not in str(error):
            raise
        return torch.load(name, map_location="cpu", weights_only=True)  # a legacy file


def _torch_load_error(name: str, error: Exception) -> str:
    """Why torch could not load a file, without torch's advice to unpickle anything."""
    text = str(error)
    refused = re.search(r"(?i)unsupported global:? (?:GLOBAL )?([\w.]+)", text)
    if refused or "weights_only" in text.lower() or type(error).__name__ == "UnpicklingError":
        what = f" ({refused.group(1)})" if refused else ""
        return (
            f"{name!r} holds Python objects besides tensors{what}, and weightnorm reads only "
            "tensors: unpickling anything else could run code. Save `model.state_dict()` "
            "(tensors only) or a safetensors file instead."
        )
    first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return f"{name!r} is not a readable PyTorch checkpoint: {first}"


def load_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a whole `.safetensors` file (one exported from torch too) as `{key: numpy array}`.

    Every dtype the format holds is read (bfloat16 and float8 as `ml_dtypes`
    arrays); no torch and no `safetensors` package is needed.

    Raises:
      ValueError: naming the file when it is not a readable safetensors file
        (truncated, corrupted, another format), saying what is wrong.
      FileNotFoundError: when there is no such file.
    """
    checkpoint = load_checkpoint(path)
    if checkpoint.format != "safetensors":
        raise ValueError(f"{checkpoint.path!r} is a PyTorch checkpoint, not a safetensors file.")
    return dict(checkpoint)


def load_torch(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a PyTorch `.pt`/`.bin` state dict (tensors only, `weights_only=True`) as numpy.

    Raises:
      ImportError: when torch is not installed, naming `weightnorm[torch]`.
      ValueError: naming the file when it cannot be read, or holds something
        other than a flat `{name: tensor}` state dict (the offending keys listed).
    """
    import_torch()
    checkpoint = load_checkpoint(path)
    if checkpoint.format != "torch":
        raise ValueError(f"{checkpoint.path!r} is a safetensors file, not a PyTorch checkpoint.")
    return dict(checkpoint)


# --- writing -------------------------------------------------------------------------------


def check_output(path: str | os.PathLike, *, overwrite: bool, inputs: tuple[str, ...] = ()) -> str:
    """The file to write for `path`, or an error saying why it must not be written.

    Refuses, whatever `overwrite` says, a path that is one of `inputs` (the
    same file under any name: a hard link, a symbolic link), a directory, a
    FIFO or device (or a symbolic link to one), a file with other hard links
    (replacing it would leave them the old data), or one whose directory does
    not exist; refuses an existing file unless `overwrite`. A symbolic link is
    followed: its target is what gets written.

    Raises:
      FileExistsError: for an existing file without `overwrite`.
      ValueError: for every other refusal, naming the path.
    """
    name = os.fspath(path)
    if not name:
        raise ValueError("The output path is empty; name the file to write.")
    if name.endswith(os.sep) or (os.altsep and name.endswith(os.altsep)):
        raise ValueError(f"{name!r} names a directory (it ends with {name[-1]!r}); name a file.")
    link = os.path.islink(name)
    target = os.path.realpath(name) if link else name
    shown = f"{name!r} (a symbolic link to {target!r})" if link else repr(name)
    for source in inputs:
        if os.path.exists(target) and os.path.exists(source) and os.path.samefile(target, source):
            raise ValueError(f"{shown} is the input file {source!r}; write elsewhere.")
    directory = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(directory):
        what = "is not a directory" if os.path.exists(directory) else "does not exist"
        raise ValueError(f"Cannot write {shown}: its directory {directory!r} {what}.")
    if os.path.lexists(target):
        info = os.stat(target)
        if stat.S_ISDIR(info.st_mode):
            raise ValueError(f"{shown} is a directory; give a file name inside it.")
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(
                f"{shown} is not a regular file (a FIFO, socket or device); give a file name."
            )
        if not overwrite:
            raise FileExistsError(
                f"{shown} exists; choose another path, or allow replacing it "
                "(`--force`, `overwrite=True`)."
            )
        if info.st_nlink > 1:
            raise ValueError(
                f"{shown} has {info.st_nlink} hard links; replacing it would leave the other "
                "names with the old data. Remove it first, or write elsewhere."
            )
    return target


@contextlib.contextmanager
def atomic_output(target: str, *, overwrite: bool, name: str | None = None) -> Iterator[BinaryIO]:
    """A binary file that appears at `target` only if the block completes.

    The file is created unnamed (Linux `O_TMPFILE`) in `target`'s directory, so
    a process killed midway leaves nothing behind; where that is not possible,
    as a hidden temporary there, removed on any error (a kill leaves it, but
    `SafetensorsWriter` writes its header length last, so it never loads). It
    gets the mode that the umask gives a new file. On success it is linked
    into place: beside nothing unless `overwrite`, else replacing atomically.

    Args:
      target: the file to write (as `check_output` returns it).
      overwrite: replace a file at `target`.
      name: how to call the file in errors (the user's own path).

    Raises:
      FileExistsError: when `target` appeared meanwhile and `overwrite` is False.
    """
    directory = os.path.dirname(os.path.abspath(target)) or "."
    base = os.path.basename(target)
    temporary = None
    try:
        if not os.path.isdir("/proc/self/fd"):  # an unnamed file is linked through /proc
            raise OSError("no /proc")
        fd = os.open(directory, os.O_TMPFILE | os.O_RDWR, 0o666)
    except (AttributeError, OSError):
        temporary = os.path.join(directory, f".{base}.partial-{os.urandom(6).hex()}")
        fd = os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o666)
    try:
        with os.fdopen(fd, "w+b") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
            _place(file.fileno(), temporary, directory, base, overwrite, name or target)
    finally:
        if temporary is not None and os.path.lexists(temporary):
            os.unlink(temporary)


def _place(
    fd: int, temporary: str | None, directory: str, base: str, overwrite: bool, shown: str
) -> None:
    """Links the finished file at `base` in `directory` (no-clobber, or an atomic replace).

    No second name of the finished file outlives this call: a hidden temporary
    is unlinked (or renamed) at once, before the directory is synced.
    """
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if temporary is not None and overwrite:
            os.replace(temporary, base, dst_dir_fd=dir_fd)
        elif not overwrite:
            source = temporary if temporary is not None else f"/proc/self/fd/{fd}"
            try:
                os.link(source, base, dst_dir_fd=dir_fd, follow_symlinks=True)
            except FileExistsError:
                raise FileExistsError(
                    f"{shown!r} appeared while it was being written; it was left as it is. "
                    "Choose another path, or allow replacing it (`--force`, `overwrite=True`)."
                ) from None
            if temporary is not None:
                os.unlink(temporary)
        else:  # an unnamed file replaces through a hidden name, renamed over the target
            staged = f".{base}.replace-{os.urandom(6).hex()}"
            os.link(f"/proc/self/fd/{fd}", staged, dst_dir_fd=dir_fd, follow_symlinks=True)
            try:
                os.replace(staged, base, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except BaseException:
                os.unlink(staged, dir_fd=dir_fd)
                raise
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_safetensors(
    flat: Mapping[str, Any],
    path: str | os.PathLike,
    metadata: Mapping[str, str] | None = None,
    *,
    overwrite: bool = False,
) -> None:
    """Writes a flat `{key: array}` dict to a `.safetensors` file, atomically.

    Arrays keep their dtype and shape exactly (0-d stays 0-d; bfloat16 and
    float8 included); torch tensors are read as their numpy equivalents. The
    file appears only when complete (an interrupted write leaves nothing
    behind), with the mode the umask gives; an existing file is replaced only
    with `overwrite=True`. The caller's dict is not modified. Keys may contain
    '/' (Linen/Haiku paths) or '.' (torch names).

    Args:
      flat: the arrays.
      path: the file to write.
      metadata: string metadata for the file's header.
      overwrite: replace an existing file.

    Raises:
      TypeError: when `flat` is not a flat dict with string keys, a value is
        not an array (a nested dict: flatten it first with
        `weightnorm.flatten`), or has a dtype safetensors cannot hold.
      FileExistsError: when `path` exists and `overwrite` is False.
      ValueError: when `path` cannot be written (see `check_output`).

    Examples:
      >>> import numpy as np, tempfile, pathlib
      >>> path = pathlib.Path(tempfile.mkdtemp()) / "w.safetensors"
      >>> save_safetensors({"Dense_0/kernel": np.ones((2, 3), np.float32)}, path)
      >>> load_safetensors(path)["Dense_0/kernel"].shape
      (2, 3)
    """
    from .. import core

    core.check_flat(flat)
    arrays = {}
    for key, value in flat.items():
        if isinstance(value, Mapping) or not hasattr(value, "shape"):
            raise TypeError(
                f"{key!r} holds a {type(value).__name__}, not an array; save a flat dict "
                "(`weightnorm.flatten(tree)`)."
            )
        arrays[key] = torch_to_numpy(value) if hasattr(value, "detach") else np.asarray(value)
    write_arrays(arrays, path, metadata, overwrite=overwrite)


def write_arrays(
    arrays: Mapping[str, np.ndarray],
    path: str | os.PathLike,
    metadata: Mapping[str, str] | None,
    *,
    overwrite: bool,
    inputs: tuple[str, ...] = (),
) -> None:
    """Writes numpy arrays as a safetensors file, checked and atomic (`save_safetensors`)."""
    target = check_output(path, overwrite=overwrite, inputs=inputs)
    specs = [(key, array.shape, array.dtype) for key, array in arrays.items()]
    with atomic_output(target, overwrite=overwrite, name=os.fspath(path)) as file:
        writer = SafetensorsWriter(file, specs, metadata)
        for key, array in arrays.items():
            writer.write(key, array)
        writer.finish()


def provenance_metadata(provenance: Mapping[str, Any]) -> dict[str, str]:
    """The safetensors metadata entry that records weightnorm's provenance."""
    return {PROVENANCE: json.dumps({"format": FORMAT_VERSION, **provenance}, sort_keys=True)}
