"""The SST merge methods as one FusionBench algorithm (a thin adapter over the method layer).

:class:`SSTMergeAlgorithm` runs any of the four methods of
:class:`sst_merge_plugin.method.settings.Method` — ``sst_merge`` (SST projection,
``docs/design.md`` §1), ``sst_single_fisher`` (projection with ``F_harm`` alone),
``sst_safe_lora`` (Safe LoRA / SafeMERGE gate) and ``sst_fisher_merge`` (diagonal Fisher
merging) — chosen by ``merge_method``, on a FusionBench model pool with ``_pretrained_``. Every
weight is merged by :func:`sst_merge_plugin.method.tensor_merge.merge_tensor`, the very
function the mergekit methods call, with settings parsed by the same
:func:`~sst_merge_plugin.method.settings.parse_shared` /
:func:`~sst_merge_plugin.method.settings.parse_inputs`; tensors are visited in sorted name order.
Same inputs, settings and Fisher files therefore give the weights of the mergekit path.

Config (FusionBench method YAML); the signature is derived from the method layer's parameter
table (:data:`~sst_merge_plugin.method.settings.PARAMETERS`), so the names, values and defaults
are mergekit's (``null`` = the default):

* every shared parameter but those with no FusionBench counterpart (:data:`NOT_SUPPORTED`:
  ``write_adapter``). Setting one the chosen method does not take is an error.
* per-model parameters (:data:`PER_MODEL`): ``weight`` and ``density`` — one number for every
  input or a mapping ``{model name: value}`` (models left out take 1.0); the ``role: safety``
  input is the pool model named by ``safety_model``, every other model is a utility input;
  ``fisher`` — ``sst_fisher_merge``: mapping ``{model name: diagonal Fisher file}``;
  ``gain_fisher`` — ``sst_merge`` with ``project: utility | both``: mapping ``{utility model
  name: its task Fisher file}`` (every utility model needs one; with ``cost_fisher``, §1.6).
* ``fisher_collection`` — collect the Fisher files a method needs and that are not given
  (:mod:`.collection`), with ``sst-merge fisher`` semantics, cached by content.

Before any model is loaded: every setting is validated, Fisher files are collected or opened
and checked together (kind, fingerprints), each file's ``model_fingerprint`` is compared
with the ``_pretrained_`` folder's (unless ``check_fingerprint: false``), every entry of
every file is checked for shapes that fit together and finite values, and a restricted
(lora-kind) file's recorded adapter digest is compared with the ``adapter_path`` of each pool
entry whose delta it projects (``harm_fisher``/``benign_fisher``: the ``safety_model``;
``cost_fisher``: every utility model; a ``gain_fisher``: its model;
:func:`~sst_merge_plugin.method.checks.adapter_problem`), and the settings
and Fisher pair are sanity-checked (:func:`~sst_merge_plugin.method.checks.sanity_findings`:
errors, or :class:`~sst_merge_plugin.method.checks.SSTCheckWarning` s). While merging, a
restricted projection that would drop more of a projected delta than rounding explains is an
error (:func:`~sst_merge_plugin.method.tensor_merge.merge_tensor`). Errors are
:class:`~sst_merge_plugin.core.SSTError`\\ s and nothing is returned (so FusionBench saves
nothing). After the merge the report (``sst_merge_report.json``: settings, Fisher files,
per-tensor diagnostics, summary; :mod:`sst_merge_plugin.method.report`) is kept in
:attr:`SSTMergeAlgorithm.merge_report` and written atomically into the run's log folder.
"""

from __future__ import annotations

import difflib
import inspect
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from fusion_bench import BaseAlgorithm, BaseModelPool
from fusion_bench.mixins import SimpleProfilerMixin, auto_register_config
from omegaconf import OmegaConf
from torch import nn

from sst_merge_plugin.atomic import write_text
from sst_merge_plugin.core.errors import SSTError
from sst_merge_plugin.fisher.file import FisherFileError
from sst_merge_plugin.fusion_bench.collection import (
    PRETRAINED,
    collect_planned,
    collection_settings,
    model_source,
    plain,
    plan_collection,
)
from sst_merge_plugin.method.checks import (
    adapter_problem,
    cannot_run,
    fingerprint_outcome,
    fisher_entry_problems,
    sanity_findings,
    warn_findings,
)
from sst_merge_plugin.method.fisher_sources import FisherSources, describe_fisher
from sst_merge_plugin.method.report import REPORT_NAME, build_report
from sst_merge_plugin.method.session import MergeSession
from sst_merge_plugin.method.settings import (
    FINGERPRINT_NOT_CHECKED,
    PARAMETERS,
    PROJECTING,
    WITH_ROLES,
    InputSettings,
    Method,
    ProjectSide,
    Role,
    SharedSettings,
    check_type,
    method_parameters,
    parse_inputs,
    parse_shared,
)
from sst_merge_plugin.method.tensor_merge import merge_tensor

