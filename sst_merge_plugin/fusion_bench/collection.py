"""Which Fisher files a FusionBench run must collect, from ``fisher_collection`` and the pool.

:class:`~sst_merge_plugin.fusion_bench.algorithm.SSTMergeAlgorithm` lets a config name data
instead of Fisher files. :func:`plan_collection` turns that into
:class:`~sst_merge_plugin.fisher.request.FisherRequest` s (validated on construction, before
anything is collected), keyed by what each fills in; :func:`collect_planned` then reuses or
collects each file through the content-keyed cache (:mod:`sst_merge_plugin.fisher.cache`).

``fisher_collection`` keys (:data:`COLLECTION_KEYS`, plus every collection option of
:data:`sst_merge_plugin.fisher.request.OPTIONS`):

* ``harm_data`` (objective ``harm_objective``, default ``refusal``) and ``benign_data``
  (``benign_objective``, default ``kl``) — the shared pair, collected on ``_pretrained_``;
* ``data`` — ``sst_fisher_merge``: ``{model name: data}`` collected on that model (base + its
  adapter) with ``objective`` (default ``kl``) and kind ``diag``;
* ``kind`` (default ``lora``; a restricted kind is restricted to the safety model's adapter,
  ``adapter_path`` of its pool entry); ``cache_dir``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fusion_bench import BaseModelPool
from omegaconf import OmegaConf

from sst_merge_plugin.core.errors import SSTError
from sst_merge_plugin.core.kinds import get_kind
from sst_merge_plugin.fisher import Objective
from sst_merge_plugin.fisher.request import OPTIONS, FisherRequest
from sst_merge_plugin.method.settings import PROJECTING, Method, ProjectSide

#: keys of ``fisher_collection`` besides the collection options
COLLECTION_KEYS = (
    "harm_data",
    "benign_data",
    "data",
    "kind",
    "harm_objective",
    "benign_objective",
    "objective",
    "cache_dir",
)
#: pool-entry keys naming a model folder / a PEFT adapter folder (ours, then FusionBench's)
FOLDER_KEYS = ("pretrained_model_name_or_path", "base_model_path")
ADAPTER_KEYS = ("adapter_path", "peft_model_path")
#: the pool's base model entry
PRETRAINED = "_pretrained_"


def plain(value: Any) -> Any:
    """OmegaConf containers as plain Python (the settings are compared, hashed, serialised)."""
    if OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True)
    return value


def model_source(modelpool: BaseModelPool, name: str) -> tuple[str, str | None]:
    """``(model folder, adapter folder or None)`` of a pool entry; :class:`SSTError` if neither
    a folder path nor a config with one of :data:`FOLDER_KEYS`."""
    config = plain(modelpool.get_model_config(name, return_copy=False))
    if isinstance(config, str):
        folder, adapter = config, None
    elif isinstance(config, Mapping):
        folder = next((config[k] for k in FOLDER_KEYS if config.get(k)), None)
        adapter = next((config[k] for k in ADAPTER_KEYS if config.get(k)), None)
    else:
        folder = adapter = None
    if folder is None or not Path(str(folder)).expanduser().is_dir():
        raise SSTError(
            f"pool model {name!r} is not a local model folder (or a config with one of "
            f"{', '.join(FOLDER_KEYS)}); it is needed to collect Fishers and check fingerprints"
        )
    return str(Path(str(folder)).expanduser()), None if adapter is None else str(adapter)


def collection_settings(fisher_collection: Any) -> dict[str, Any]:
    """``fisher_collection`` as a plain mapping; unknown keys are an :class:`SSTError`."""
    collection = plain(fisher_collection) or {}
    unknown = sorted(set(collection) - set(COLLECTION_KEYS) - set(OPTIONS))
    if unknown:
        allowed = ", ".join((*COLLECTION_KEYS, *OPTIONS))
        raise SSTError(f"fisher_collection: unknown key(s) {unknown}; allowed: {allowed}")
    return collection


@dataclass(frozen=True)
class PlannedFisher:
    """One file to collect: its request and the label its cached file name starts with."""

    label: str
    request: FisherRequest


def plan_collection(
    method: Method,
    modelpool: BaseModelPool,
    collection: Mapping[str, Any],
    safety_model: str | None,
    shared: Mapping[str, Any],
    inputs: Mapping[str, Mapping[str, Any]],
) -> dict[str, PlannedFisher]:
    """The Fisher files ``method`` needs and the config does not give, keyed by what they fill
    in: ``harm_fisher``, ``benign_fisher`` or (``sst_fisher_merge``) a model name."""
    options = {key: collection[key] for key in OPTIONS if key in collection}
    planned: dict[str, PlannedFisher] = {}
    needed: list[tuple[str, str, str]] = []  # (parameter, data key, objective)
    projects_safety = ProjectSide.parse("project", shared.get("project", "safety")).safety
    if method in PROJECTING and projects_safety and "harm_fisher" not in shared:
        needed.append(
            ("harm_fisher", "harm_data", collection.get("harm_objective", Objective.REFUSAL))
        )
    if method == Method.SST_MERGE and projects_safety and "benign_fisher" not in shared:
        needed.append(
            ("benign_fisher", "benign_data", collection.get("benign_objective", Objective.KL))
        )
    for parameter, data_key, _ in needed:
        if not collection.get(data_key):
            raise SSTError(
                f"{method} needs '{parameter}' (a Fisher file) or "
                f"fisher_collection.{data_key} (data to collect it from)"
            )
    if needed:
        kind = collection.get("kind", "lora")
        base_dir, _ = model_source(modelpool, PRETRAINED)
        restrict = None
        if get_kind(kind).restricted:
            _, restrict = model_source(modelpool, str(safety_model))
            if restrict is None:
                raise SSTError(
                    f"fisher_collection.kind {kind} restricts the Fishers to the safety "
                    f"adapter, but pool model {safety_model!r} has no adapter_path; "
                    "use kind kfac or diag, or give the Fisher files"
                )
        for parameter, data_key, objective in needed:
            planned[parameter] = PlannedFisher(
                parameter.removesuffix("_fisher"),
                FisherRequest.from_options(
                    base_dir,
                    str(collection[data_key]),
                    objective,
                    kind,
                    restrict_to=restrict or (),
                    options=options,
                ),
            )
    if method != Method.SST_FISHER_MERGE:
        return planned
    if collection.get("kind", "diag") != "diag":
        raise SSTError(f"{method} merges with diagonal Fishers: fisher_collection.kind diag")
    data = collection.get("data") or {}
    unknown = sorted(set(data) - set(inputs))
    if unknown:
        raise SSTError(f"fisher_collection.data: no model(s) {unknown} in the pool")
    for name, values in inputs.items():
        if values.get("fisher") is not None:
            continue
        if name not in data:
            raise SSTError(
                f"{method}: model {name!r} needs a Fisher file (fisher.{name}) or data to "
                f"collect it from (fisher_collection.data.{name})"
            )
        model_dir, adapter = model_source(modelpool, name)
        if adapter is not None:  # collected on base + adapter, fingerprinted as the base
            model_dir, _ = model_source(modelpool, PRETRAINED)
        planned[name] = PlannedFisher(
            name,
            FisherRequest.from_options(
                model_dir,
                str(data[name]),
                collection.get("objective", Objective.KL),
                "diag",
                adapter=adapter,
                options=options,
            ),
        )
    return planned


def collect_planned(planned: Mapping[str, PlannedFisher], cache_dir: str | None) -> dict[str, str]:
    """The path of each planned file (reused from the cache or collected now), same keys."""
    from sst_merge_plugin.fisher.cache import cached_fisher_file

    return {
        target: str(cached_fisher_file(item.request, cache_dir, item.label))
        for target, item in planned.items()
    }
