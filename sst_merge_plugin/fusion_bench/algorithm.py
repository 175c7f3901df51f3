"""The SST merge methods as one FusionBench algorithm (a thin adapter over ``merge_tensor``).

:class:`SSTMergeAlgorithm` runs any of the four methods of :mod:`sst_merge_plugin.mergekit.params`
— ``sst_merge`` (SST projection, DESIGN 1), ``sst_single_fisher`` (projection with ``F_harm``
alone), ``sst_safe_lora`` (Safe LoRA / SafeMERGE gate) and ``sst_fisher_merge`` (diagonal
Fisher merging) — chosen by ``merge_method``, on a FusionBench model pool with ``_pretrained_``.
Every weight is merged by :func:`sst_merge_plugin.mergekit.tensor_merge.merge_tensor`, the very
function the mergekit methods call, with settings parsed by the same
:func:`~sst_merge_plugin.mergekit.params.parse_shared` /
:func:`~sst_merge_plugin.mergekit.params.parse_inputs`; tensors are visited in sorted name order.
Same inputs, settings and Fisher files therefore give the weights of the mergekit path.

Config (FusionBench method YAML) → mergekit parameters:

* shared parameters, same names, values and defaults as in mergekit (``null`` = mergekit's
  default): ``harm_fisher``, ``benign_fisher``, ``select``, ``k``, ``energy``, ``ratio``,
  ``rho``, ``damping``, ``solver``, ``scale``, ``utility_merge``, ``missing_fisher``,
  ``check_fingerprint``, ``threshold``, ``gate``, ``floor``, ``normalise``. Setting one the
  chosen method does not take is an error (mergekit's ``write_adapter`` has no FusionBench
  counterpart).
* per-model parameters: ``weight`` and ``density`` — one number for every input or a mapping
  ``{model name: value}`` (models left out take 1.0); the ``role: safety`` input is the pool
  model named by ``safety_model``, every other model is a utility input; ``fisher`` —
  ``sst_fisher_merge``: mapping ``{model name: diagonal Fisher file}``.
* ``fisher_collection`` — collect the Fisher files a method needs and that are not given, with
  ``sst-merge fisher`` semantics, cached by content (:mod:`sst_merge_plugin.fisher.cache`). Keys:
  ``harm_data`` (objective ``harm_objective``, default ``refusal``) and ``benign_data``
  (``benign_objective``, default ``kl``) — collected on ``_pretrained_``; ``data`` —
  ``sst_fisher_merge``: ``{model name: data}`` collected on that model (base + its adapter)
  with ``objective`` (default ``kl``) and kind ``diag``; ``kind`` (``lora``; a ``lora`` Fisher
  is restricted to the safety model's adapter, ``adapter_path`` of its pool entry);
  ``cache_dir``; and the ``sst-merge fisher`` options of :data:`sst_merge_plugin.fisher.cache.OPTIONS`.

Before any model is loaded: every setting is validated, Fisher files are collected or opened
and checked together (kind, fingerprints), and each file's ``model_fingerprint`` is compared
with the ``_pretrained_`` folder's (unless ``check_fingerprint: false``). Errors are
:class:`~sst_merge_plugin.core.SSTError`\\ s and nothing is returned (so FusionBench saves
nothing). After the merge the mergekit path's report
(``sst_merge_report.json``: settings, Fisher files, per-tensor diagnostics, summary) is kept in
:attr:`SSTMergeAlgorithm.merge_report` and written atomically into the run's log folder.
"""

from __future__ import annotations

import difflib
import inspect
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from fusion_bench import BaseAlgorithm, BaseModelPool
from fusion_bench.mixins import SimpleProfilerMixin, auto_register_config
from mergekit.merge_methods.base import ParameterScope
from omegaconf import OmegaConf
from pydantic import ValidationError
from torch import nn

from sst_merge_plugin.atomic import write_text
from sst_merge_plugin.core.errors import FisherFileError, SSTError
from sst_merge_plugin.fisher.cache import (
    OPTIONS,
    FisherRequest,
    cached_fisher_file,
    parse_request,
)
from sst_merge_plugin.fisher.fingerprint import checkpoint_fingerprint
from sst_merge_plugin.mergekit.fisher_source import FisherSources, describe_fisher
from sst_merge_plugin.mergekit.params import (
    FINGERPRINT_NOT_CHECKED,
    METHOD_NAMES,
    PROJECTING,
    SST_FISHER_MERGE,
    SST_MERGE,
    WITH_ROLES,
    InputSettings,
    SharedSettings,
    parameter_specs,
    parse_inputs,
    parse_shared,
)
from sst_merge_plugin.mergekit.report import REPORT_NAME, build_report
from sst_merge_plugin.mergekit.session import MergeSession
from sst_merge_plugin.mergekit.tensor_merge import merge_tensor

