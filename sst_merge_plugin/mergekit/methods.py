"""The four SST merge methods as mergekit ``GroupMergeMethod``s (thin adapters).

``GroupMergeMethod`` (not the batched style) because the Fisher factors are looked up by the
output tensor's name, ``group.metadata.name``. Each call translates mergekit's group and
resolved parameters into the method layer's settings
(:mod:`sst_merge_plugin.method.settings`) and calls
:func:`~sst_merge_plugin.method.tensor_merge.merge_tensor`; the result is recorded in the
merge's :class:`~sst_merge_plugin.method.session.MergeSession` for the report.
"""

from __future__ import annotations

from typing import Any

import torch
from mergekit.merge_methods import (
    BasePolicy,
    GroupMergeMethod,
    InputContract,
    MergeMethodSpec,
    ParameterScope,
    TensorGroup,
)

from sst_merge_plugin.core.errors import SSTError
from sst_merge_plugin.mergekit import sessions
from sst_merge_plugin.mergekit.specs import parameter_specs
from sst_merge_plugin.method.fisher_sources import FisherSources
from sst_merge_plugin.method.settings import Method, parse_inputs, parse_shared
from sst_merge_plugin.method.tensor_merge import merge_tensor


class SSTMergeMethod(GroupMergeMethod):
    """One of the SST methods, by name (its parameters come from :mod:`.specs`)."""

    def __init__(self, method: Method) -> None:
        self.spec = MergeMethodSpec(
            name=str(method),
            parameters=parameter_specs(method),
            contract=InputContract(base=BasePolicy.REQUIRED, min_non_base=1),
            pretty_name=method.pretty_name,
        )

    def merge_group(self, group: TensorGroup, /, **parameters: Any) -> torch.Tensor:
        """Merge one output tensor: ``merge_tensor`` on the group's base and non-base inputs."""
        method = self.spec.name
        name = group.metadata.name
        if not name:
            raise SSTError(f"{method} needs the tensor name (TensorGroup metadata.name)")
        shared = {p.name: parameters[p.name] for p in self.spec.shared_parameters}
        per_input = {
            entry.id: {
                p.name: parameters[p.name][entry.id]
                for p in self.spec.parameters
                if p.scope == ParameterScope.NON_BASE
            }
            for entry in group.non_base
        }
        settings = parse_shared(method, shared)
        inputs = parse_inputs(method, per_input)
        fishers = FisherSources.open(settings, inputs)
        session = sessions.current(method)
        base = group.base.tensor
        merged = merge_tensor(
            name,
            base,
            {entry.id: entry.tensor for entry in group.non_base},
            inputs,
            settings,
            fishers,
            session.cache,
        )
        session.record(name, base, merged, settings)
        return merged.tensor
