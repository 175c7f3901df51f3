"""Hydra search-path plugin: puts SST-Merge's FusionBench configs on every Hydra search path.

Hydra imports every module of the ``hydra_plugins`` namespace package at start-up (this
distribution installs ``hydra_plugins/sst_merge_searchpath``; ``hydra_plugins`` itself has no
``__init__.py``). :class:`SSTMergeSearchPathPlugin` appends the folder holding
``method/sst_*.yaml``, ``modelpool/CausalLMPool/sst_*.yaml`` and ``taskpool/sst_safety.yaml``,
so that after ``pip install`` — regular or editable — ::

    fusion_bench method=sst_merge modelpool=CausalLMPool/sst_smollm2_lora taskpool=sst_safety

finds them with no ``--config-dir`` flag. The configs are authored in ``configs/fusion_bench/``
of the source tree; the wheel carries them as ``sst_merge_plugin/fusion_bench/configs/`` (hatch
``force-include``). :func:`config_dir` finds whichever exists next to the importable
``sst_merge_plugin`` package — without importing it, since this module runs in every Hydra
application of the environment and must stay cheap. All config names start with ``sst_``, so
appending them cannot shadow another application's options.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

#: provider name shown by ``fusion_bench --info searchpath``
PROVIDER = "sst-merge"
#: where the configs are, relative to the ``sst_merge_plugin`` package folder: installed wheel
#: first, then the source checkout (editable install)
CANDIDATES = (("fusion_bench", "configs"), ("..", "configs", "fusion_bench"))


def config_dir() -> Path | None:
    """The SST-Merge FusionBench config folder, or ``None`` if ``sst_merge_plugin`` is missing."""
    spec = importlib.util.find_spec("sst_merge_plugin")
    if spec is None or not spec.submodule_search_locations:
        return None
    package = Path(next(iter(spec.submodule_search_locations)))
    for parts in CANDIDATES:
        candidate = package.joinpath(*parts).resolve()
        if (candidate / "method").is_dir():
            return candidate
    return None


class SSTMergeSearchPathPlugin(SearchPathPlugin):
    """Appends :func:`config_dir` (as ``file://``) to the config search path."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        directory = config_dir()
        if directory is not None:
            search_path.append(provider=PROVIDER, path=f"file://{directory}")
