"""`python -m weightnorm convert`: never loses data, refuses every mistake with `error: ...`
and exit 2 naming the user's own path, and writes exactly what the Python API gives.

Exit codes (the module docstring of `weightnorm.port.cli`): 0 written, 2 refused, 1 an
unexpected failure, 130 interrupted; nothing is written unless 0.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import stat
import sys
import tempfile
import warnings
from collections import OrderedDict
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import safetensors.torch
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from weightnorm.__main__ import main
from weightnorm.port import convert, load_checkpoint, save_safetensors

from ._guards import both_weight_norm_styles, deadline, umask

FRAMEWORKS = ("linen", "haiku", "equinox", "nnx", "torch")


def _cli(capsys, *args) -> tuple[int, str, str]:
    status = main(["convert", *map(str, args)])
    out, err = capsys.readouterr()
    return status, out, err


def _refused(capsys, *args) -> str:
    """Runs the CLI, which must refuse with exit 2 and one `error: ...` (no traceback)."""
    status, out, err = _cli(capsys, *args)
    assert status == 2, (out, err)
    assert err.startswith("error: "), err
    assert "Traceback" not in err and "/proc/self" not in err and ".partial-" not in err
    return err


def _linear_checkpoint(path: Path) -> bytes:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(3, 4),
        torch.nn.utils.parametrizations.weight_norm(torch.nn.Linear(4, 2)),
    )
    torch.save(model.state_dict(), path)
    return path.read_bytes()


def _same_bits(actual, expected, what: str) -> None:
    """Two flat `{key: array}` dicts hold the same keys, dtypes, shapes and bytes."""
    assert sorted(actual) == sorted(expected), what
    for key in expected:
        a, b = np.asarray(actual[key]), np.asarray(expected[key])
        assert (a.dtype, a.shape) == (b.dtype, b.shape), (what, key, a.dtype, b.dtype)
        assert a.tobytes() == b.tobytes(), (what, key)


# --- data loss ----------------------------------------------------------------------------


def test_an_existing_output_is_refused_unless_forced(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _linear_checkpoint(tmp_path / "m.pt")
    Path("notes.txt").write_text("my notes")
    err = _refused(capsys, "m.pt", "--to", "linen", "-o", "notes.txt")
    assert "error: 'notes.txt' exists; choose another path, or allow replacing it" in err
    assert "--force" in err
    assert Path("notes.txt").read_text() == "my notes"
    status, out, _ = _cli(capsys, "m.pt", "--to", "linen", "-o", "notes.txt", "--force")
    assert status == 0 and "wrote 5 arrays to notes.txt" in out
    assert load_checkpoint("notes.txt")["1/kernel/scale"].shape == (2,)
    assert sorted(os.listdir()) == ["m.pt", "notes.txt"]


@pytest.mark.parametrize("alias", ["same", "hard link", "symlink", "relative", "symlink chain"])
def test_the_input_is_never_written_over_under_any_name(tmp_path, capsys, monkeypatch, alias):
    monkeypatch.chdir(tmp_path)
    before = _linear_checkpoint(tmp_path / "m.pt")
    output = {"same": "m.pt", "relative": f"../{tmp_path.name}/m.pt"}.get(alias, "alias.pt")
    if alias == "hard link":
        os.link("m.pt", "alias.pt")
    elif alias == "symlink":
        os.symlink("m.pt", "alias.pt")
    elif alias == "symlink chain":
        os.symlink("m.pt", "middle.pt")
        os.symlink("middle.pt", "alias.pt")
    err = _refused(capsys, "m.pt", "--to", "linen", "-o", output, "--force")
    assert f"error: '{output}'" in err and "is the input file 'm.pt'; write elsewhere." in err
    assert Path("m.pt").read_bytes() == before
    assert Path(output).read_bytes() == before
    if alias == "symlink":
        assert Path("alias.pt").is_symlink()


def test_links_fifos_and_devices_at_the_output_are_written_through_or_refused(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    _linear_checkpoint(tmp_path / "m.pt")
    # a symbolic link to a file: its target is written, the link stays
    Path("real.safetensors").write_text("old")
    os.symlink("real.safetensors", "link.safetensors")
    _refused(capsys, "m.pt", "--to", "haiku", "-o", "link.safetensors")
    status, _, _ = _cli(capsys, "m.pt", "--to", "haiku", "-o", "link.safetensors", "--force")
    assert status == 0 and Path("link.safetensors").is_symlink()
    assert "1/w/scale" in load_checkpoint("real.safetensors")
    # a hard-linked file: replacing one name would leave the other the old data
    Path("a.safetensors").write_text("shared")
    os.link("a.safetensors", "b.safetensors")
    err = _refused(capsys, "m.pt", "--to", "haiku", "-o", "b.safetensors", "--force")
    assert "error: 'b.safetensors' has 2 hard links" in err
    assert Path("a.safetensors").read_text() == Path("b.safetensors").read_text() == "shared"
    # a device behind a link, and a FIFO: refused, never opened, never replaced
    os.symlink("/dev/full", "full.safetensors")
    with deadline(20):
        err = _refused(capsys, "m.pt", "--to", "haiku", "-o", "full.safetensors", "--force")
    assert "'full.safetensors' (a symbolic link to '/dev/full') is not a regular file" in err
    assert Path("full.safetensors").is_symlink()
    os.mkfifo("fifo")
    with deadline(20):
        err = _refused(capsys, "m.pt", "--to", "haiku", "-o", "fifo", "--force")
    assert "error: 'fifo' is not a regular file" in err
    assert stat.S_ISFIFO(os.lstat("fifo").st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_the_output_gets_the_umasks_mode(tmp_path, capsys, mask):
    _linear_checkpoint(tmp_path / "m.pt")
    with umask(mask):
        status, _, _ = _cli(
            capsys, tmp_path / "m.pt", "--to", "haiku", "-o", tmp_path / "o.safetensors"
        )
    assert status == 0
    assert stat.S_IMODE(os.stat(tmp_path / "o.safetensors").st_mode) == 0o666 & ~mask


def test_interrupted_disk_full_and_unexpected_failures_write_nothing(tmp_path, capsys, monkeypatch):
    from weightnorm.port import _safetensors

    monkeypatch.chdir(tmp_path)
    _linear_checkpoint(tmp_path / "m.pt")
    write = _safetensors.SafetensorsWriter.write
    for failure, status, message in [
        (KeyboardInterrupt(), 130, "interrupted: nothing was written"),
        (
            OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
            2,
            "error: cannot write 'out.safetensors': No space left on device",
        ),
        (RuntimeError("a bug"), 1, "error: converting 'm.pt' failed unexpectedly"),
    ]:

        def failing(self, key, value, failure=failure):
            if key.endswith("bias"):
                raise failure
            write(self, key, value)

        monkeypatch.setattr(_safetensors.SafetensorsWriter, "write", failing)
        got, _, err = _cli(capsys, "m.pt", "--to", "equinox", "-o", "out.safetensors")
        assert got == status, err
        assert message in err
        assert sorted(os.listdir()) == ["m.pt"]
    assert "please report it" in err and "RuntimeError: a bug" in err  # the traceback


def test_an_output_that_appears_meanwhile_is_left_and_named_by_the_users_path(
    tmp_path, capsys, monkeypatch
):
    from weightnorm.port import _safetensors

    monkeypatch.chdir(tmp_path)
    _linear_checkpoint(tmp_path / "m.pt")
    write = _safetensors.SafetensorsWriter.write

    def racing(self, key, value):  # another process writes the same name meanwhile
        Path("out.safetensors").write_text("theirs")
        write(self, key, value)

    monkeypatch.setattr(_safetensors.SafetensorsWriter, "write", racing)
    err = _refused(capsys, "m.pt", "--to", "linen", "-o", "out.safetensors")
    assert "error: 'out.safetensors' appeared while it was being written; it was left" in err
    assert Path("out.safetensors").read_text() == "theirs"
    assert sorted(os.listdir()) == ["m.pt", "out.safetensors"]


def test_an_input_that_cannot_be_read_is_not_called_an_output_problem(
    tmp_path, capsys, monkeypatch
):
    from weightnorm.port import cli

    def unreadable(path):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(cli, "load_checkpoint", unreadable)
    _linear_checkpoint(tmp_path / "m.pt")
    err = _refused(capsys, tmp_path / "m.pt", "--to", "linen", "-o", tmp_path / "o.safetensors")
    assert err == f"error: cannot read '{tmp_path / 'm.pt'}': Permission denied\n"


def test_the_exit_codes_are_documented():
    from weightnorm.port import cli

    doc = " ".join(cli.__doc__.split())
    for text in ("0 written", "2 refused", "1 an unexpected failure", "130 interrupted"):
        assert text in doc


# --- every mistake: `error: ...`, exit 2, the user's own path -------------------------------


@pytest.mark.parametrize(
    ("mistake", "args", "message"),
    [
        (
            "no output directory",
            ["m.pt", "--to", "linen", "-o", "missing/out.safetensors"],
            "error: Cannot write 'missing/out.safetensors': its directory '{tmp}/missing' "
            "does not exist.",
        ),
        (
            "output is a directory",
            ["m.pt", "--to", "linen", "-o", "adir"],
            "error: 'adir' is a directory; give a file name inside it.",
        ),
        (
            "output under a file",
            ["m.pt", "--to", "linen", "-o", "notes.txt/out.safetensors"],
            "error: Cannot write 'notes.txt/out.safetensors': its directory '{tmp}/notes.txt' "
            "is not a directory.",
        ),
        (
            "output ends in a slash",
            ["m.pt", "--to", "linen", "-o", "new/"],
            "error: 'new/' names a directory (it ends with '/'); name a file.",
        ),
        (
            "empty output",
            ["m.pt", "--to", "linen", "-o", ""],
            "error: The output path is empty; name the file to write.",
        ),
        (
            "bad --kind regex",
            ["m.pt", "--to", "linen", "-o", "o", "--kind", "(=dense"],
            "error: --kind '(=dense': '(' is not a regular expression (missing ), unterminated "
            "subpattern at position 0).",
        ),
        (
            "--kind of no kind",
            ["m.pt", "--to", "linen", "-o", "o", "--kind", "0=nonsense"],
            "error: --kind takes REGEX=KIND with KIND one of ",
        ),
        (
            "--kind matching no layer",
            ["m.pt", "--to", "linen", "-o", "o", "--kind", "decoder=dense"],
            "error: Cannot convert the checkpoint:\n  - --kind rule 'decoder' matches no layer",
        ),
        (
            "--kind that does not fit",
            ["m.pt", "--to", "linen", "-o", "o", "--kind", "0=conv"],
            "error: Cannot convert the checkpoint:\n  - --kind says '0' is a 'conv', but its "
            "parameters fit only ['dense']",
        ),
        (
            "weight_g without weight_v",
            ["g_only.pt", "--to", "linen", "-o", "o"],
            "error: Cannot read the torch weight norms:\n  - '0.weight_g' has no direction v "
            "beside it: a weight norm needs both",
        ),
        (
            "no input",
            ["missing.pt", "--to", "linen", "-o", "o"],
            "error: No checkpoint at 'missing.pt'.",
        ),
        (
            "input is a directory",
            ["adir", "--to", "linen", "-o", "o"],
            "error: 'adir' is a directory, not a checkpoint file; name the file in it.",
        ),
        (
            "empty input",
            ["empty.pt", "--to", "linen", "-o", "o"],
            "error: 'empty.pt' is empty (0 bytes): it is not a checkpoint.",
        ),
        (
            "input is not a checkpoint",
            ["notes.txt", "--to", "linen", "-o", "o"],
            "error: 'notes.txt' is neither a safetensors file nor a PyTorch checkpoint",
        ),
        (
            "--from against what the file says",
            ["linen.safetensors", "--from", "haiku", "--to", "torch", "-o", "o"],
            "error: --from haiku contradicts 'linen.safetensors', which weightnorm wrote in "
            "linen's names; leave --from out.",
        ),
        (
            "a pickle payload",
            ["payload.pt", "--to", "linen", "-o", "o"],
            "error: 'payload.pt' holds Python objects besides tensors (posix.mkdir)",
        ),
    ],
)
def test_every_mistake_is_an_error_line_with_exit_2_and_the_users_path(
    tmp_path, capsys, monkeypatch, mistake, args, message
):
    monkeypatch.chdir(tmp_path)
    _linear_checkpoint(tmp_path / "m.pt")
    (tmp_path / "adir").mkdir()
    (tmp_path / "notes.txt").write_text("notes")
    (tmp_path / "empty.pt").write_bytes(b"")
    torch.save({"0.weight_g": torch.ones(2, 1), "0.bias": torch.ones(2)}, "g_only.pt")
    torch.save({"w": torch.ones(1), "x": _RunsCode(str(tmp_path / "pwned"))}, "payload.pt")
    if "linen.safetensors" in args:
        assert main(["convert", "m.pt", "--to", "linen", "-o", "linen.safetensors"]) == 0
        capsys.readouterr()
    before = sorted(os.listdir())
    err = _refused(capsys, *args)
    assert message.format(tmp=os.path.realpath(tmp_path)) in err, err
    assert sorted(os.listdir()) == before  # nothing written, nothing left
    assert not (tmp_path / "pwned").exists()


class _RunsCode:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_a_kind_the_checkpoint_does_not_tell_is_asked_for(tmp_path, capsys):
    torch.save({"e.weight": torch.ones(2, 3)}, tmp_path / "m.pt")
    err = _refused(capsys, tmp_path / "m.pt", "--to", "linen", "-o", tmp_path / "o.safetensors")
    assert (
        "'e' could be a dense or an embed: say which, --kind 'e=dense' or --kind 'e=embed'" in err
    )


def test_what_safetensors_cannot_hold_is_refused_by_key(tmp_path, capsys):
    torch.save({"z": torch.ones(2, dtype=torch.complex128)}, tmp_path / "m.pt")
    err = _refused(capsys, tmp_path / "m.pt", "--to", "linen", "-o", tmp_path / "o.safetensors")
    assert "error: 'z' has dtype complex128, which a safetensors file cannot hold" in err
    assert not (tmp_path / "o.safetensors").exists()


def test_progress_without_tqdm_says_what_to_install(tmp_path, capsys, monkeypatch):
    _linear_checkpoint(tmp_path / "m.pt")
    monkeypatch.setitem(sys.modules, "tqdm", None)
    args = [tmp_path / "m.pt", "--to", "linen", "-o", tmp_path / "o.safetensors", "--progress"]
    assert _refused(capsys, *args) == "error: --progress needs tqdm: pip install tqdm\n"
    assert not (tmp_path / "o.safetensors").exists()


def test_usage_mistakes_are_argparse_errors_with_exit_2(capsys):
    for args in (["x.pt", "--to", "keras", "-o", "o"], ["x.pt", "--to", "linen"]):
        with pytest.raises(SystemExit) as caught:
            main(["convert", *args])
        assert caught.value.code == 2
        assert "error: " in capsys.readouterr().err


def test_demo_without_flax_says_what_to_install(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "flax", None)  # `import flax` raises ImportError
    assert main(["demo", "--steps", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the demo needs flax, dm-haiku and equinox (flax is missing)")
    assert "pip install 'weightnorm[demo]'" in err


# --- what is written ----------------------------------------------------------------------


def test_an_unmatched_kind_rule_is_refused_not_ignored(tmp_path, capsys):
    _linear_checkpoint(tmp_path / "m.pt")
    out = tmp_path / "o.safetensors"
    err = _refused(
        capsys,
        tmp_path / "m.pt",
        "--to",
        "linen",
        "-o",
        out,
        "--kind",
        "1=dense",
        "--kind",
        "2=dense",
    )
    assert "--kind rule '2' matches no layer" in err
    assert not out.exists()


def test_keys_that_collide_are_all_named(tmp_path, capsys):
    state = {
        "a.b.weight": torch.ones(3, 2),
        "a.b.bias": torch.ones(3),
        "a/b.weight": torch.zeros(3, 2),
        "a/b.bias": torch.zeros(3),
    }
    torch.save(state, tmp_path / "m.pt")
    err = _refused(capsys, tmp_path / "m.pt", "--to", "linen", "-o", tmp_path / "o.safetensors")
    assert "'a.b.weight' and 'a/b.weight' both become 'a/b/kernel'" in err
    assert "'a.b.bias' and 'a/b.bias' both become 'a/b/bias'" in err


def test_a_layer_with_both_torch_weight_norm_styles_is_refused(tmp_path, capsys):
    state = both_weight_norm_styles()
    torch.save(state, tmp_path / "both.pt")
    err = _refused(capsys, tmp_path / "both.pt", "--to", "linen", "-o", tmp_path / "o.safetensors")
    assert "'weight_g', 'weight_v'] hold the same parameter 'weight'" in err
    assert "'parametrizations.weight.original0'" in err


@pytest.mark.parametrize("dst", FRAMEWORKS)
def test_float64_weights_stay_float64(tmp_path, capsys, dst):
    torch.manual_seed(0)
    model = torch.nn.utils.parametrizations.weight_norm(torch.nn.Linear(3, 4)).double()
    torch.save(model.state_dict(), tmp_path / "m.pt")
    status, _, err = _cli(capsys, tmp_path / "m.pt", "--to", dst, "-o", tmp_path / "o.safetensors")
    assert status == 0, err
    written = load_checkpoint(tmp_path / "o.safetensors")
    assert {written[key].dtype for key in written} == {np.dtype(np.float64)}
    back = convert(written, dst="torch", like=model.state_dict())
    _same_bits(back, {k: v.numpy() for k, v in model.state_dict().items()}, dst)


@pytest.mark.parametrize("api", ["old", "new"])
@pytest.mark.parametrize("dst", FRAMEWORKS)
def test_a_dim_none_weight_norm_loads_back(tmp_path, capsys, api, dst):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        if api == "old":
            model = torch.nn.utils.weight_norm(torch.nn.Linear(3, 4), dim=None)
        else:
            model = torch.nn.utils.parametrizations.weight_norm(torch.nn.Linear(3, 4), dim=None)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    status, out, err = _cli(
        capsys, tmp_path / "m.pt", "--to", dst, "-o", tmp_path / "o.safetensors"
    )
    assert status == 0, err
    written = load_checkpoint(tmp_path / "o.safetensors")
    scales = [key for key in written if key.endswith(("/scale", "original0"))]
    assert [written[key].shape for key in scales] == [()]  # 0-d stays 0-d
    assert "weight norm copied (feature axes () -> ())" in out
    back = convert(written, dst="torch", like=model)
    x = torch.randn(5, 3)
    assert torch.equal(back(x), model(x))
    if dst == "torch":  # the file itself loads into torch's own dim=None module
        fresh = torch.nn.utils.parametrizations.weight_norm(torch.nn.Linear(3, 4), dim=None)
        fresh.load_state_dict(safetensors.torch.load_file(tmp_path / "o.safetensors"))
        assert torch.equal(fresh(x), model(x))


@pytest.mark.parametrize("form", ["pt", "safetensors"])
def test_bfloat16_and_float8_checkpoints_convert(tmp_path, capsys, form):
    torch.manual_seed(0)
    state = OrderedDict(
        [
            ("fc.weight", torch.randn(3, 2).to(torch.bfloat16)),
            ("fc.bias", torch.randn(3).to(torch.float8_e4m3fn)),
            ("head.weight_g", torch.rand(2, 1).to(torch.float8_e5m2)),
            ("head.weight_v", torch.randn(2, 3).to(torch.float8_e5m2)),
            ("head.bias", torch.randn(2).to(torch.float16)),
        ]
    )
    source = tmp_path / f"m.{form}"
    if form == "pt":
        torch.save(state, source)
    else:
        safetensors.torch.save_file(state, source)
    status, _, err = _cli(capsys, source, "--to", "linen", "-o", tmp_path / "o.safetensors")
    assert status == 0, err
    written = load_checkpoint(tmp_path / "o.safetensors")
    assert written["fc/kernel"].dtype == ml_dtypes.bfloat16
    assert written["head/kernel/scale"].dtype == ml_dtypes.float8_e5m2
    back = convert(written, dst="torch", like=state)
    expected = {
        key: value.view(torch.uint8 if value.element_size() == 1 else torch.int16).numpy()
        for key, value in state.items()
    }
    assert {key: back[key].tobytes() for key in back} == {
        key: value.tobytes() for key, value in expected.items()
    }


def test_the_input_file_is_not_changed(tmp_path, capsys):
    before = _linear_checkpoint(tmp_path / "m.pt")
    for dst in FRAMEWORKS:
        assert (
            _cli(capsys, tmp_path / "m.pt", "--to", dst, "-o", tmp_path / f"{dst}.safetensors")[0]
            == 0
        )
    assert (tmp_path / "m.pt").read_bytes() == before


# --- any checkpoint -> CLI -> file -> load: exactly the arrays the Python API gives ----------

_TORCH_VIEWS = {
    np.dtype(ml_dtypes.bfloat16): (np.int16, torch.bfloat16),
    np.dtype(ml_dtypes.float8_e4m3fn): (np.uint8, torch.float8_e4m3fn),
    np.dtype(ml_dtypes.float8_e5m2): (np.uint8, torch.float8_e5m2),
    np.dtype(np.uint16): (np.int16, torch.uint16),
}
_LAYER_DTYPES = [np.float32, np.float64, np.float16, ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn]
_EXTRA_DTYPES = [
    *_LAYER_DTYPES,
    ml_dtypes.float8_e5m2,
    np.bool_,
    np.int8,
    np.int32,
    np.int64,
    np.uint8,
    np.uint16,
    np.complex64,
]


def _to_torch(array: np.ndarray) -> torch.Tensor:
    """A torch tensor of the same dtype and bits (not through the library under test)."""
    if array.dtype in _TORCH_VIEWS:
        through, dtype = _TORCH_VIEWS[array.dtype]
        return torch.from_numpy(array.view(through).copy()).view(dtype)
    return torch.from_numpy(array.copy())


@st.composite
def _arrays(draw, dtype, shape) -> np.ndarray:
    """Any bits of `dtype` (NaN payloads, signed zeros, infinities and subnormals too)."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape)) * dtype.itemsize
    data = draw(st.binary(min_size=size, max_size=size))
    raw = np.frombuffer(data, np.uint8).copy()
    if dtype == np.bool_:
        raw &= 1
    return raw.view(dtype).reshape(shape)


