"""Checkpoint files (safetensors, torch .pt) and `python -m weightnorm convert`."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
import safetensors.torch
import torch

from weightnorm import _demo
from weightnorm.__main__ import main
from weightnorm.port import (
    load_checkpoint,
    load_safetensors,
    load_torch,
    save_safetensors,
)


def _torch_vocoder():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        up = torch.nn.utils.weight_norm(torch.nn.ConvTranspose1d(4, 3, 4, 2, 1))
    return torch.nn.Sequential(
        up,
        torch.nn.utils.parametrizations.weight_norm(torch.nn.Conv1d(3, 3, 3, padding=1)),
        torch.nn.Linear(3, 2),
    )


def test_safetensors_round_trip_keeps_keys_values_and_the_callers_dict(tmp_path):
    flat = {
        "params/WeightNorm_0/Dense_0/kernel/scale": np.arange(3, dtype=np.float32),
        "conv.weight": np.ones((2, 1, 3), np.float16),
    }
    before = dict(flat)
    save_safetensors(flat, tmp_path / "w.safetensors", metadata={"format": "linen"})
    assert flat == before
    loaded = load_safetensors(tmp_path / "w.safetensors")
    assert set(loaded) == set(flat)
    for key, value in flat.items():
        np.testing.assert_array_equal(loaded[key], value)
        assert loaded[key].dtype == value.dtype


def test_torch_exported_files_load_as_numpy(tmp_path):
    model = _torch_vocoder()
    state = {key: value.contiguous() for key, value in model.state_dict().items()}
    safetensors.torch.save_file(state, tmp_path / "m.safetensors")
    torch.save(model.state_dict(), tmp_path / "m.pt")
    for loaded in (load_safetensors(tmp_path / "m.safetensors"), load_torch(tmp_path / "m.pt")):
        assert set(loaded) == set(state)
        for key, value in state.items():
            assert isinstance(loaded[key], np.ndarray)
            np.testing.assert_array_equal(loaded[key], value.numpy())
    assert set(load_checkpoint(tmp_path / "m.pt")) == set(state)


def test_corrupted_or_wrong_files_raise_clear_errors(tmp_path):
    save_safetensors({"a": np.ones(4, np.float32)}, tmp_path / "ok.safetensors")
    data = (tmp_path / "ok.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut.safetensors' is not a readable safetensors file"):
        load_safetensors(tmp_path / "cut.safetensors")
    with pytest.raises(FileNotFoundError, match="No checkpoint"):
        load_safetensors(tmp_path / "missing.safetensors")
    torch.save({"model": {"w": torch.ones(1)}, "step": 3}, tmp_path / "nested.pt")
    with pytest.raises(ValueError, match=r"not a flat state dict: \['model', 'step'\]"):
        load_torch(tmp_path / "nested.pt")
    with pytest.raises(TypeError, match="holds a dict, not an array"):
        save_safetensors({"a": {"b": np.ones(1)}}, tmp_path / "x.safetensors")


def test_cli_converts_a_torch_checkpoint_and_prints_the_pairing(tmp_path, capsys):
    torch.save(_torch_vocoder().state_dict(), tmp_path / "m.pt")
    out = tmp_path / "m_linen.safetensors"
    args = ["convert", str(tmp_path / "m.pt"), "--to", "linen", "-o", str(out)]
    assert main(args) == 2  # two 3-D weights: Conv1d or ConvTranspose1d?
    assert "--kind '0=conv_transpose'" in capsys.readouterr().err
    assert main([*args, "--kind", "0=embed", "--kind", "2=conv"]) == 2  # does not fit
    assert "--kind says '0' is a 'embed', but its parameters fit only" in capsys.readouterr().err
    assert main([*args, "--kind", "0=conv_transpose", "--kind", "1=conv"]) == 0
    printed = capsys.readouterr().out
    assert "weight: I O * -> ~* I O, weight norm copied (feature axes (0,) -> (1,))" in printed
    flat = load_safetensors(out)
    state = _torch_vocoder().state_dict()
    np.testing.assert_array_equal(
        flat["0/kernel"], state["0.weight_v"].numpy().transpose(2, 0, 1)[::-1]
    )
    np.testing.assert_array_equal(flat["0/kernel/scale"], state["0.weight_g"].numpy().ravel())
    assert flat["2/kernel"].shape == (3, 2)


def test_cli_refuses_bad_input_with_a_message(tmp_path, capsys):
    (tmp_path / "bad.safetensors").write_bytes(b"not a checkpoint")
    args = ["convert", str(tmp_path / "bad.safetensors"), "--to", "haiku", "-o", "x"]
    assert main(args) == 2
    assert "is neither a safetensors file nor a PyTorch checkpoint" in capsys.readouterr().err
    assert main([*args[:-4], "--kind", "x=nonsense", "--to", "haiku", "-o", "x"]) == 2


def test_module_entry_point_lists_convert():
    result = subprocess.run(
        [sys.executable, "-m", "weightnorm", "convert", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--kind REGEX=KIND" in result.stdout


def test_demo_ports_a_torch_checkpoint_into_every_framework(capsys, monkeypatch):
    assert _demo.run_port() == 0
    printed = capsys.readouterr().out
    assert "weight_g/weight_v" in printed and "OK: the checkpoint ports exactly." in printed
    for framework in ("linen", "haiku", "equinox"):
        assert f"\n{framework} " in printed

    checkpoint = _demo.torch_checkpoint

    def off_by_a_little(weights):
        state = checkpoint(weights)
        state["out.bias"] = state["out.bias"] + 1e-3
        return state

    monkeypatch.setattr(_demo, "torch_checkpoint", off_by_a_little)
    assert _demo.run_port() == 1
    assert "DISAGREES" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("dst", "keys"),
    [
        ("haiku", {"1/w": (3, 3, 3), "1/w/scale": (3,), "2/w": (3, 2)}),
        ("equinox", {"1/weight": (3, 3, 3), "1/weight/scale": (3,), "1/bias": (3, 1)}),
    ],
)
def test_cli_writes_each_frameworks_names_and_layouts(tmp_path, capsys, dst, keys):
    torch.save(_torch_vocoder().state_dict(), tmp_path / "m.pt")
    out = tmp_path / "m.safetensors"
    args = ["convert", str(tmp_path / "m.pt"), "--to", dst, "-o", str(out)]
    assert main([*args, "--kind", "0=conv_transpose", "--kind", "1=conv"]) == 0
    flat = load_safetensors(out)
    for key, shape in keys.items():
        assert flat[key].shape == shape, key
    assert "wrote 8 arrays" in capsys.readouterr().out
