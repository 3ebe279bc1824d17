"""Checkpoint files: written atomically and never over anything, read by content, hostile
files and pickles refused with a clear message and no large allocation.

The last test kills the CLI (SIGKILL) while it writes a ~200 MB checkpoint and checks
that nothing loadable is ever left behind; it runs in the normal suite (about 30-60 s on
two cores); `-k "not killed"` leaves it out.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import random
import signal
import stat
import struct
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import safetensors.torch
import torch

import weightnorm
from weightnorm.port import load_checkpoint, load_safetensors, load_torch, save_safetensors

from ._guards import deadline, umask

ROOT = Path(weightnorm.__file__).resolve().parent.parent


def _entries(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


# --- writing: never over anything, atomic, the umask's mode ---------------------------------


def test_save_refuses_an_existing_file_unless_asked_and_names_it(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    with pytest.raises(FileExistsError, match=r"notes.txt' exists.*overwrite=True"):
        save_safetensors({"w": np.ones(2, np.float32)}, notes)
    assert notes.read_text() == "my notes"
    save_safetensors({"w": np.ones(2, np.float32)}, notes, overwrite=True)
    assert load_checkpoint(notes)["w"].tolist() == [1.0, 1.0]
    assert _entries(tmp_path) == ["notes.txt"]


def test_save_writes_through_a_symlink_and_keeps_the_link(tmp_path):
    (tmp_path / "real.safetensors").write_text("old")
    (tmp_path / "link.safetensors").symlink_to("real.safetensors")
    with pytest.raises(FileExistsError, match=r"link.safetensors' .*exists"):
        save_safetensors({"w": np.ones(1, np.float32)}, tmp_path / "link.safetensors")
    save_safetensors({"w": np.ones(1, np.float32)}, tmp_path / "link.safetensors", overwrite=True)
    assert (tmp_path / "link.safetensors").is_symlink()
    assert load_checkpoint(tmp_path / "real.safetensors")["w"].tolist() == [1.0]
    # a dangling link: its target is created
    (tmp_path / "dangling.safetensors").symlink_to("new.safetensors")
    save_safetensors({"w": np.zeros(1, np.float32)}, tmp_path / "dangling.safetensors")
    assert (tmp_path / "dangling.safetensors").is_symlink()
    assert load_checkpoint(tmp_path / "new.safetensors")["w"].tolist() == [0.0]


def test_save_refuses_hard_links_fifos_devices_and_directories_even_with_overwrite(tmp_path):
    (tmp_path / "a.safetensors").write_text("shared")
    os.link(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    flat = {"w": np.ones(1, np.float32)}
    with pytest.raises(ValueError, match=r"b.safetensors' has 2 hard links"):
        save_safetensors(flat, tmp_path / "b.safetensors", overwrite=True)
    assert (tmp_path / "a.safetensors").read_text() == "shared"
    assert os.stat(tmp_path / "a.safetensors").st_ino == os.stat(tmp_path / "b.safetensors").st_ino
    os.mkfifo(tmp_path / "fifo")
    with deadline(20), pytest.raises(ValueError, match=r"/fifo' is not a regular file"):
        save_safetensors(flat, tmp_path / "fifo", overwrite=True)
    assert stat.S_ISFIFO(os.lstat(tmp_path / "fifo").st_mode)
    (tmp_path / "null").symlink_to(os.devnull)
    with deadline(20), pytest.raises(ValueError, match=r"symbolic link to '/dev/null'.*not a reg"):
        save_safetensors(flat, tmp_path / "null", overwrite=True)
    assert (tmp_path / "null").is_symlink()
    (tmp_path / "dir.safetensors").mkdir()
    with pytest.raises(ValueError, match=r"dir.safetensors' is a directory"):
        save_safetensors(flat, tmp_path / "dir.safetensors", overwrite=True)
    with pytest.raises(ValueError, match=r"missing/w.safetensors'.*does not exist"):
        save_safetensors(flat, tmp_path / "missing" / "w.safetensors")
    with pytest.raises(ValueError, match=r"a.safetensors/w.safetensors'.*is not a directory"):
        save_safetensors(flat, tmp_path / "a.safetensors" / "w.safetensors")
    with pytest.raises(ValueError, match="ends with '/'"):
        save_safetensors(flat, f"{tmp_path}/new/")
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_new_files_get_the_mode_the_umask_gives(tmp_path, mask):
    with umask(mask):
        save_safetensors({"w": np.ones(1, np.float32)}, tmp_path / "w.safetensors")
    assert stat.S_IMODE(os.stat(tmp_path / "w.safetensors").st_mode) == 0o666 & ~mask


@pytest.mark.parametrize("unnamed", [True, False], ids=["O_TMPFILE", "fallback"])
def test_a_failed_write_leaves_nothing_and_keeps_the_old_file(tmp_path, monkeypatch, unnamed):
    if not unnamed:
        monkeypatch.delattr(os, "O_TMPFILE", raising=False)
    from weightnorm.port import _safetensors

    calls = []
    write = _safetensors.SafetensorsWriter.write

    def failing(self, key, value):
        calls.append(key)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as ^C midway
        write(self, key, value)

    monkeypatch.setattr(_safetensors.SafetensorsWriter, "write", failing)
    flat = {"a": np.ones(1000, np.float32), "b": np.ones(1000, np.float32)}
    with pytest.raises(KeyboardInterrupt):
        save_safetensors(flat, tmp_path / "w.safetensors")
    assert _entries(tmp_path) == []
    (tmp_path / "w.safetensors").write_text("old")
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        save_safetensors(flat, tmp_path / "w.safetensors", overwrite=True)
    assert _entries(tmp_path) == ["w.safetensors"]
    assert (tmp_path / "w.safetensors").read_text() == "old"
    monkeypatch.setattr(_safetensors.SafetensorsWriter, "write", write)
    with umask(0o022):
        save_safetensors(flat, tmp_path / "w.safetensors", overwrite=True)
    assert _entries(tmp_path) == ["w.safetensors"]
    assert stat.S_IMODE(os.stat(tmp_path / "w.safetensors").st_mode) == 0o644
    assert load_checkpoint(tmp_path / "w.safetensors")["b"].sum() == 1000


def test_zero_d_arrays_stay_zero_d_and_every_dtype_round_trips(tmp_path):
    flat = {
        "scalar": np.float32(-0.0),
        "step": np.array(7, np.int64),
        "flag": np.array(True),
        "bf16": np.array(1.5, ml_dtypes.bfloat16),
        "f8": np.array([448, -0.0], ml_dtypes.float8_e4m3fn),
        "e8m0": np.array([0.5, 4.0], ml_dtypes.float8_e8m0fnu),
        "c64": np.array([1 + 2j], np.complex64),
        "u16": np.array([65535], np.uint16),
        "empty": np.zeros((0, 3), np.float16),
    }
    save_safetensors(flat, tmp_path / "w.safetensors")
    loaded = load_checkpoint(tmp_path / "w.safetensors")
    for key, value in flat.items():
        value = np.asarray(value)
        assert (loaded[key].shape, loaded[key].dtype) == (value.shape, value.dtype), key
        assert loaded[key].tobytes() == value.tobytes(), key
    reference = safetensors.torch.load_file(tmp_path / "w.safetensors")
    assert reference["scalar"].shape == () and reference["e8m0"].dtype == torch.float8_e8m0fnu


# --- reading by content --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["M.SAFETENSORS", "m.pt", "m.bin", "m", "m.Safetensors"])
def test_a_safetensors_file_is_read_by_content_whatever_its_name(tmp_path, name):
    flat = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    save_safetensors(flat, tmp_path / name)
    loaded = load_checkpoint(tmp_path / name)
    assert loaded.format == "safetensors"
    np.testing.assert_array_equal(loaded["w"], flat["w"])


def _with_header_length(path: Path, length: int) -> None:
    """A safetensors file whose header is exactly `length` bytes (padded with metadata)."""

    def header_length(pad: int) -> int:
        flat = {"w": np.ones(2, np.float32)}
        save_safetensors(flat, path, metadata={"pad": "x" * pad}, overwrite=True)
        return struct.unpack("<Q", path.read_bytes()[:8])[0]

    guess = length - header_length(0)  # one more pad character, one more header byte
    for pad in range(max(guess - 8, 0), guess + 9):
        if header_length(pad) == length:
            return
    raise AssertionError(f"no padding gives a header of {length} bytes")


@pytest.mark.parametrize("length", [0x280, 0x380, 0x480, 0x580])
def test_a_header_length_that_starts_like_a_pickle_is_still_safetensors(tmp_path, length):
    path = tmp_path / "w.safetensors"
    _with_header_length(path, length)
    assert path.read_bytes()[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")
    loaded = load_checkpoint(path)
    assert loaded.format == "safetensors" and loaded["w"].tolist() == [1.0, 1.0]


def test_a_torch_file_named_safetensors_is_read_as_torch(tmp_path):
    torch.save({"w": torch.ones(2, dtype=torch.bfloat16)}, tmp_path / "m.safetensors")
    loaded = load_checkpoint(tmp_path / "m.safetensors")
    assert loaded.format == "torch" and loaded["w"].dtype == ml_dtypes.bfloat16


def test_fp8_safetensors_files_load_and_are_not_called_corrupted(tmp_path):
    tensors = {
        "e4m3": torch.tensor([1.0, -2.0, 448.0]).to(torch.float8_e4m3fn),
        "e5m2": torch.tensor([1.0, 57344.0, -0.0]).to(torch.float8_e5m2),
        "e4m3fnuz": torch.tensor([1.0, 0.5]).to(torch.float8_e4m3fnuz),
        "e5m2fnuz": torch.tensor([1.0, 0.25]).to(torch.float8_e5m2fnuz),
        "bf16": torch.tensor([1.0, 3.0e38]).to(torch.bfloat16),
    }
    safetensors.torch.save_file(tensors, tmp_path / "f8.safetensors")
    loaded = load_safetensors(tmp_path / "f8.safetensors")
    for key, tensor in tensors.items():
        expected = tensor.view(torch.uint8 if tensor.element_size() == 1 else torch.int16)
        assert loaded[key].tobytes() == expected.numpy().tobytes(), key
    assert loaded["e4m3"].dtype == ml_dtypes.float8_e4m3fn


def test_a_file_cut_after_it_was_opened_is_named_when_read(tmp_path):
    save_safetensors({"a": np.ones(4, np.float32), "b": np.ones(4, np.float32)}, tmp_path / "w")
    checkpoint = load_checkpoint(tmp_path / "w")
    os.truncate(tmp_path / "w", os.path.getsize(tmp_path / "w") - 8)
    assert checkpoint["a"].tolist() == [1.0] * 4
    with pytest.raises(ValueError, match=r"/w': tensor 'b': the file ended after 8 of 16 bytes"):
        checkpoint["b"]


def test_a_directory_named_like_a_checkpoint_is_called_a_directory(tmp_path):
    (tmp_path / "x.safetensors").mkdir()
    with pytest.raises(ValueError, match=r"x.safetensors' is a directory, not a checkpoint"):
        load_checkpoint(tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match=r"x.safetensors' is a directory"):
        load_safetensors(tmp_path / "x.safetensors")


@pytest.mark.parametrize("name", ["empty.pt", "empty.safetensors"])
def test_an_empty_file_is_called_empty(tmp_path, name):
    (tmp_path / name).write_bytes(b"")
    with pytest.raises(ValueError, match=rf"/{name}' is empty \(0 bytes\)"):
        load_checkpoint(tmp_path / name)


def test_a_truncated_torch_file_and_a_fifo_are_refused_with_their_names(tmp_path):
    torch.save({"w": torch.ones(100)}, tmp_path / "m.pt")
    data = (tmp_path / "m.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut.pt' is not a readable PyTorch checkpoint: \w"):
        load_checkpoint(tmp_path / "cut.pt")
    os.mkfifo(tmp_path / "pipe.pt")
    with deadline(20), pytest.raises(ValueError, match=r"pipe.pt' is not a regular file"):
        load_checkpoint(tmp_path / "pipe.pt")


@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor.*deprecated")
@pytest.mark.parametrize(
    ("value", "message"),
    [
        (lambda: torch.zeros(2, dtype=torch.complex32), r"dtype torch.complex32 has no numpy"),
        (
            lambda: torch.zeros(2, dtype=torch.uint8).view(torch.float4_e2m1fn_x2),
            r"dtype torch.float4_e2m1fn_x2 has no numpy equivalent",
        ),
        (
            lambda: torch.quantize_per_tensor(torch.ones(2), 0.1, 0, torch.qint8),
            r"dtype torch.qint8 has no numpy equivalent, .*`.dequantize\(\)` it first",
        ),
        (lambda: torch.eye(2).to_sparse(), r"layout torch.sparse_coo .*`.to_dense\(\)`"),
    ],
    ids=["complex32", "float4", "qint8", "sparse"],
)
def test_torch_tensors_numpy_cannot_hold_are_refused_by_name(tmp_path, value, message):
    torch.save({"x": value()}, tmp_path / "m.pt")
    with pytest.raises(ValueError, match=rf"/m.pt': tensor 'x': A torch tensor of {message}"):
        load_checkpoint(tmp_path / "m.pt")


def test_a_state_dict_with_keys_that_are_not_strings_is_refused(tmp_path):
    torch.save({1: torch.ones(2)}, tmp_path / "m.pt")
    with pytest.raises(ValueError, match=r"/m.pt' has keys that are not strings \(\[1\]\)"):
        load_checkpoint(tmp_path / "m.pt")


# --- pickles: nothing but tensors is ever unpickled -----------------------------------------


class _RunsCode:
    """Unpickling this makes a directory (a stand-in for any code)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