@st.composite
def _torch_checkpoints(draw) -> tuple[OrderedDict, dict[str, str]]:
    """A torch-named state dict (numpy) of a few Linear/Conv1d layers, some weight-normed
    with either API, plus extra tensors of any dtype, 0-d included; and each layer's kind."""
    state: OrderedDict = OrderedDict()
    kinds = {}
    for i in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["dense", "conv"]))
        dtype = draw(st.sampled_from(_LAYER_DTYPES))
        out_, in_ = draw(st.integers(1, 4)), draw(st.integers(1, 4))
        shape = (out_, in_) if kind == "dense" else (out_, in_, draw(st.integers(1, 3)))
        norm = draw(st.sampled_from([None, "old", "new"]))
        if dtype == ml_dtypes.float8_e4m3fn:
            norm = None  # torch has no weight norm in float8
        weight = draw(_arrays(dtype, shape))
        if norm is None:
            state[f"l{i}.weight"] = weight
        else:
            dim = draw(st.sampled_from([0, 1, None]))
            g_shape = (
                () if dim is None else tuple(s if a == dim else 1 for a, s in enumerate(shape))
            )
            g = draw(_arrays(dtype, g_shape))
            if norm == "old":
                state[f"l{i}.weight_g"], state[f"l{i}.weight_v"] = g, weight
            else:
                state[f"l{i}.parametrizations.weight.original0"] = g
                state[f"l{i}.parametrizations.weight.original1"] = weight
        if draw(st.booleans()):
            state[f"l{i}.bias"] = draw(_arrays(dtype, (out_,)))
        kinds[f"l{i}"] = kind
    for j in range(draw(st.integers(0, 3))):
        dtype = draw(st.sampled_from(_EXTRA_DTYPES))
        shape = tuple(draw(st.lists(st.integers(0, 3), max_size=2)))
        state[draw(st.sampled_from(["", "extra."])) + f"t{j}"] = draw(_arrays(dtype, shape))
    return state, kinds


