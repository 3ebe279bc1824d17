"""The core needs only jax; each adapter needs only its framework and says so."""

from __future__ import annotations

import subprocess
import sys

import pytest

import weightnorm
import weightnorm.core

FRAMEWORKS = ("flax", "haiku", "equinox", "torch")


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)


def test_importing_the_core_imports_no_framework():
    result = _run(
        "import sys, weightnorm, weightnorm.core\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {FRAMEWORKS!r}))"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("adapter", "blocked", "extra"),
    [
        ("linen", "flax", "linen"),
        ("nnx", "flax", "nnx"),
        ("haiku", "haiku", "haiku"),
        ("equinox", "equinox", "equinox"),
    ],
)
def test_adapter_without_its_framework_names_the_extra(adapter, blocked, extra):
    result = _run(
        f"import sys; sys.modules[{blocked!r}] = None\nimport weightnorm.adapters.{adapter}"
    )
    assert result.returncode != 0
    assert f"pip install 'weightnorm[{extra}]'" in result.stderr


def test_public_names_are_exactly_all():
    for module in (weightnorm, weightnorm.core):
        public = {name for name in vars(module) if not name.startswith("_")}
        public -= {"core", "adapters", "port", "testing"}  # subpackages appear once imported
        assert public == set(module.__all__), module.__name__
