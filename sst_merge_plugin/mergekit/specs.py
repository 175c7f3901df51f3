"""The method layer's parameter table as mergekit sees it.

* :func:`parameter_specs` — mergekit ``ParameterSpec`` s of a method, derived from
  :data:`sst_merge_plugin.method.settings.PARAMETERS` (shared parameters → ``SHARED``,
  per-model ones → ``NON_BASE``; no default = required).
* :func:`check_config_keys` — mergekit silently ignores keys it does not know; for a
  configuration that names an SST method this rejects misspelled or misplaced parameter keys
  anywhere in the raw ``MergeConfiguration``.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from mergekit.merge_methods.base import ParameterScope, ParameterSpec

from sst_merge_plugin.core.errors import SSTError
from sst_merge_plugin.method.settings import method_parameters


def parameter_specs(method: str) -> tuple[ParameterSpec, ...]:
    """The mergekit ``ParameterSpec`` s of ``method``, in table order."""
    specs = []
    for parameter in method_parameters(method):
        scope = ParameterScope.NON_BASE if parameter.per_model else ParameterScope.SHARED
        default = {} if parameter.required else {"default": parameter.default}
        specs.append(
            ParameterSpec(
                parameter.name, parameter.type, scope, description=parameter.help, **default
            )
        )
    return tuple(specs)


def check_config_keys(config: Any, method: str) -> None:
    """Reject misspelled or misplaced parameter keys anywhere in a ``MergeConfiguration``.

    Top-level, module- and slice-level ``parameters`` may hold any parameter of ``method``
    (per-model ones act as defaults there); per-model/per-source ``parameters`` may only hold
    per-model ones — mergekit would silently ignore a shared parameter there.
    """
    parameters = method_parameters(method)
    every = {p.name for p in parameters}
    per_model = {p.name for p in parameters if p.per_model}
    problems: list[str] = []

    def check(where: str, params: Mapping[str, Any] | None, allowed: set[str]) -> None:
        for key in params or {}:
            if key in allowed:
                continue
            if key in every:
                problems.append(
                    f"{where}: '{key}' is a shared parameter of {method}; mergekit ignores it "
                    "here — set it under the top-level 'parameters:'"
                )
                continue
            hint = difflib.get_close_matches(key, sorted(every), n=1)
            problems.append(
                f"{where}: unknown parameter '{key}' for {method}"
                + (f" (did you mean '{hint[0]}'?)" if hint else "")
            )

    def check_models(where: str, models: Any) -> None:
        for model_in in models or ():
            check(f"{where}model {model_in.model}", model_in.parameters, per_model)

    def check_slices(where: str, slices: Any) -> None:
        for index, slice_out in enumerate(slices or ()):
            check(f"{where}slices[{index}]", slice_out.parameters, every)
            for source in slice_out.sources:
                check(f"{where}slices[{index}] source {source.model}", source.parameters, per_model)

    check("parameters", config.parameters, every)
    check_models("", config.models)
    check_slices("", config.slices)
    for name, module in (config.modules or {}).items():
        check(f"modules.{name}.parameters", module.parameters, every)
        check_models(f"modules.{name}: ", module.models)
        check_slices(f"modules.{name}.", module.slices)
    if problems:
        raise SSTError("invalid merge configuration:\n  " + "\n  ".join(problems))