log = logging.getLogger(__name__)

#: mergekit shared parameters without a FusionBench counterpart
NOT_SUPPORTED = ("write_adapter",)
#: the per-model parameters, each one value for every input or a ``{model: value}`` mapping
#: (``role`` is given as ``safety_model``)
PER_MODEL = tuple(p.name for p in PARAMETERS if p.per_model and p.name != "role")
#: the shared parameters of any method that FusionBench takes
SHARED = tuple(p.name for p in PARAMETERS if not p.per_model and p.name not in NOT_SUPPORTED)


def _signature() -> inspect.Signature:
    """``(self, merge_method, safety_model, <SHARED>, <PER_MODEL>, fisher_collection, **kwargs)``
    with every table parameter defaulting to ``None`` (the method's own default)."""
    keyword = inspect.Parameter.POSITIONAL_OR_KEYWORD
    names = ("safety_model", *SHARED, *PER_MODEL, "fisher_collection")
    return inspect.Signature(
        [
            inspect.Parameter("self", keyword),
            inspect.Parameter("merge_method", keyword, default=str(Method.SST_MERGE)),
            *(inspect.Parameter(name, keyword, default=None) for name in names),
            inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD),
        ]
    )


@dataclass(frozen=True)
class PreparedMerge:
    """What :meth:`SSTMergeAlgorithm.prepare` validated: settings, inputs, opened Fisher files
    and the fingerprint check outcome per file."""

    settings: SharedSettings
    inputs: dict[str, InputSettings]
    fishers: FisherSources
    fingerprint_checks: dict[str, str]


