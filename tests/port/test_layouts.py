"""The layout table: every entry is a rearrangement of the canonical layout, and moves invert."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from weightnorm.port import LAYOUTS
from weightnorm.port._layouts import axis_names, from_layout, to_layout

ENTRIES = [
    (kind, framework, role)
    for kind, frameworks in LAYOUTS.items()
    for framework, roles in frameworks.items()
    for role in roles
]


@pytest.mark.parametrize(("kind", "framework", "role"), ENTRIES)
def test_every_layout_holds_the_canonical_axes_once(kind, framework, role):
    canonical = LAYOUTS[kind]["torch"][role].layout
    names = [n for n in axis_names(LAYOUTS[kind][framework][role].layout, 2) if n != "1"]
    assert sorted(names) == sorted(axis_names(canonical, 2))


def test_every_kind_is_stored_by_torch_linen_and_nnx():
    for kind, frameworks in LAYOUTS.items():
        assert {"torch", "linen", "nnx"} <= set(frameworks), kind


@given(st.sampled_from(ENTRIES), st.integers(1, 3), st.data())
def test_to_layout_and_from_layout_invert_each_other(entry, spatial, data):
    kind, framework, role = entry
    canonical = LAYOUTS[kind]["torch"][role].layout
    layout = LAYOUTS[kind][framework][role].layout
    sizes = data.draw(st.lists(st.integers(1, 4), min_size=8, max_size=8))
    shape = tuple(sizes[i] for i, _ in enumerate(axis_names(canonical, spatial)))
    value = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    moved = to_layout(value, canonical, layout, spatial)
    assert moved.size == value.size
    np.testing.assert_array_equal(from_layout(moved, canonical, layout, spatial), value)


def test_transposed_conv_flips_the_kernel_against_torch():
    w = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)  # torch (in, out, k)
    linen = to_layout(w, "I O *", LAYOUTS["conv_transpose"]["linen"]["weight"].layout, 1)
    np.testing.assert_array_equal(linen, w.transpose(2, 0, 1)[::-1])


def test_port_imports_without_torch_or_frameworks(tmp_path):
    # safetensors files are read and written without the `safetensors` package.
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['safetensors'] = None\n"
        "import numpy as np\n"
        "import weightnorm.port as p\n"
        "assert not {'flax', 'haiku', 'equinox'} & set(sys.modules), sorted(sys.modules)\n"
        "try:\n    p.load_torch('x.pt')\nexcept ImportError as e:\n    print(e)\n"
        f"path = {str(tmp_path / 'w.safetensors')!r}\n"
        "p.save_safetensors({'a': np.arange(3.0)}, path)\n"
        "print(p.load_safetensors(path)['a'].tolist())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert "pip install 'weightnorm[torch]'" in result.stdout
    assert "[0.0, 1.0, 2.0]" in result.stdout


def test_port_and_testing_export_exactly_all():
    import weightnorm.port
    import weightnorm.testing

    for module in (weightnorm.port, weightnorm.testing):
        public = {name for name in vars(module) if not name.startswith("_")}
        assert public == set(module.__all__), module.__name__
