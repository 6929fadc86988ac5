"""The public API as the README presents it: every export is what the README says, and the README's
Python snippets run on the built-in model."""
from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import re
from pathlib import Path

import pytest

import diffpress

README = Path(__file__).resolve().parent.parent / "README.md"
KINDS = {"function": inspect.isfunction, "class": inspect.isclass,
         "constant": lambda value: not (inspect.isfunction(value) or inspect.isclass(value) or inspect.ismodule(value))}


def readme_api_table() -> dict[str, str]:
    """name -> kind from the README's Python API table (rows like | `diffpress.NAME` | kind | ... |)."""
    rows = re.findall(r"^\| `diffpress\.(\w+)` \| (\w+) \|", README.read_text(), flags=re.MULTILINE)
    return dict(rows)


def import_every_module() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(diffpress.__path__, "diffpress."):
        if info.name.endswith("__main__"):
            continue
        importlib.import_module(info.name)
        names.append(info.name)
    return names


def test_every_export_is_what_the_readme_says_even_after_every_submodule_is_imported():
    modules = import_every_module()  # importing a subpackage named like an export would shadow it
    table = readme_api_table()
    exports = [name for name in diffpress.__all__ if name != "__version__"]
    assert sorted(table) == sorted(exports)
    for name in exports:
        value = getattr(diffpress, name)
        assert KINDS[table[name]](value), f"diffpress.{name} is {value!r}, the README says {table[name]}"
    top_level = {module.split(".")[1] for module in modules}
    assert not top_level & set(exports), "a subpackage or module shares its name with an export"


def test_compress_is_the_verb():
    import diffpress.compression  # noqa: F401  (the subpackage once shadowed the verb)

    assert inspect.isfunction(diffpress.compress)
    assert "plan" in inspect.signature(diffpress.compress).parameters


def python_snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_readme_python_snippets_run_on_the_builtin_model(tmp_path, monkeypatch):
    snippets = python_snippets()
    assert len(snippets) >= 4
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for index, snippet in enumerate(snippets):
        try:
            exec(compile(snippet, f"README.md python snippet {index}", "exec"), namespace)
        except Exception as error:  # noqa: BLE001  (report which snippet broke)
            raise AssertionError(f"README python snippet {index} failed: {error!r}\n{snippet}") from error
    assert (tmp_path / "out" / "digits-mixed6" / "allocation.json").is_file()
    assert namespace["allocation"].avg_bits <= 6 + 1e-9
    assert namespace["images"].shape == (2, 1, 16, 16)
