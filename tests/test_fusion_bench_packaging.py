"""The FusionBench configs are found by the Hydra search-path plugin after a regular install of the
wheel and in the editable install the tests run in.

Regular install: the wheel is built with ``pip wheel`` and installed with ``pip install --target``
into a fresh virtual environment whose only other path entry is this environment's
site-packages (through a plain ``.pth`` line, so this environment's editable-install hook is
NOT processed and the source tree is not importable there). In both modes Hydra's own
``compose`` (which applies every search-path plugin) is run in a subprocess from an empty
folder and must resolve ``method=sst_merge``, ``taskpool=sst_safety`` and the pool config.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted(
    str(path.relative_to(REPO / "configs" / "fusion_bench"))
    for path in (REPO / "configs" / "fusion_bench").rglob("*.yaml")
)
COMPOSE = """
import importlib.util, json, os
from hydra import compose, initialize_config_dir
from hydra_plugins.sst_merge_searchpath.sst_merge_searchpath import config_dir
main = list(importlib.util.find_spec("fusion_bench_config").submodule_search_locations)[0]
with initialize_config_dir(config_dir=main, version_base=None):
    cfg = compose("fabric_model_fusion", overrides=[
        "method=sst_merge", "taskpool=sst_safety", "modelpool=CausalLMPool/sst_smollm2_lora"])
print(json.dumps({"config_dir": str(config_dir()), "method": cfg.method._target_,
    "merge_method": cfg.method.merge_method, "taskpool": cfg.taskpool._target_,
    "pool_entry": cfg.modelpool.models.safety._target_}))
"""


def compose_in(python: str | Path, cwd: Path, env: dict[str, str] | None = None) -> dict:
    done = subprocess.run(
        [str(python), "-c", COMPOSE], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def assert_shipped_configs_resolve(found: dict) -> None:
    assert found["method"] == "sst_merge_plugin.fusion_bench.algorithm.SSTMergeAlgorithm"
    assert found["merge_method"] == "sst_merge"
    assert found["taskpool"] == "sst_merge_plugin.fusion_bench.taskpool.SSTSafetyTaskPool"
    assert found["pool_entry"] == "sst_merge_plugin.fusion_bench.loaders.load_lora_causal_lm"


def test_editable_install_uses_the_live_source_configs(tmp_path: Path) -> None:
    found = compose_in(sys.executable, tmp_path)
    assert_shipped_configs_resolve(found)
    assert Path(found["config_dir"]) == REPO / "configs" / "fusion_bench"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(REPO)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    (path,) = out.glob("sst_merge-*.whl")
    return path


def test_wheel_ships_the_plugin_as_a_namespace_package_and_every_config(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "hydra_plugins/sst_merge_searchpath/sst_merge_searchpath.py" in names
    assert "hydra_plugins/__init__.py" not in names  # a namespace package shared with others
    packaged = sorted(
        name.removeprefix("sst_merge_plugin/fusion_bench/configs/")
        for name in names
        if name.startswith("sst_merge_plugin/fusion_bench/configs/")
    )
    assert packaged == SHIPPED and "method/sst_merge.yaml" in packaged


def test_regular_install_finds_the_configs_without_the_source_tree(
    wheel: Path, tmp_path: Path
) -> None:
    env = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(env), "platbase": str(env)}))
    (site / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    install = [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site)]
    subprocess.run([*install, str(wheel)], check=True, timeout=300)
    python = env / "bin" / "python"
    # a PYTHONPATH naming a source checkout (e.g. a git worktree under test) would win over the
    # installed wheel
    clean = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    probe = "import sst_merge_plugin; print(sst_merge_plugin.__file__)"
    where = subprocess.run([str(python), "-c", probe], cwd=tmp_path, env=clean,
                           capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    assert Path(where).is_relative_to(site)  # the wheel, not the source checkout
    found = compose_in(python, tmp_path, clean)
    assert_shipped_configs_resolve(found)
    assert Path(found["config_dir"]) == site / "sst_merge_plugin" / "fusion_bench" / "configs"