@auto_register_config
class SSTMergeAlgorithm(SimpleProfilerMixin, BaseAlgorithm):
    """``merge_method`` (one of :class:`~sst_merge_plugin.method.settings.Method`) on a pool.

    See the module docstring for every parameter. ``run(modelpool)`` returns the merged model
    (the ``_pretrained_`` model with merged weights).
    """

    def __init__(self, merge_method: str = str(Method.SST_MERGE), **values: Any) -> None:
        known = list(_signature().parameters)[1:-1]
        unknown = [key for key in values if key not in known]
        if unknown:
            problems = []
            for key in unknown:
                hint = difflib.get_close_matches(key, known, n=1)
                problems.append(f"'{key}'" + (f" (did you mean '{hint[0]}'?)" if hint else ""))
            raise SSTError(f"{merge_method}: unknown parameter(s) {', '.join(problems)}")
        super().__init__()
        if merge_method not in Method.values():
            raise SSTError(
                f"unknown merge_method {merge_method!r}; expected one of "
                f"{', '.join(Method.values())}"
            )
        self.merge_report: dict[str, Any] | None = None
        self._shared_values()  # rejects parameters the method does not take

    __init__.__signature__ = _signature()  # type: ignore[attr-defined]

    @property
    def method(self) -> Method:
        return Method(self.merge_method)

    # ---- settings -----------------------------------------------------------------------
    def _shared_values(self) -> dict[str, Any]:
        """The shared parameters set in the config, type-checked against the table."""
        taken = {
            p.name: p
            for p in method_parameters(self.method)
            if not p.per_model and p.name not in NOT_SUPPORTED
        }
        values: dict[str, Any] = {}
        for name in sorted(SHARED):
            value = plain(getattr(self, name))
            if value is None:
                continue
            if name not in taken:
                raise SSTError(f"{self.merge_method} does not take the parameter '{name}'")
            values[name] = check_type(taken[name], value)
        return values

    def _per_model(self, key: str, names: list[str]) -> dict[str, Any]:
        value = plain(getattr(self, key))
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
        method = self.method
        if method in WITH_ROLES and self.safety_model not in names:
            raise SSTError(
                f"{method}: safety_model must name the safety adapter's model in the pool "
                f"(models: {names}); got {self.safety_model!r}"
            )
        if method not in WITH_ROLES and self.safety_model is not None:
            raise SSTError(f"{method} has no safety input; remove safety_model")
        taken = {p.name for p in method_parameters(method) if p.per_model}
        values: dict[str, dict[str, Any]] = {name: {} for name in names}
        for key in PER_MODEL:
            given = self._per_model(key, names)
            if given and key not in taken:
                scope = "per-model parameter" if key == "fisher" else "parameter"
                raise SSTError(f"{method} does not take the {scope} '{key}'")
            for name, value in given.items():
                values[name][key] = value
        if method in WITH_ROLES:
            values[self.safety_model]["role"] = "safety"
        return values

    # ---- Fisher files and checks ----------------------------------------------------------
    def prepare(self, modelpool: BaseModelPool) -> PreparedMerge:
        """Validated settings and opened Fisher files for ``modelpool`` (collecting as needed).

        Everything is checked before a Fisher file is collected and before any model is loaded.
        """
        method = self.method
        if not modelpool.has_pretrained:
            raise SSTError(f"{method} needs the base model as '_pretrained_' in the model pool")
        names = list(modelpool.model_names)
        shared = self._shared_values()
        inputs = self._input_values(names)
        # validate everything but the Fisher paths before collecting any Fisher file
        pending = "(to be collected)"
        side = ProjectSide.parse("project", shared.get("project", ProjectSide.SAFETY))
        collected = ("harm_fisher", "benign_fisher") if side.safety else ()
        parse_shared(method, {**dict.fromkeys(collected, pending), **shared})
        parse_inputs(method, {n: {"fisher": pending, **v} for n, v in inputs.items()})
        collection = collection_settings(self.fisher_collection)
        planned = plan_collection(method, modelpool, collection, self.safety_model, shared, inputs)
        for target, path in collect_planned(planned, collection.get("cache_dir")).items():
            if target in ("harm_fisher", "benign_fisher"):
                shared[target] = path
            else:
                inputs[target]["fisher"] = path
        settings = parse_shared(method, shared)
        parsed = parse_inputs(method, inputs)
        fishers = FisherSources.open(settings, parsed)
        if settings.check_fingerprint is False:
            checks = dict.fromkeys(fishers.labelled(), FINGERPRINT_NOT_CHECKED)
        else:
            checks = self._check_fingerprints(modelpool, fishers)
        problems = [
            problem
            for label, opened in fishers.labelled().items()
            for problem in fisher_entry_problems(label, opened, opened.weight_names())
        ]
        findings = sanity_findings(settings, parsed, fishers)
        problems.extend(f.message for f in findings if f.fatal)
        if method in PROJECTING and not problems:
            problems.extend(self._adapter_problems(modelpool, parsed, fishers))
        if problems:
            raise cannot_run(method, problems)
        warn_findings(findings)
        return PreparedMerge(settings, parsed, fishers, checks)

    @staticmethod
    def _adapter_problems(
        modelpool: BaseModelPool, inputs: Mapping[str, InputSettings], fishers: FisherSources
    ) -> list[str]:
        """Each restricted file against the local adapter folder of every pool model whose
        delta it projects (:meth:`FisherSources.inputs_of`), where that model has one."""
        problems = []
        labelled = fishers.labelled()
        for label, models in fishers.inputs_of(inputs).items():
            for model in models:
                try:
                    _, adapter = model_source(modelpool, str(model))
                except SSTError:
                    continue
                if adapter is None or not Path(adapter).is_dir():
                    continue
                role = "safety" if inputs[model].role == Role.SAFETY else "utility"
                whose = f"the {role} input {model}"
                own = label in fishers.own_files
                problem = adapter_problem(label, labelled[label], adapter, whose, own)
                if problem is not None:
                    problems.append(problem)
        return problems

    def _check_fingerprints(
        self, modelpool: BaseModelPool, fishers: FisherSources
    ) -> dict[str, str]:
        """Each file's ``model_fingerprint`` (if any) must be the ``_pretrained_`` folder's.

        Returns the outcome per file label (the report's ``fingerprint_checks``).
        """
        labelled = fishers.labelled()
        try:
            base_dir, _ = model_source(modelpool, PRETRAINED)
        except SSTError:
            return dict.fromkeys(labelled, "not checked (_pretrained_ is not a local folder)")
        outcomes = {}
        for label, opened in labelled.items():
            outcome, problem = fingerprint_outcome(
                label, opened, {f"{PRETRAINED} ({base_dir})": base_dir}
            )
            if problem is not None:
                raise FisherFileError(problem)
            outcomes[label] = outcome
        return outcomes

    # ---- merge --------------------------------------------------------------------------
    def run(self, modelpool: BaseModelPool | Mapping[str, nn.Module]) -> nn.Module:
        """Merge the pool's models into ``_pretrained_`` (see the module docstring)."""
        if not isinstance(modelpool, BaseModelPool):
            modelpool = BaseModelPool(dict(modelpool))
        with self.profile("validate settings and Fisher files"):
            prepared = self.prepare(modelpool)
        settings, inputs, fishers = prepared.settings, prepared.inputs, prepared.fishers
        with self.profile("load models"):
            merged_model = _loaded(modelpool, PRETRAINED)
            states = {name: _loaded(modelpool, name).state_dict() for name in inputs}
        session = MergeSession(self.method)
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


def _loaded(modelpool: BaseModelPool, name: str) -> nn.Module:
    model = modelpool.load_model(name)
    if not isinstance(model, nn.Module):
        raise SSTError(
            f"pool model {name!r} loaded as {type(model).__name__}, not a torch module; "
            "set modelpool.enable_lazy_loading=false"
        )
    return model