def _save(state: OrderedDict, path: Path, form: str) -> None:
    tensors = OrderedDict((key, _to_torch(value)) for key, value in state.items())
    if form == "torch.save":
        torch.save(tensors, path)
    elif form == "safetensors.torch":
        safetensors.torch.save_file(tensors, path)
    else:
        save_safetensors(state, path)


def _every_dtype() -> tuple[OrderedDict, dict[str, str]]:
    """One checkpoint with both weight-norm APIs (a 0-d `g` too) and an extra tensor of
    every dtype, 0-d and not, so each is run whatever hypothesis draws."""
    rng = np.random.default_rng(0)

    def bits(dtype, shape):
        dtype = np.dtype(dtype)
        raw = rng.integers(0, 256, int(np.prod(shape)) * dtype.itemsize, dtype=np.uint8)
        return (raw & 1 if dtype == np.bool_ else raw).view(dtype).reshape(shape)

    state = OrderedDict(
        [
            ("l0.weight_g", bits(np.float32, ())),
            ("l0.weight_v", bits(np.float32, (3, 2, 2))),
            ("l0.bias", bits(np.float32, (3,))),
            ("l1.parametrizations.weight.original0", bits(ml_dtypes.bfloat16, (4, 1))),
            ("l1.parametrizations.weight.original1", bits(ml_dtypes.bfloat16, (4, 3))),
        ]
    )
    for i, dtype in enumerate(_EXTRA_DTYPES):
        state[f"extra.t{i}"] = bits(dtype, () if i % 2 else (2, 3))
    return state, {"l0": "conv", "l1": "dense"}


