"""Auto-registration: the ``.pth`` start-up hook, both install modes, every import order.

The real ``mergekit-yaml`` run in ``test_mergekit_merge.py`` shows the unmodified console
script finds ``sst_merge``; these tests pin down the mechanism in fresh interpreters.
"""

from __future__ import annotations

import os
import site
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PTH_NAME = "sst_merge_autoload.pth"
PTH_LINE = "import sst_merge_plugin._autoload"


def python(code: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "SST_MERGE_NO_AUTOLOAD"}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env={**environment, **env},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def test_pth_file_is_the_one_import_line():
    assert (REPO / PTH_NAME).read_text().strip() == PTH_LINE


def test_installed_environment_has_the_pth_in_site_packages():
    """The project is installed (``pip install -e .`` in CI): the .pth sits in site-packages."""
    found = [Path(d) / PTH_NAME for d in site.getsitepackages() if (Path(d) / PTH_NAME).is_file()]
    assert found, f"{PTH_NAME} not in {site.getsitepackages()}"
    assert found[0].read_text().strip() == PTH_LINE


def test_wheel_ships_the_pth_at_its_root(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if result.returncode != 0 and "hatchling" in result.stderr and "No matching" in result.stderr:
        pytest.skip("hatchling (the build backend) cannot be installed here")
    assert result.returncode == 0, result.stderr[-3000:]
    (wheel,) = tmp_path.glob("sst_merge-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read(PTH_NAME).decode().strip() == PTH_LINE
        assert "sst_merge_plugin/_autoload.py" in archive.namelist()
        assert "sst_merge_plugin/mergekit/registration.py" in archive.namelist()


def test_startup_hook_imports_nothing_heavy():
    out = python(
        """
        import sys
        finders = [f for f in sys.meta_path if getattr(f, "sst_merge_finder", False)]
        heavy = [m for m in ("torch", "mergekit", "sst_merge_plugin.mergekit") if m in sys.modules]
        print("sst_merge_plugin._autoload" in sys.modules, len(finders), sorted(finders[0].pending), heavy)
        """
    ).stdout.split(" ", 2)
    assert out[0] == "True" and out[1] == "1"
    assert out[2].strip() == "['mergekit.merge', 'mergekit.merge_methods', 'mergekit.plan'] []"


def test_plugin_loaded_before_mergekit():
    """This very interpreter: the .pth ran at start-up, before anything imported mergekit."""
    if os.environ.get("SST_MERGE_NO_AUTOLOAD", "") not in ("", "0"):
        pytest.skip("auto-registration disabled in this environment")
    import mergekit.merge
    import mergekit.merge_methods as methods
    import mergekit.plan
    from mergekit.scripts.run_yaml import run_merge

    names = [m.spec.name for m in methods.registered_methods() if m.spec.name.startswith("sst")]
    assert names == ["sst_merge", "sst_single_fisher", "sst_safe_lora", "sst_fisher_merge"]
    for hooked in (mergekit.merge.run_merge, mergekit.merge.generate_card):
        assert hooked.__sst_merge_wrapped__
    assert mergekit.plan.MergePlanner._plan.__sst_merge_wrapped__
    assert run_merge is mergekit.merge.run_merge  # mergekit-yaml's own binding is the hooked one
    assert not [f for f in sys.meta_path if getattr(f, "sst_merge_finder", False)]


def test_disabled_then_mergekit_first_then_reimport():
    out = python(
        """
        import importlib, os
        import mergekit.merge, mergekit.plan
        import mergekit.merge_methods as methods
        import sst_merge_plugin._autoload as autoload
        def sst():
            return [m.spec.name for m in methods.registered_methods() if m.spec.name.startswith("sst")]
        disabled = sst()
        del os.environ["SST_MERGE_NO_AUTOLOAD"]
        importlib.reload(autoload)  # plugin after mergekit
        first = sst()
        importlib.reload(autoload)  # re-import: idempotent
        inner = mergekit.merge.run_merge.__wrapped__
        print(disabled, first == sst(), len(sst()), getattr(inner, "__sst_merge_wrapped__", False),
              mergekit.plan.MergePlanner._plan.__sst_merge_wrapped__)
        """,
        SST_MERGE_NO_AUTOLOAD="1",
    ).stdout.strip()
    assert out == "[] True 4 False True"


@pytest.mark.parametrize("first", ["mergekit.specs", "method.tensor_merge"])
def test_plugin_module_importing_mergekit_first(first):
    """A plugin module that imports mergekit while it is itself half-imported: registration is
    deferred to mergekit's first method lookup instead of failing on the circular import."""
    result = python(
        f"""
        import warnings
        warnings.simplefilter("error", RuntimeWarning)  # the old failure mode was this warning
        import sst_merge_plugin.{first}
        import mergekit.merge_methods as methods
        names = [m.spec.name for m in methods.registered_methods() if m.spec.name.startswith("sst")]
        print(names, type(methods.get("sst_merge")).__name__, methods.get.__module__)
        """
    )
    assert result.stdout.strip() == (
        "['sst_merge', 'sst_single_fisher', 'sst_safe_lora', 'sst_fisher_merge'] "
        "SSTMergeMethod mergekit.merge_methods.registry"
    )
