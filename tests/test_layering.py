"""The import direction of the package (the layering in the design notes), read from the source.

Every import counts, also the lazy ones inside functions: a lazy import still ties the modules
together. `import diffpress` itself must stay light: neither torch nor triton.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "diffpress"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Absolute names of every diffpress module `path` imports (relative imports resolved)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "diffpress"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "diffpress":
                found.add(target)
                found |= {f"{target}.{alias.name}" for alias in node.names
                          if (PACKAGE.parent / f"{target}.{alias.name}".replace(".", "/")).with_suffix(".py").exists()
                          or (PACKAGE.parent / f"{target}.{alias.name}".replace(".", "/")).is_dir()}
    return found


MODULES = {module_name(path): imported_modules(path) for path in sorted(PACKAGE.rglob("*.py"))}


def within(name: str, *prefixes: str) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def offenders(importer_prefix: str, allowed) -> list[str]:
    bad = []
    for importer, targets in MODULES.items():
        if within(importer, importer_prefix):
            bad += [f"{importer} imports {target}" for target in sorted(targets) if not allowed(target, importer)]
    return bad


def test_the_layering_is_read_from_real_imports():
    assert "diffpress.compression.surgery" in MODULES["diffpress.compression.ptq"]
    assert "diffpress.errors" in MODULES["diffpress.calibration.options"]
    assert "diffpress.api" in MODULES["diffpress.cli.compress"]


@pytest.mark.parametrize("leaf", ["diffpress.formats", "diffpress.errors", "diffpress.metrics"])
def test_leaf_modules_import_nothing_of_ours(leaf):
    assert MODULES[leaf] == set()


def test_kernels_import_only_kernels_formats_errors_metrics():
    allowed = lambda target, _: within(target, "diffpress.kernels", "diffpress.formats", "diffpress.errors",
                                       "diffpress.metrics")
    assert offenders("diffpress.kernels", allowed) == []


def test_calibration_never_imports_compression_or_kernels():
    allowed = lambda target, _: not within(target, "diffpress.compression", "diffpress.kernels")
    assert offenders("diffpress.calibration", allowed) == []


def test_cli_talks_to_the_api_and_errors_only():
    allowed = lambda target, _: target == "diffpress" or within(target, "diffpress.api", "diffpress.errors",
                                                                 "diffpress.cli")
    assert offenders("diffpress.cli", allowed) == []


@pytest.mark.parametrize("plan_module", ["diffpress.recipe", "diffpress.presets", "diffpress.plan",
                                         "diffpress.prune_stage"])
def test_plans_do_not_import_the_machinery(plan_module):
    """Plans are data: no cycle through compression (recipe.py once imported compression.quantize)."""
    allowed = lambda target, _: within(target, "diffpress.recipe", "diffpress.presets", "diffpress.plan",
                                       "diffpress.prune_stage", "diffpress.formats", "diffpress.errors",
                                       "diffpress.kernels.layout")
    assert offenders(plan_module, allowed) == []


def test_import_diffpress_imports_neither_torch_nor_triton():
    code = "import diffpress, sys; print(sorted(m for m in ('torch', 'triton', 'diffusers') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
