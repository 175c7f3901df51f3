"""FusionBench integration: the SST methods as an algorithm, the ``sst_safety`` task pool, loaders.

* :mod:`.algorithm` — :class:`SSTMergeAlgorithm`, the four SST methods (``sst_merge``,
  ``sst_single_fisher``, ``sst_safe_lora``, ``sst_fisher_merge``) over the method layer's
  per-tensor ``merge_tensor`` (:mod:`sst_merge_plugin.method`);
* :mod:`.collection` — which Fisher files a run's ``fisher_collection`` asks for (collected
  through the content-keyed cache, :mod:`sst_merge_plugin.fisher.cache`).
* :mod:`.taskpool` — :class:`SSTSafetyTaskPool` (``taskpool=sst_safety``), usable with any method.
* :mod:`.loaders` — :func:`load_lora_causal_lm` for ``CausalLMPool`` entries (base + LoRA).

Configs (``method/sst_*.yaml``, ``modelpool/CausalLMPool/sst_*.yaml``, ``taskpool/sst_safety.yaml``)
are found by the Hydra search-path plugin ``hydra_plugins/sst_merge_searchpath``. The names
below are imported on first access, so a config that only uses the loader does not import
mergekit.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SSTMergeAlgorithm": "algorithm",
    "SSTSafetyTaskPool": "taskpool",
    "load_lora_causal_lm": "loaders",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
