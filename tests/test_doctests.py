"""The examples in fusedce's docstrings run as doctests, and every public function has one."""

import ast
import doctest
import importlib
import importlib.util
import inspect
import pkgutil

import pytest

import fusedce
from conftest import MISSING, need

# Modules whose import needs an optional dependency, and that dependency.
OPTIONAL = {"fusedce.torch": "torch", "fusedce.torch_distributed": "torch",
            "fusedce._torch_linear": "torch", "fusedce._torch_composite": "torch",
            "fusedce._direct": "torch",
            "fusedce.emulated": "fusedce._emulated"}
# Never imported here: running it is running the demo.
EXCLUDED = {"fusedce.__main__"}
# Doctests that need an optional dependency at run time (not at import).
NEEDS = {"fusedce.demo": "sklearn"}
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _module_names():
    names = ["fusedce"]
    for info in pkgutil.iter_modules(fusedce.__path__, "fusedce."):
        if info.name not in EXCLUDED:
            names.append(info.name)
    return sorted(names)


def _available(module_name):
    for table in (OPTIONAL, NEEDS):
        dep = table.get(module_name)
        if dep is not None and importlib.util.find_spec(dep) is None:
            return False
    return True


def _doctests():
    """(id, DocTest, or the name of the missing dependency) for every docstring with examples
    in every module."""
    finder = doctest.DocTestFinder(exclude_empty=True)
    cases = []
    for name in _module_names():
        if not _available(name):
            dep = OPTIONAL.get(name) or NEEDS.get(name)
            if dep in MISSING:  # skipped by conftest.need, with how to install it
                cases.append(pytest.param(dep, id=name))
            else:
                cases.append(pytest.param(None, id=name, marks=pytest.mark.skip(
                    reason=f"{name} needs {dep}, which this build of fusedce lacks")))
            continue
        module = importlib.import_module(name)
        for test in finder.find(module, name):
            if test.examples:
                cases.append(pytest.param(test, id=test.name))
    return cases


@pytest.mark.parametrize("test", _doctests())
def test_docstring_examples(test):
    if isinstance(test, str):
        need(test)  # skips: the dependency is missing
    report = []
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    result = runner.run(test, out=report.append)
    assert result.failed == 0, "".join(report)


def _public_functions():
    mods = [fusedce, importlib.import_module("fusedce.demo")]
    if importlib.util.find_spec("torch") is not None:
        mods.append(importlib.import_module("fusedce.torch"))
    for mod in mods:
        for name in mod.__all__:
            obj = getattr(mod, name)
            if inspect.isfunction(obj) or inspect.isclass(obj) or inspect.isbuiltin(obj):
                yield f"{mod.__name__}.{name}", obj


def test_every_public_function_has_a_docstring_example():
    missing = [name for name, obj in _public_functions()
               if ">>>" not in (inspect.getdoc(obj) or "")]
    assert not missing, "public functions without a docstring example: " + ", ".join(missing)


def test_core_stub_names_match_the_compiled_module():
    """python/fusedce/_core.pyi declares exactly what fusedce._core exports."""
    from pathlib import Path

    from fusedce import _core

    stub = Path(fusedce.__file__).with_name("_core.pyi")
    declared = {node.name for node in ast.parse(stub.read_text()).body
                if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    exported = {name for name in dir(_core) if not name.startswith("_")}
    assert declared == exported, (sorted(exported - declared), sorted(declared - exported))
    assert (stub.parent / "py.typed").exists()
