"""The safetensors format, read one tensor at a time and written as a stream, atomically.

The `safetensors` package reads whole files into memory (or maps them) and
writes only from a dict that holds every tensor at once, and its numpy
reader knows no float8. This module reads the format's header itself,
checks it as strictly as the reference reader does, and reads each tensor into
a fresh numpy array when asked (every dtype the format holds: float8 and
bfloat16 through `ml_dtypes`); it writes a header computed from the tensors'
shapes first and each tensor's bytes after, so a conversion holds one layer
at a time. The files are plain safetensors: the reference reader loads them
(the tests check both ways).
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterable, Mapping
from typing import Any, BinaryIO

import ml_dtypes
import numpy as np

__all__ = ["DTYPES", "Header", "read_header", "read_tensor", "SafetensorsWriter", "code_of"]

#: The format's dtype codes, as numpy dtypes (little-endian).
DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E4M3FNUZ": np.dtype(ml_dtypes.float8_e4m3fnuz),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "F8_E5M2FNUZ": np.dtype(ml_dtypes.float8_e5m2fnuz),
    "F8_E8M0": np.dtype(ml_dtypes.float8_e8m0fnu),
    "C64": np.dtype("<c8"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_CODES = {dtype: code for code, dtype in DTYPES.items()}
#: The reference reader refuses headers past 100 MB; so do we, before allocating anything.
_MAX_HEADER = 100_000_000
METADATA = "__metadata__"


def code_of(dtype: Any) -> str | None:
    """The format's code for a numpy dtype, or None when safetensors cannot hold it."""
    dtype = np.dtype(dtype)
    return _CODES.get(dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype)


class Header:
    """A file's tensors in file order, `{key: (dtype, shape, begin, end)}`, and its metadata."""

    def __init__(
        self,
        tensors: dict[str, tuple[np.dtype, tuple[int, ...], int, int]],
        metadata: dict[str, str],
        data_start: int,
    ) -> None:
        self.tensors, self.metadata, self.data_start = tensors, metadata, data_start


def read_header(file: BinaryIO, size: int, name: str) -> Header:
    """Reads and checks a safetensors header; raises ValueError saying what is wrong.

    Args:
      file: the file, open for reading in binary.
      size: its size in bytes.
      name: how to name the file in errors.
    """
    if size < 8:
        raise ValueError(f"{name} is too short ({size} bytes) to be a safetensors file.")
    (length,) = struct.unpack("<Q", file.read(8))
    if length == 0:
        raise ValueError(
            f"{name} has an empty header: it was never finished (a write that stopped midway)."
        )
    if length > min(_MAX_HEADER, size - 8):
        raise ValueError(
            f"{name} says its header is {length} bytes, but the file has {size - 8} after the "
            "length field: it is truncated, or not a safetensors file."
        )
    try:
        raw = json.loads(file.read(length).decode("utf-8"), object_pairs_hook=_unique_keys)
    except _DuplicateKey as error:
        raise ValueError(f"{name} has a header that names {error.args[0]!r} twice.") from None
    except (ValueError, RecursionError) as error:  # bad UTF-8 or JSON, too deep, huge ints
        raise ValueError(f"{name} has a header that is not valid JSON ({error}).") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{name} has a header that is not a JSON object.")
    metadata = raw.pop(METADATA, None)
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise ValueError(f"{name} has metadata that is not a map of strings to strings.")
    data_start, data_size = 8 + length, size - 8 - length
    tensors = {}
    for key, info in raw.items():
        tensors[key] = _tensor_entry(key, info, name)
    spans = sorted((begin, end, key) for key, (_, _, begin, end) in tensors.items())
    cursor = 0
    for begin, end, key in spans:
        if begin != cursor:
            raise ValueError(
                f"{name}: tensor {key!r} starts at byte {begin} of the data, expected {cursor} "
                "(overlapping or missing bytes)."
            )
        cursor = end
    if cursor > data_size:
        raise ValueError(
            f"{name}: its tensors take {cursor} bytes but the file holds {data_size} after the "
            "header: it is truncated."
        )
    if cursor < data_size:
        raise ValueError(
            f"{name}: its tensors take {cursor} bytes but the file holds {data_size} after the "
            f"header: {data_size - cursor} trailing bytes belong to no tensor."
        )
    return Header(tensors, metadata, data_start)


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object as a dict, refusing a key given twice (`json` would keep the last)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _valid_ints(values: Any) -> bool:
    return isinstance(values, list) and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values
    )