class _Tensor(torch.Tensor):
    pass


def _payloads(tmp_path: Path) -> dict[str, tuple[object, str]]:
    marker = str(tmp_path / "pwned")
    linear = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(linear.parameters(), lr=0.1, momentum=0.9)
    linear(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    return {
        "code": ({"w": torch.ones(1), "x": _RunsCode(marker)}, r"Python objects .*posix.mkdir"),
        "nested": ({"model": {"w": torch.ones(1)}, "step": 3}, r"not a flat state dict"),
        "subclass": ({"w": torch.ones(2).as_subclass(_Tensor)}, r"Python objects .*_Tensor"),
        "optimizer": (optimizer.state_dict(), r"not a flat state dict: \['state', 'param_g"),
        "module": (linear, r"Python objects .*torch.nn.modules.linear.Linear"),
        "numpy": ({"w": np.ones(2)}, r"Python objects .*numpy"),
        "list": ([torch.ones(1)], r"holds a list, not a state dict"),
    }


@pytest.mark.parametrize(
    "kind", ["code", "nested", "subclass", "optimizer", "module", "numpy", "list"]
)
def test_pickle_payloads_are_refused_without_running_anything(tmp_path, kind):
    payload, message = _payloads(tmp_path)[kind]
    torch.save(payload, tmp_path / f"{kind}.pt")
    with pytest.raises(ValueError, match=rf"/{kind}.pt' ") as caught:
        load_checkpoint(tmp_path / f"{kind}.pt")
    assert caught.match(message)
    assert "weights_only" not in str(caught.value)  # never torch's advice to unpickle
    assert "add_safe_globals" not in str(caught.value)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_plain_pickles_are_refused_without_running_anything(tmp_path, protocol):
    with open(tmp_path / "plain.pkl", "wb") as file:
        pickle.dump({"w": _RunsCode(str(tmp_path / "pwned"))}, file, protocol=protocol)
    with pytest.raises(ValueError, match=r"plain.pkl' holds Python objects") as caught:
        load_checkpoint(tmp_path / "plain.pkl")
    assert "weights_only" not in str(caught.value)
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(ValueError, match=r"plain.pkl' holds Python objects"):
        load_torch(tmp_path / "plain.pkl")


# --- hostile safetensors files -------------------------------------------------------------


def _raw(path: Path, header: object, data: bytes = b"", length: int | None = None) -> Path:
    encoded = header if isinstance(header, bytes) else json.dumps(header).encode()
    size = len(encoded) if length is None else length
    path.write_bytes(struct.pack("<Q", size) + encoded + data)
    return path


def _entry(dtype: str, shape: list, offsets: list) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": offsets}


_HOSTILE = {
    "100 GB tensor": (
        {"w": _entry("F32", [100_000, 250_000], [0, 100_000_000_000])},
        b"\0" * 16,
        None,
        r"tensors take 100000000000 bytes but the file holds 16 after the header: it is trunc",
    ),
    "100 GB tensor, offsets lying": (
        {"w": _entry("F32", [100_000, 250_000], [0, 16])},
        b"\0" * 16,
        None,
        r"'w' of shape \(100000, 250000\) and dtype F32 needs 100000000000 bytes, but its off",
    ),
    "negative offset": (
        {"w": _entry("F32", [1], [-4, 0])},
        b"\0" * 4,
        None,
        r"tensor 'w' has a malformed shape or data offsets",
    ),
    "negative shape": (
        {"w": _entry("F32", [-1, 1], [0, 4])},
        b"\0" * 4,
        None,
        r"tensor 'w' has a malformed shape or data offsets",
    ),
    "reversed offsets": (
        {"w": _entry("U8", [0], [8, 0])},
        b"\0" * 8,
        None,
        r"tensor 'w' of shape \(0,\) and dtype U8 needs 0 bytes, but its offsets span -8",
    ),
    "overlapping offsets": (
        {"a": _entry("F32", [2], [0, 8]), "b": _entry("F32", [2], [4, 12])},
        b"\0" * 12,
        None,
        r"tensor 'b' starts at byte 4 of the data, expected 8 \(overlapping or missing bytes\)",
    ),
    "a gap between tensors": (
        {"a": _entry("F32", [1], [0, 4]), "b": _entry("F32", [1], [8, 12])},
        b"\0" * 12,
        None,
        r"tensor 'b' starts at byte 8 of the data, expected 4",
    ),
    "offsets past the end": (
        {"w": _entry("F32", [4], [0, 16])},
        b"\0" * 8,
        None,
        r"tensors take 16 bytes but the file holds 8 after the header: it is truncated",
    ),
    "header longer than the file": (
        {"w": _entry("F32", [1], [0, 4])},
        b"\0" * 4,
        10_000,
        r"says its header is 10000 bytes, but the file has \d+ after the length field",
    ),
    "header length 2**64 - 1": (
        {"w": _entry("F32", [1], [0, 4])},
        b"",
        2**64 - 1,
        r"says its header is 18446744073709551615 bytes",
    ),
    "empty header": (b"{}", b"", 0, r"has an empty header: it was never finished"),
    "not JSON": (b"{'w': not json}", b"", None, r"has a header that is not valid JSON"),
    "not UTF-8": (b'{"\xff\xfe": 1}', b"", None, r"has a header that is not valid JSON"),
    "nested a million deep": (
        b'{"w": ' + b"[" * 1_000_000 + b"]" * 1_000_000 + b"}",
        b"",
        None,
        r"has a header that is not valid JSON",
    ),
    "duplicate keys": (
        b'{"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}, '
        b'"w": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}}',
        b"\0\0",
        None,
        r"has a header that names 'w' twice",
    ),
    "unknown dtype": (
        {"w": _entry("F128", [1], [0, 16])},
        b"\0" * 16,
        None,
        r"tensor 'w' has dtype 'F128', which is not a safetensors dtype this reader knows",
    ),
    "shape against offsets": (
        {"w": _entry("F32", [3], [0, 8])},
        b"\0" * 8,
        None,
        r"'w' of shape \(3,\) and dtype F32 needs 12 bytes, but its offsets span 8",
    ),
    "trailing bytes": (
        {"w": _entry("F32", [1], [0, 4])},
        b"\0" * 4 + b"extra",
        None,
        r"holds 9 after the header: 5 trailing bytes belong to no tensor",
    ),
    "metadata not str to str": (
        {"__metadata__": {"format": 1}},
        b"",
        None,
        r"has metadata that is not a map of strings to strings",
    ),
    "metadata a list": (
        {"__metadata__": ["a"]},
        b"",
        None,
        r"has metadata that is not a map of strings to strings",
    ),
    "an entry that is no tensor": (
        {"w": 1},
        b"",
        None,
        r"the header entry of 'w' is not dtype/shape/data_offsets",
    ),
    "an entry with extra fields": (
        {"w": {**_entry("U8", [1], [0, 1]), "offset": 0}},
        b"\0",
        None,
        r"the header entry of 'w' is not dtype/shape/data_offsets",
    ),
    "float shape": (
        {"w": _entry("U8", [1.0], [0, 1])},
        b"\0",
        None,
        r"tensor 'w' has a malformed shape or data offsets",
    ),
    "weightnorm provenance not JSON": (
        {"__metadata__": {"weightnorm": "{oops"}},
        b"",
        None,
        r"has weightnorm metadata that is not JSON",
    ),
}


def test_tracemalloc_sees_numpy_allocations():
    """The no-large-allocation checks below are only meaningful if numpy's are traced."""
    tracemalloc.start()
    try:
        np.empty(50_000_000, np.uint8).fill(1)
        assert tracemalloc.get_traced_memory()[1] > 40_000_000
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("kind", list(_HOSTILE))
def test_hostile_safetensors_files_are_refused_clearly_without_allocating(tmp_path, kind):
    header, data, length, message = _HOSTILE[kind]
    path = _raw(tmp_path / "hostile.safetensors", header, data, length)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=message) as caught:
            checkpoint = load_checkpoint(path)
            for key in checkpoint:
                checkpoint[key]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "hostile.safetensors'" in str(caught.value)
    limit = 12_000_000 if "million" in kind else 1_000_000  # the header's own bytes, parsed
    assert peak < limit, f"{kind}: {peak} bytes allocated"