log = logging.getLogger(__name__)

#: mergekit shared parameters without a FusionBench counterpart
NOT_SUPPORTED = ("write_adapter",)
#: keys of ``fisher_collection`` besides the ``sst-merge fisher`` options
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


@dataclass(frozen=True)
class PreparedMerge:
    """What :meth:`SSTMergeAlgorithm.prepare` validated: settings, inputs, opened Fisher files
    and the fingerprint check outcome per file."""

    settings: SharedSettings
    inputs: dict[str, InputSettings]
    fishers: FisherSources
    fingerprint_checks: dict[str, str]


def _plain(value: Any) -> Any:
    """OmegaConf containers as plain Python (the settings are compared, hashed, serialised)."""
    if OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True)
    return value


@auto_register_config
class SSTMergeAlgorithm(SimpleProfilerMixin, BaseAlgorithm):
    """``merge_method`` (one of :data:`~sst_merge_plugin.mergekit.params.METHOD_NAMES`) on a pool.

    See the module docstring for every parameter. ``run(modelpool)`` returns the merged model
    (the ``_pretrained_`` model with merged weights).
    """

    def __init__(
        self,
        merge_method: str = SST_MERGE,
        safety_model: str | None = None,
        harm_fisher: str | None = None,
        benign_fisher: str | None = None,
        select: str | None = None,
        k: int | None = None,
        energy: float | None = None,
        ratio: float | None = None,
        rho: float | None = None,
        damping: float | None = None,
        solver: str | None = None,
        scale: float | None = None,
        utility_merge: str | None = None,
        missing_fisher: str | None = None,
        check_fingerprint: bool | None = None,
        threshold: float | None = None,
        gate: str | None = None,
        floor: float | None = None,
        normalise: bool | None = None,
        weight: float | Mapping[str, float] | None = None,
        density: float | Mapping[str, float] | None = None,
        fisher: Mapping[str, str] | None = None,
        fisher_collection: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if kwargs:
            known = list(inspect.signature(SSTMergeAlgorithm.__init__).parameters)[1:-1]
            problems = []
            for key in kwargs:
                hint = difflib.get_close_matches(key, known, n=1)
                problems.append(f"'{key}'" + (f" (did you mean '{hint[0]}'?)" if hint else ""))
            raise SSTError(f"{merge_method}: unknown parameter(s) {', '.join(problems)}")
        super().__init__()
        if merge_method not in METHOD_NAMES:
            raise SSTError(
                f"unknown merge_method {merge_method!r}; expected one of {', '.join(METHOD_NAMES)}"
            )
        self.merge_report: dict[str, Any] | None = None
        self._shared_values()  # rejects parameters the method does not take

    # ---- settings -----------------------------------------------------------------------
    def _shared_values(self) -> dict[str, Any]:
        """The shared parameters set in the config, type-checked by mergekit's specs."""
        specs = {
            spec.name: spec
            for spec in parameter_specs(self.merge_method)
            if spec.scope == ParameterScope.SHARED and spec.name not in NOT_SUPPORTED
        }
        every = {
            spec.name
            for method in METHOD_NAMES
            for spec in parameter_specs(method)
            if spec.scope == ParameterScope.SHARED
        }
        values: dict[str, Any] = {}
        for name in sorted(every - set(NOT_SUPPORTED)):
            value = _plain(getattr(self, name))
            if value is None:
                continue
            if name not in specs:
                raise SSTError(f"{self.merge_method} does not take the parameter '{name}'")
            try:
                values[name] = specs[name].validate(value)
            except ValidationError as error:
                first = error.errors()[0]["msg"]
                raise SSTError(f"{name}: invalid value {value!r} ({first})") from None
        return values

    def _per_model(self, key: str, names: list[str]) -> dict[str, float]:
        value = _plain(getattr(self, key))
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            return dict.fromkeys(names, value)
        unknown = sorted(set(value) - set(names))
        if unknown:
            raise SSTError(f"{key}: no model(s) {unknown} in the pool (models: {names})")
        return dict(value)

    def _input_values(self, names: list[str]) -> dict[str, dict[str, Any]]:
        """The per-model parameters of the non-base models, as mergekit would resolve them."""
        method = self.merge_method
        if method in WITH_ROLES and self.safety_model not in names:
            raise SSTError(
                f"{method}: safety_model must name the safety adapter's model in the pool "
                f"(models: {names}); got {self.safety_model!r}"
            )
        if method not in WITH_ROLES and self.safety_model is not None:
            raise SSTError(f"{method} has no safety input; remove safety_model")
        if method == SST_FISHER_MERGE and self.density is not None:
            raise SSTError(f"{method} does not take the parameter 'density'")
        if method != SST_FISHER_MERGE and self.fisher is not None:
            raise SSTError(f"{method} does not take the per-model parameter 'fisher'")
        values: dict[str, dict[str, Any]] = {name: {} for name in names}
        for key in ("weight", "density", "fisher"):
            for name, value in self._per_model(key, names).items():
                values[name][key] = value
        if method in WITH_ROLES:
            values[self.safety_model]["role"] = "safety"
        return values

    def _collection(self) -> dict[str, Any]:
        collection = _plain(self.fisher_collection) or {}
        unknown = sorted(set(collection) - set(COLLECTION_KEYS) - set(OPTIONS))
        if unknown:
            allowed = ", ".join((*COLLECTION_KEYS, *OPTIONS))
            raise SSTError(f"fisher_collection: unknown key(s) {unknown}; allowed: {allowed}")
        return collection

    # ---- Fisher files -------------------------------------------------------------------
    def _collection_requests(
        self, modelpool: BaseModelPool, shared: dict[str, Any], inputs: dict[str, dict[str, Any]]
    ) -> dict[str, FisherRequest]:
        """The Fisher files to collect, keyed by what they fill in: ``harm_fisher``,
        ``benign_fisher`` or (``sst_fisher_merge``) a model name."""
        method = self.merge_method
        collection = self._collection()
        options = {key: collection[key] for key in OPTIONS if key in collection}
        requests: dict[str, FisherRequest] = {}
        needed: list[tuple[str, str, str]] = []  # (parameter, data key, objective)
        if method in PROJECTING and "harm_fisher" not in shared:
            needed.append(("harm_fisher", "harm_data", collection.get("harm_objective", "refusal")))
        if method == SST_MERGE and "benign_fisher" not in shared:
            needed.append(
                ("benign_fisher", "benign_data", collection.get("benign_objective", "kl"))
            )
        for parameter, data_key, _ in needed:
            if not collection.get(data_key):
                raise SSTError(
                    f"{method} needs '{parameter}' (a Fisher file) or "
                    f"fisher_collection.{data_key} (data to collect it from)"
                )
        if needed:
            kind = collection.get("kind", "lora")
            base_dir, _ = _model_source(modelpool, "_pretrained_")
            restrict = None
            if kind == "lora":
                _, restrict = _model_source(modelpool, self.safety_model)
                if restrict is None:
                    raise SSTError(
                        f"fisher_collection.kind lora restricts the Fishers to the safety "
                        f"adapter, but pool model {self.safety_model!r} has no adapter_path; "
                        "use kind kfac or diag, or give the Fisher files"
                    )
            for parameter, data_key, objective in needed:
                requests[parameter] = FisherRequest(
                    label=parameter.removesuffix("_fisher"),
                    model_dir=base_dir,
                    data=str(collection[data_key]),
                    objective=objective,
                    kind=kind,
                    restrict_to=restrict,
                    options=options,
                )
        if method != SST_FISHER_MERGE:
            return requests
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
            model_dir, adapter = _model_source(modelpool, name)
            if adapter is not None:  # collected on base + adapter, fingerprinted as the base
                model_dir, _ = _model_source(modelpool, "_pretrained_")
            requests[name] = FisherRequest(
                label=name,
                model_dir=model_dir,
                data=str(data[name]),
                objective=collection.get("objective", "kl"),
                kind="diag",
                adapter=adapter,
                options=options,
            )
        return requests

    def _collect_fishers(
        self, modelpool: BaseModelPool, shared: dict[str, Any], inputs: dict[str, dict[str, Any]]
    ) -> None:
        """Fill in the Fisher paths the config leaves out: every request is validated first
        (``sst-merge fisher``'s parser), then each file is reused from the cache or collected."""
        requests = self._collection_requests(modelpool, shared, inputs)
        for request in requests.values():
            parse_request(request, os.devnull)
        cache_dir = self._collection().get("cache_dir")
        for target, request in requests.items():
            path = str(cached_fisher_file(request, cache_dir))
            if target in ("harm_fisher", "benign_fisher"):
                shared[target] = path
            else:
                inputs[target]["fisher"] = path

    def prepare(self, modelpool: BaseModelPool) -> PreparedMerge:
        """Validated settings and opened Fisher files for ``modelpool`` (collecting as needed).

        Everything is checked before a Fisher file is collected and before any model is loaded.
        """
        method = self.merge_method
        if not modelpool.has_pretrained:
            raise SSTError(f"{method} needs the base model as '_pretrained_' in the model pool")
        names = list(modelpool.model_names)
        shared = self._shared_values()
        inputs = self._input_values(names)
        # validate everything but the Fisher paths before collecting any Fisher file
        pending = "(to be collected)"
        parse_shared(method, {"harm_fisher": pending, "benign_fisher": pending, **shared})
        parse_inputs(method, {n: {"fisher": pending, **v} for n, v in inputs.items()})
        self._collect_fishers(modelpool, shared, inputs)
        settings = parse_shared(method, shared)
        parsed = parse_inputs(method, inputs)
        fishers = FisherSources.open(settings, parsed)
        if settings.check_fingerprint is False:
            checks = dict.fromkeys(fishers.labelled(), FINGERPRINT_NOT_CHECKED)
        else:
            checks = self._check_fingerprints(modelpool, fishers)
        return PreparedMerge(settings, parsed, fishers, checks)

    def _check_fingerprints(
        self, modelpool: BaseModelPool, fishers: FisherSources
    ) -> dict[str, str]:
        """Each file's ``model_fingerprint`` (if any) must be the ``_pretrained_`` folder's.

        Returns the outcome per file label (the report's ``fingerprint_checks``).
        """
        labelled = fishers.labelled()
        try:
            base_dir, _ = _model_source(modelpool, "_pretrained_")
        except SSTError:
            return dict.fromkeys(labelled, "not checked (_pretrained_ is not a local folder)")
        fingerprint = checkpoint_fingerprint(base_dir)
        outcomes = {}
        for label, opened in labelled.items():
            recorded = opened.model_fingerprint
            if not recorded:
                outcomes[label] = "not recorded in the Fisher file"
            elif recorded != fingerprint:
                raise FisherFileError(
                    f"{label} {str(opened.path)!r} was collected on another model "
                    f"(model_fingerprint {recorded[:12]}…, _pretrained_ {base_dir!r} has "
                    f"{fingerprint[:12]}…)"
                )
            else:
                outcomes[label] = f"matches _pretrained_ ({base_dir})"
        return outcomes

    # ---- merge --------------------------------------------------------------------------
    def run(self, modelpool: BaseModelPool | Mapping[str, nn.Module]) -> nn.Module:
        """Merge the pool's models into ``_pretrained_`` (see the module docstring)."""
        if not isinstance(modelpool, BaseModelPool):
            modelpool = BaseModelPool(dict(modelpool))
        method = self.merge_method
        with self.profile("validate settings and Fisher files"):
            prepared = self.prepare(modelpool)
        settings, inputs, fishers = prepared.settings, prepared.inputs, prepared.fishers
        with self.profile("load models"):
            merged_model = _loaded(modelpool, "_pretrained_")
            states = {name: _loaded(modelpool, name).state_dict() for name in inputs}
        session = MergeSession(method)
        merged_state: dict[str, torch.Tensor] = {}
        with self.profile("merge weights"), torch.no_grad():
            for name, base in sorted(merged_model.state_dict().items()):
                missing = [model for model, state in states.items() if name not in state]
                if missing:
                    raise SSTError(f"{name}: not in the state dict of model(s) {missing}")
                tensors = {model: state[name] for model, state in states.items()}
                result = merge_tensor(name, base, tensors, inputs, settings, fishers, session.cache)
                session.record(name, base, result, settings)
                merged_state[name] = result.tensor
        merged_model.load_state_dict(merged_state)
        session.checks = {
            "fisher_files": {
                label: describe_fisher(opened) for label, opened in fishers.labelled().items()
            },
            "fingerprints": prepared.fingerprint_checks,
        }
        self.merge_report = build_report(session, OmegaConf.to_yaml(self.config))
        self._write_report()
        self.print_profile_summary()
        return merged_model

    def _write_report(self) -> None:
        log_dir = getattr(self._program, "log_dir", None) if self._program is not None else None
        if log_dir is None:
            return
        path = Path(log_dir) / REPORT_NAME
        write_text(path, json.dumps(self.merge_report, indent=2, allow_nan=True) + "\n")
        log.info("SST merge report written to %s", path)


def _model_source(modelpool: BaseModelPool, name: str) -> tuple[str, str | None]:
    """``(model folder, adapter folder or None)`` of a pool entry; :class:`SSTError` if neither
    a folder path nor a config with one of :data:`FOLDER_KEYS`."""
    config = _plain(modelpool.get_model_config(name, return_copy=False))
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


def _loaded(modelpool: BaseModelPool, name: str) -> nn.Module:
    model = modelpool.load_model(name)
    if not isinstance(model, nn.Module):
        raise SSTError(
            f"pool model {name!r} loaded as {type(model).__name__}, not a torch module; "
            "set modelpool.enable_lazy_loading=false"
        )
    return model
