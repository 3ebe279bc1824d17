"""The README's first command: `python -m weightnorm demo`."""

from __future__ import annotations

import subprocess
import sys

import pytest

from weightnorm import _demo
from weightnorm.__main__ import main


def test_demo_agrees_and_exits_zero(capsys):
    assert main(["demo", "--steps", "30", "--quiet"]) == 0
    printed = capsys.readouterr().out
    for framework in ("flax (ref)", "linen", "haiku", "equinox"):
        assert framework in printed
    assert "OK: every framework computes the same function." in printed


@pytest.mark.parametrize("error", [1e-3, float("nan")])
def test_demo_exits_one_when_a_framework_disagrees(capsys, monkeypatch, error):
    haiku_model = _demo.haiku_model

    def broken_haiku():
        apply, params = haiku_model()
        return (lambda p, x: apply(p, x) + error), params

    monkeypatch.setattr(_demo, "haiku_model", broken_haiku)
    assert main(["demo", "--steps", "2", "--quiet"]) == 1
    assert "DISAGREES" in capsys.readouterr().out


def test_demo_rejects_zero_steps(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--steps", "0"])
    assert "must be at least 1" in capsys.readouterr().err


def test_module_entry_point_shows_usage():
    result = subprocess.run(
        [sys.executable, "-m", "weightnorm", "--help"], capture_output=True, text=True, check=True
    )
    assert "demo" in result.stdout
