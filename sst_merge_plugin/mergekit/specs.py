"""The method layer's parameter table as mergekit sees it: :func:`parameter_specs`, mergekit
``ParameterSpec`` s of a method derived from :data:`sst_merge_plugin.method.settings.PARAMETERS`
(shared parameters → ``SHARED``, per-model ones → ``NON_BASE``; no default = required). Unknown
or misplaced keys are rejected by :mod:`.config_keys`.
"""

from __future__ import annotations

from mergekit.merge_methods.base import ParameterScope, ParameterSpec

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