def _tensor_entry(key: str, info: Any, name: str) -> tuple[np.dtype, tuple[int, ...], int, int]:
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise ValueError(f"{name}: the header entry of {key!r} is not dtype/shape/data_offsets.")
    code, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if code not in DTYPES:
        raise ValueError(
            f"{name}: tensor {key!r} has dtype {code!r}, which is not a safetensors dtype "
            f"this reader knows ({', '.join(DTYPES)})."
        )
    if not _valid_ints(shape) or not _valid_ints(offsets) or len(offsets) != 2:
        raise ValueError(f"{name}: tensor {key!r} has a malformed shape or data offsets.")
    begin, end = offsets
    dtype = DTYPES[code]
    expected = math.prod(shape) * dtype.itemsize
    if end < begin or end - begin != expected:
        raise ValueError(
            f"{name}: tensor {key!r} of shape {tuple(shape)} and dtype {code} needs {expected} "
            f"bytes, but its offsets span {end - begin}."
        )
    return dtype, tuple(shape), begin, end


def read_tensor(file: BinaryIO, header: Header, key: str) -> np.ndarray:
    """One tensor, read into a new numpy array (no memory shared with anything)."""
    dtype, shape, begin, end = header.tensors[key]
    array = np.empty(shape, dtype)
    file.seek(header.data_start + begin)
    view = memoryview(array.reshape(-1).view(np.uint8)) if array.size else memoryview(b"")
    read = file.readinto(view) if array.size else 0
    if read != end - begin:
        raise ValueError(f"tensor {key!r}: the file ended after {read} of {end - begin} bytes.")
    return array


class SafetensorsWriter:
    """Writes a safetensors file whose tensors come one at a time, in a declared order.

    The header (every tensor's dtype, shape and place) is known up front, so each
    tensor's bytes go straight to the file and nothing holds more than one of
    them. The length field stays 0 until the last tensor is written, so a file
    cut short never reads as a checkpoint.

    Args:
      file: an open binary file (the caller makes it atomic and cleans it up).
      specs: `(key, shape, dtype)` of every tensor, in file order.
      metadata: string metadata for the header.
    """

    def __init__(
        self,
        file: BinaryIO,
        specs: Iterable[tuple[str, tuple[int, ...], Any]],
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        header: dict[str, Any] = {}
        if metadata:
            header[METADATA] = dict(metadata)
        self._places: dict[str, tuple[int, int, tuple[int, ...], np.dtype]] = {}
        offset = 0
        for key, shape, dtype in specs:
            dtype = np.dtype(dtype)
            code = code_of(dtype)
            if code is None:
                raise TypeError(
                    f"{key!r} has dtype {dtype}, which a safetensors file cannot hold "
                    f"(it holds {', '.join(str(d) for d in DTYPES.values())})."
                )
            size = math.prod(shape) * dtype.itemsize
            header[key] = {
                "dtype": code,
                "shape": list(shape),
                "data_offsets": [offset, offset + size],
            }
            self._places[key] = (offset, size, tuple(shape), dtype)
            offset += size
        encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
        encoded += b" " * (-len(encoded) % 8)  # the reference writer aligns the data to 8 bytes
        self._file, self._header = file, encoded
        self._data_start = 8 + len(encoded)
        self._written: set[str] = set()
        file.write(struct.pack("<Q", 0))  # the real length goes in last: see `finish`
        file.write(encoded)

    def write(self, key: str, value: Any) -> None:
        """Writes one declared tensor (its shape and dtype must be as declared)."""
        offset, size, shape, dtype = self._places[key]
        array = np.asarray(value)
        if array.dtype.byteorder == ">":
            array = array.astype(array.dtype.newbyteorder("<"))
        if array.shape != shape or code_of(array.dtype) != code_of(dtype):
            raise ValueError(
                f"{key!r} was declared {shape} {dtype} but is {array.shape} {array.dtype}."
            )
        self._file.seek(self._data_start + offset)
        self._file.write(
            np.ascontiguousarray(array).reshape(-1).view(np.uint8).data if size else b""
        )
        self._written.add(key)

    def finish(self) -> None:
        """Checks every tensor was written, then writes the header's length: the file is valid."""
        missing = [key for key in self._places if key not in self._written]
        if missing:
            raise ValueError(f"tensors {missing} were declared but never written.")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.seek(0)
        self._file.write(struct.pack("<Q", len(self._header)))
        self._file.flush()
        os.fsync(self._file.fileno())