# --- a killed conversion never leaves a loadable file --------------------------------------


def _big_input(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """A ~200 MB torch-named checkpoint: six dense layers, one weight-normed."""
    rng = np.random.default_rng(0)
    flat = {}
    for i in range(6):
        weight = rng.standard_normal((2048, 4096), dtype=np.float32)
        if i == 2:
            flat[f"layers.{i}.weight_g"] = np.linalg.norm(weight, axis=1, keepdims=True)
            flat[f"layers.{i}.weight_v"] = weight
        else:
            flat[f"layers.{i}.weight"] = weight
        flat[f"layers.{i}.bias"] = rng.standard_normal(2048, dtype=np.float32)
    save_safetensors(flat, path)
    return {key: (value.shape, str(value.dtype)) for key, value in flat.items()}


_NO_TMPFILE = (
    "import os, sys; del os.O_TMPFILE; from weightnorm.__main__ import main; "
    "sys.exit(main(sys.argv[1:]))"
)


def _loads(path: Path) -> bool:
    try:
        checkpoint = load_checkpoint(path)
        for key in checkpoint:
            checkpoint[key]
    except (ValueError, OSError):
        return False
    return True


def _unnamed_files_work(directory: Path) -> bool:
    try:
        os.close(os.open(directory, os.O_TMPFILE | os.O_RDWR, 0o600))
    except (AttributeError, OSError):
        return False
    return True


def test_a_killed_cli_never_leaves_a_loadable_file(tmp_path):
    source = tmp_path / "in.safetensors"
    _big_input(source)
    before = source.read_bytes()
    target = tmp_path / "out.safetensors"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    # With tqdm, --progress says when the input is read and the output about to be opened,
    # so the kills land while it is written; without, they are timed from the start.
    progress = importlib.util.find_spec("tqdm") is not None
    args = ["convert", str(source), "--to", "linen", "-o", str(target)]

    def start(fallback: bool) -> tuple[subprocess.Popen, float]:
        command = [sys.executable, "-c", _NO_TMPFILE] if fallback else [sys.executable, "-m"]
        process = subprocess.Popen(
            [*command, *([] if fallback else ["weightnorm"]), *args, *["--progress"][:progress]],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            cwd=tmp_path,
        )
        seen = b""
        while progress and b"convert" not in seen:
            byte = process.stderr.read(1)
            assert byte, seen.decode(errors="replace")
            seen = seen[-16:] + byte
        return process, time.monotonic()

    # One run to the end: how long until the target appears, and that it is what it should be.
    process, started = start(fallback=False)
    while not target.exists() and process.poll() is None:
        time.sleep(0.005)
    writing = time.monotonic() - started
    process.stderr.read()
    process.stderr.close()
    assert process.wait() == 0
    assert _loads(target) and len(load_checkpoint(target)) == 13
    target.unlink()
    unnamed = _unnamed_files_work(tmp_path)
    rng = random.Random(1234)
    for attempt in range(8):
        fallback = attempt % 4 == 3  # some runs without O_TMPFILE: a hidden temporary
        process, started = start(fallback)
        time.sleep(rng.uniform(0.0, writing * 1.1))
        process.send_signal(signal.SIGKILL)
        process.stderr.close()
        status = process.wait()
        left = [name for name in _entries(tmp_path) if name != source.name]
        loadable = [name for name in left if _loads(tmp_path / name)]
        if status == 0 or (target.exists() and loadable == [target.name]):
            # finished (or killed after its last step): the target is whole
            assert loadable == [target.name], (attempt, left)
            assert len(load_checkpoint(target)) == 13
        else:
            assert loadable == [], (attempt, fallback, left)
            assert not target.exists(), (attempt, left)
            if unnamed and not fallback:
                assert left == [], (attempt, left)  # an unnamed file vanishes with its process
        for name in left:
            (tmp_path / name).unlink()
    assert source.read_bytes() == before