@settings(deadline=None)  # 30 examples (the default profile), 300 with "thorough"
@example(checkpoint=_every_dtype(), form="torch.save")
@example(checkpoint=_every_dtype(), form="safetensors.torch")
@given(
    checkpoint=_torch_checkpoints(),
    form=st.sampled_from(["torch.save", "safetensors.torch", "weightnorm"]),
)
def test_cli_output_is_exactly_what_the_python_api_gives(checkpoint, form):
    state, kinds = checkpoint
    rules = [arg for path, kind in kinds.items() for arg in ("--kind", f"{path}={kind}")]
    with tempfile.TemporaryDirectory() as directory:
        source = Path(directory) / "in"
        _save(state, source, form)
        for dst in FRAMEWORKS:
            output = Path(directory) / f"{dst}.safetensors"
            printed, errors = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(errors):
                status = main(["convert", str(source), "--to", dst, "-o", str(output), *rules])
            assert status == 0, errors.getvalue()
            written = load_checkpoint(output)
            # the Python API, into a like of the file's own shapes (a torch file says no
            # kinds: a 2-D weight without bias could be an Embedding, so they are named)
            expected = convert(load_checkpoint(source), dst=dst, like=written, kinds=kinds)
            _same_bits(dict(written), expected, f"{dst}: CLI against convert()")
            # and back to torch: every source array, bit for bit (dtype, shape, bits)
            back = convert(written, dst="torch", like=state, kinds=kinds)
            _same_bits(back, state, f"{dst} -> torch against the source")
