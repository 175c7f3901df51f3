"""Layering of the package (``docs/design.md`` §5): the host adapters import the method layer,
never each other, and ``core/`` is plain math that imports no host, no I/O layer."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sst_merge_plugin"


def imported_modules(folder: Path, package_root: Path = PACKAGE) -> dict[str, set[str]]:
    """File (relative to ``package_root``, the ``sst_merge_plugin`` folder) → every module it
    imports, at any depth of the file (function-level imports included), relative imports
    resolved."""
    found: dict[str, set[str]] = {}
    for path in sorted(folder.rglob("*.py")):
        package = ".".join(("sst_merge_plugin", *path.relative_to(package_root).parent.parts))
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = package.rsplit(".", node.level - 1)[0] if node.level else ""
                module = ".".join(part for part in (base, node.module or "") if part)
                names.add(module)
                names.update(f"{module}.{alias.name}" for alias in node.names)
        found[str(path.relative_to(package_root))] = names
    return found


@pytest.mark.parametrize(
    ("folder", "forbidden"),
    [
        ("mergekit", ("sst_merge_plugin.fusion_bench", "fusion_bench")),
        ("fusion_bench", ("sst_merge_plugin.mergekit",)),
        ("method", ("sst_merge_plugin.mergekit", "sst_merge_plugin.fusion_bench", "fusion_bench")),
        (
            "core",
            (
                "sst_merge_plugin.mergekit",
                "sst_merge_plugin.fusion_bench",
                "sst_merge_plugin.method",
                "sst_merge_plugin.fisher",
                "sst_merge_plugin.bench",
                "sst_merge_plugin.data",
                "mergekit",
                "fusion_bench",
                "transformers",
            ),
        ),
    ],
)
def test_layers_import_only_downwards(folder: str, forbidden: tuple[str, ...]) -> None:
    offending = {
        file: sorted(m for m in modules if any(m == f or m.startswith(f + ".") for f in forbidden))
        for file, modules in imported_modules(PACKAGE / folder).items()
    }
    assert {file: mods for file, mods in offending.items() if mods} == {}


def test_the_import_scan_sees_function_level_and_relative_imports(tmp_path: Path) -> None:
    """The scan the layering test relies on finds imports inside functions and resolves
    relative ones (a scan that missed them could never fail)."""
    code = "def f():\n    from ..mergekit import specs\n    import fusion_bench.method\n"
    root = tmp_path / "sst_merge_plugin"
    (root / "method").mkdir(parents=True)
    (root / "method" / "probe.py").write_text(code, encoding="utf-8")
    modules = imported_modules(root / "method", root)["method/probe.py"]
    assert "sst_merge_plugin.mergekit.specs" in modules and "fusion_bench.method" in modules
