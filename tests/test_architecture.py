"""The package's map holds: the core names no framework, no package reaches into another's
private modules, nothing global sits on the forward path, and each adapter's defaults are
its registry entry's (docs/contributing.md)."""

from __future__ import annotations

import ast
import inspect
import pathlib
import re

import pytest

import weightnorm
from weightnorm.port import FRAMEWORKS

PACKAGE = pathlib.Path(weightnorm.__file__).parent
SUBPACKAGES = ("core", "adapters", "port", "testing")


def _modules(*parts: str) -> list[pathlib.Path]:
    return sorted(PACKAGE.joinpath(*parts).rglob("*.py"))


def _name(path: pathlib.Path) -> list[str]:
    return ["weightnorm", *path.relative_to(PACKAGE).with_suffix("").parts]


def test_the_core_names_no_framework():
    pattern = re.compile(r"\b(linen|haiku|equinox|nnx|torch|flax)\b", re.IGNORECASE)
    found = [
        f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}"
        for path in _modules("core")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not found, "\n".join(found)


def _imported(path: pathlib.Path) -> list[list[str]]:
    """The absolute module names each import of a file names."""
    package = _name(path)[:-1]  # a relative import counts from the module's package
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = [*base, *(node.module.split(".") if node.module else [])]
            found.append(module)
            found += [[*module, alias.name] for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [alias.name.split(".") for alias in node.names]
    return [name for name in found if name[:1] == ["weightnorm"]]


def test_no_package_imports_another_packages_private_module():
    offending = []
    for path in _modules():
        own = _name(path)[1] if len(_name(path)) > 2 else None
        for name in _imported(path):
            target = name[1] if len(name) > 2 else None
            private = [part for part in name[2:] if part.startswith("_")]
            if target in SUBPACKAGES and target != own and private:
                offending.append(f"{path.relative_to(PACKAGE)} imports {'.'.join(name)}")
    assert not offending, "\n".join(offending)


@pytest.mark.parametrize("part", ["core", "adapters"])
def test_no_module_level_mutable_container_on_the_forward_path(part):
    mutable = (ast.List, ast.Dict, ast.Set, ast.ListComp, ast.DictComp, ast.SetComp)
    found = []
    for path in _modules(part):
        for node in ast.parse(path.read_text()).body:
            value = getattr(node, "value", None)
            targets = [t.id for t in getattr(node, "targets", []) if isinstance(t, ast.Name)]
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                targets = [node.target.id]
            if isinstance(value, mutable) and targets != ["__all__"]:
                found.append(f"{path.relative_to(PACKAGE)}: {targets}")
    assert not found, found


def _defaults(framework: str) -> tuple[object, object]:
    """(feature_axes, epsilon) defaults of the framework's own weight-norm wrapper."""
    if framework == "torch":
        import torch

        signature = inspect.signature(torch.nn.utils.parametrizations.weight_norm)
        return signature.parameters["dim"].default, 0.0  # torch divides by the bare norm
    if framework == "linen":
        from weightnorm.adapters import linen

        fields = {f.name: f.default for f in linen.WeightNorm.__dataclass_fields__.values()}
        return fields["feature_axes"], fields["epsilon"]
    module = __import__(f"weightnorm.adapters.{framework}", fromlist=["WeightNorm"])
    parameters = inspect.signature(module.WeightNorm.__init__).parameters
    return parameters["feature_axes"].default, parameters["epsilon"].default


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_every_adapters_defaults_are_its_registry_entrys(framework):
    entry = FRAMEWORKS[framework]
    assert _defaults(framework) == (entry.feature_axis, entry.epsilon)


def test_every_framework_of_the_registry_has_an_adapter_or_is_torch_and_a_builder():
    from weightnorm.testing import STACK_FRAMEWORKS

    adapters = {path.stem for path in _modules("adapters") if not path.stem.startswith("_")}
    assert set(FRAMEWORKS) - {"torch"} == adapters
    assert tuple(FRAMEWORKS) == STACK_FRAMEWORKS
