"""The four SST merge methods as mergekit ``GroupMergeMethod``s (thin adapters).

``GroupMergeMethod`` (not the batched style) because the Fisher factors are looked up by the
output tensor's name, ``group.metadata.name``. Each call translates mergekit's group and
resolved parameters into :mod:`.params` settings and calls
:func:`~.tensor_merge.merge_tensor`; the result is recorded in the merge's
:class:`~.session.MergeSession` for the report.
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
from sst_merge_plugin.mergekit import session as sessions
from sst_merge_plugin.mergekit.fisher_source import FisherSources
from sst_merge_plugin.mergekit.params import (
    SST_FISHER_MERGE,
    SST_MERGE,
    SST_SAFE_LORA,
    SST_SINGLE_FISHER,
    parameter_specs,
    parse_inputs,
    parse_shared,
)
from sst_merge_plugin.mergekit.tensor_merge import merge_tensor

PRETTY_NAMES = {
    SST_MERGE: "SST-Merge (safety-subspace task merge)",
    SST_SINGLE_FISHER: "Single-Fisher safety projection (AlignGuard-LoRA / SafeAnchor style)",
    SST_SAFE_LORA: "Safe LoRA / SafeMERGE cosine-gated safety",
    SST_FISHER_MERGE: "Diagonal-Fisher-weighted task vectors (Fisher merging)",
}


class SSTMergeMethod(GroupMergeMethod):
    """One of the SST methods, by name (its parameters come from :mod:`.params`)."""

    def __init__(self, name: str) -> None:
        self.spec = MergeMethodSpec(
            name=name,
            parameters=parameter_specs(name),
            contract=InputContract(base=BasePolicy.REQUIRED, min_non_base=1),
            pretty_name=PRETTY_NAMES[name],
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
