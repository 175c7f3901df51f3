"""Checks both hosts run before a merge writes anything (``docs/design.md`` §4.6).

The hosts call these and collect (mergekit: :mod:`sst_merge_plugin.mergekit.validation`) or
raise (FusionBench: ``SSTMergeAlgorithm.prepare``) what they find; :func:`cannot_run` makes the
error, :func:`warn_findings` the warnings.

* :func:`fingerprint_outcome` — does a Fisher file's ``model_fingerprint``
  (:mod:`sst_merge_plugin.fisher.fingerprint`) match the folders it may belong to (the base
  model's; for ``sst_fisher_merge`` also that input's)? Returns the outcome the merge report
  records, plus a problem text on a mismatch. ``check_fingerprint: false`` skips it
  (:data:`~sst_merge_plugin.method.settings.FINGERPRINT_NOT_CHECKED`).
* :func:`fisher_entry_problems` — every entry of the weights a merge uses: shapes that fit
  together (the kind's :meth:`~sst_merge_plugin.core.fisher.FisherBase.entry_shape_problem`)
  and finite values, read once through ``safe_open``.
* :func:`adapter_problem` — does a restricted (lora-kind) file belong to the adapter of each
  input whose delta it projects (recorded ``restrict_to_sha256``, or one of them for a joint
  span; on a different digest, the adapter's own update)?
* :func:`subspace_problem` — does a tensor's projected delta lie in the restricted Fisher's
  subspace, up to :data:`MAX_SUBSPACE_RESIDUAL` beyond rounding (:func:`outside_subspace`)?
  Catches merged weights of another adapter, e.g. from a stale ``--lora-merge-cache``.
* :func:`sanity_findings` — settings and Fisher pair that are certainly wrong (errors) or
  suspicious (:class:`SSTCheckWarning` s naming their check).
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from collections.abc import Hashable, Iterable, Mapping
from typing import NamedTuple

import torch
from safetensors import safe_open
from torch import Tensor

from sst_merge_plugin.core.errors import FisherValidationError, SSTError
from sst_merge_plugin.core.fisher import check_finite
from sst_merge_plugin.fisher import Objective
from sst_merge_plugin.fisher.adapter import read_lora_adapter
from sst_merge_plugin.fisher.file import SEPARATOR, FisherFile
from sst_merge_plugin.fisher.fingerprint import checkpoint_fingerprint
from sst_merge_plugin.method.fisher_sources import FisherSources, file_sha256
from sst_merge_plugin.method.settings import (
    WITH_ROLES,
    InputSettings,
    SharedSettings,
    safety_input,
)

#: at most this many problems are listed in one error message
MAX_PROBLEMS = 20
NOT_RECORDED = "not recorded in the Fisher file"
NOT_LOCAL = "not checked (the model is not a local folder)"
MISMATCH = "mismatch"


def cannot_run(method: str, problems: list[str]) -> SSTError:
    """The error listing (up to :data:`MAX_PROBLEMS` of) the problems that stop a merge."""
    more = len(problems) - MAX_PROBLEMS
    return SSTError(
        f"{method}: the merge cannot run:\n  "
        + "\n  ".join(problems[:MAX_PROBLEMS])
        + (f"\n  … and {more} more" if more > 0 else "")
    )


@functools.lru_cache(maxsize=16)
def folder_fingerprint(path: str) -> str | None:
    """The fingerprint of a local model folder, ``None`` when ``path`` is not a folder."""
    return checkpoint_fingerprint(path) if os.path.isdir(path) else None


def fingerprint_outcome(
    label: str, opened: FisherFile, candidates: Mapping[str, str]
) -> tuple[str, str | None]:
    """``(outcome, problem)`` for the file ``opened`` (named ``label`` in messages) against the
    model folders ``candidates`` (display name → folder path).

    Outcomes: :data:`NOT_RECORDED`, :data:`NOT_LOCAL` (no candidate is a local folder),
    ``"matches <name>"`` or :data:`MISMATCH` (then ``problem`` says which fingerprints differ).
    """
    recorded = opened.model_fingerprint
    if not recorded:
        return NOT_RECORDED, None
    known = {
        name: fingerprint
        for name, folder in candidates.items()
        if (fingerprint := folder_fingerprint(str(folder))) is not None
    }
    if not known:
        return NOT_LOCAL, None
    if recorded in known.values():
        return "matches " + next(name for name, fp in known.items() if fp == recorded), None
    others = ", ".join(f"{name} ({fp[:12]}…)" for name, fp in known.items())
    return MISMATCH, (
        f"{label} {str(opened.path)!r} was collected on another model: its model_fingerprint "
        f"{recorded[:12]}… does not match {others}"
    )


def fisher_entry_problems(label: str, opened: FisherFile, names: Iterable[str]) -> list[str]:
    """What is wrong with the entries of the weights ``names`` in ``opened`` (named ``label``):
    shapes that do not fit together (from the header) and NaN/Inf values.

    Every entry is read once through ``safe_open`` (one at a time); the containers' costlier
    checks (symmetry, PSD, orthonormal bases) stay with the per-tensor merge. Names without
    entries in the file are skipped.
    """
    container = opened.kind_spec.container
    suffixes = container.required_entries + container.optional_entries
    problems: list[str] = []
    with safe_open(str(opened.path), framework="pt") as handle:
        keys = set(handle.keys())
        for name in sorted(set(names)):
            present = {
                s: f"{name}{SEPARATOR}{s}" for s in suffixes if f"{name}{SEPARATOR}{s}" in keys
            }
            if not present:
                continue
            where = f"{name}: {label} {str(opened.path)!r}"
            shapes = {s: handle.get_slice(key).get_shape() for s, key in present.items()}
            shape_problem = container.entry_shape_problem(shapes)
            if shape_problem is not None:
                problems.append(f"{where}: {shape_problem}")
            for suffix, key in present.items():
                try:
                    check_finite(f"entry {suffix}", handle.get_tensor(key))
                except FisherValidationError as error:
                    problems.append(f"{where}: {error}")
    return problems


# ---- the safety patch against a restricted (lora-kind) Fisher's subspace -------------------
#: a safety patch may lie at most this fraction (in Frobenius norm) outside a restricted
#: Fisher's subspace, beyond what the weights' rounding explains (``docs/design.md`` §4.6)
MAX_SUBSPACE_RESIDUAL = 0.05
#: the rounding allowance: this many times the expected rounding energy of the two tensors
ROUNDING_SLACK = 2.0
#: tensors with more values than this have their rounding energy estimated from a sample
ROUNDING_SAMPLE = 1 << 16
#: floating-point formats a tensor's values may have been rounded to, coarsest first
_FORMATS = (torch.bfloat16, torch.float16, torch.float32, torch.float64)


def _rounding_energy(tensor: Tensor) -> float:
    """``Σ ulp(x)²/12`` — the expected squared error of rounding ``tensor``'s values to
    nearest, in the coarsest format (bfloat16, float16, its own) that holds them exactly.

    ``ulp(x) = eps·2^(e−1)`` for ``x = m·2^e`` (``frexp``; ``e`` at least the smallest normal
    number's, for subnormals), zeros left out. Tensors of more than :data:`ROUNDING_SAMPLE`
    values are estimated from that many of them (seeded, so deterministic; relative error
    ~1/√ROUNDING_SAMPLE, well inside :data:`ROUNDING_SLACK`).
    """
    values = tensor.detach().flatten()
    if values.numel() > ROUNDING_SAMPLE:
        generator = torch.Generator(device=values.device).manual_seed(0)
        picked = torch.randint(
            values.numel(), (ROUNDING_SAMPLE,), generator=generator, device=values.device
        )
        scale, values = values.numel() / ROUNDING_SAMPLE, values[picked]
    else:
        scale = 1.0
    own = torch.finfo(values.dtype)
    chosen = own
    for candidate in _FORMATS:
        if torch.finfo(candidate).eps < own.eps:
            break
        if candidate == values.dtype or torch.equal(values.to(candidate).to(values.dtype), values):
            chosen = torch.finfo(candidate)
            break
    exponent = torch.frexp(values.double()).exponent
    ulp = chosen.eps * torch.exp2((exponent.clamp(min=math.frexp(chosen.tiny)[1]) - 1).double())
    return scale * float(ulp.where(values != 0, 0.0).square().sum()) / 12.0


def outside_subspace(residual: float, base: Tensor, safety: Tensor) -> float:
    """The part of a residual ``‖ΔW − Π(ΔW)‖/‖ΔW‖`` (``ΔW = safety − base``) that rounding of
    the two tensors' values does not explain: ``sqrt(max(0, residual² − slack·noise²))`` with
    ``noise² = (E_base + E_safety)/‖ΔW‖²`` (:data:`ROUNDING_SLACK`; rounding noise is almost
    entirely outside a low-rank subspace)."""
    if residual <= MAX_SUBSPACE_RESIDUAL:
        return residual
    norm = float(torch.linalg.vector_norm(safety.double() - base.double())) ** 2
    noise = (_rounding_energy(base) + _rounding_energy(safety)) / max(norm, 1e-300)
    return math.sqrt(max(0.0, residual**2 - ROUNDING_SLACK * noise))


#: what a patch outside a restricted Fisher's subspace means, said once after the tensors
SUBSPACE_HINT = (
    f"more than {MAX_SUBSPACE_RESIDUAL:.0%} of a projected delta (beyond rounding) lies outside "
    "the Fisher's subspace, and the projection would drop it: that input's weights are not "
    "those of the adapter(s) the Fisher was restricted to — a stale --lora-merge-cache entry "
    "(mergekit keys it by the adapter's path; use a fresh cache folder after changing an "
    "adapter) or Fishers collected with another --restrict-to"
)


def subspace_problem(
    name: str,
    residual: float,
    base: Tensor,
    tensor: Tensor,
    label: str,
    opened: FisherFile,
    what: str = "the safety patch",
) -> str | None:
    """``None`` unless more of tensor ``name``'s delta ``what`` (``tensor − base``;
    ``residual`` of it outside the subspace of the restricted Fisher file ``opened``) lies
    outside than :data:`MAX_SUBSPACE_RESIDUAL` after the rounding allowance of
    :func:`outside_subspace`; then a one-line problem text (:data:`SUBSPACE_HINT` explains
    them)."""
    if outside_subspace(residual, base, tensor) <= MAX_SUBSPACE_RESIDUAL:
        return None
    return (
        f"{name}: {residual:.1%} of {what} lies outside the subspace of {label} "
        f"{str(opened.path)!r}"
    )


def adapter_problem(
    label: str,
    opened: FisherFile,
    adapter_dir: str,
    whose: str = "the safety input",
    own: bool = False,
) -> str | None:
    """Does the Fisher file ``opened`` belong to the adapter ``adapter_dir`` of the input whose
    delta it projects (``whose``, for the messages)?

    ``own``: ``opened`` is that input's own file (a ``gain_fisher`` or ``fisher``), so an adapter
    recorded as applied during collection (``adapter_sha256``, ``sst-merge fisher --adapter``)
    must be this one — a joint-span restriction cannot tell two skills' gain Fishers apart.
    Then, for a restricted kind: ``None`` when the file records no ``restrict_to_sha256``, when
    it is (or, for the joint span of several adapters, ``;``-separated, includes) the digest of
    the adapter's weights
    (:attr:`LoRAAdapter.sha256 <sst_merge_plugin.fisher.adapter.LoRAAdapter>`), or when the
    digests differ but the adapter's own update ``B·A`` of every weight the file has entries
    for lies within the file's subspace (e.g. a re-saved adapter); a problem text otherwise.
    """
    applied = opened.metadata.get("adapter_sha256") if own else None
    recorded = opened.metadata.get("restrict_to_sha256")
    restricted = bool(recorded) and opened.kind_spec.restricted
    if not applied and not restricted:
        return None
    try:
        adapter = read_lora_adapter(adapter_dir)
    except SSTError as error:
        return f"{label}: {whose}'s adapter cannot be read: {error}"
    if applied and applied != adapter.sha256:
        return (
            f"{label} {str(opened.path)!r} was collected with the adapter "
            f"{opened.metadata.get('adapter', '?')!r} applied (sha256 {applied[:12]}…), but "
            f"{whose}'s adapter {adapter_dir!r} (sha256 {adapter.sha256[:12]}…) is another one: "
            f"each input needs the Fisher of its own adapter (sst-merge fisher --adapter "
            f"{adapter_dir})"
        )
    if not restricted or adapter.sha256 in recorded.split(";"):
        return None  # not restricted, or one of the adapters of a joint span
    outside: dict[str, float] = {}
    for name in opened.weight_names():
        if name not in adapter.layers:
            outside[name] = 1.0
            continue
        lora_a, lora_b = adapter.layers[name]
        residual = opened.get(name).subspace_residual(lora_b.double() @ lora_a.double())
        if residual > MAX_SUBSPACE_RESIDUAL:
            outside[name] = residual
    if not outside:
        return None
    worst = max(outside, key=outside.__getitem__)
    where = opened.metadata.get("restrict_to", "?")
    return (
        f"{label} {str(opened.path)!r} was collected with --restrict-to {where!r} (adapter "
        f"sha256 {recorded[:12]}…), but {whose}'s adapter {adapter_dir!r} (sha256 "
        f"{adapter.sha256[:12]}…) is another adapter: its update of {worst} lies "
        f"{outside[worst]:.1%} outside the Fisher's subspace ({len(outside)} weight(s) above "
        f"{MAX_SUBSPACE_RESIDUAL:.0%}); recollect it with --restrict-to {adapter_dir}"
    )


# ---- sanity of the settings and the Fisher pair --------------------------------------------
class SSTCheckWarning(UserWarning):
    """Something suspicious but possibly intended; the message starts with ``[<check>]``."""


class Finding(NamedTuple):
    """One sanity finding: the check's name, what it found, and whether it stops the merge."""

    check: str
    message: str
    fatal: bool


def sanity_findings(
    settings: SharedSettings, inputs: Mapping[Hashable, InputSettings], fishers: FisherSources
) -> list[Finding]:
    """What is certainly wrong (``fatal``) or suspicious about a merge's settings and Fishers.

    Errors: a negative ``scale`` or safety-input ``weight`` (``safety_factor``); one file (path
    or content) as both ``harm_fisher`` and ``benign_fisher``, or the two swapped — harm
    objective ``kl``, benign ``refusal`` (``fisher_pair``); one file as a utility input's
    ``gain_fisher`` and the ``cost_fisher`` (``fisher_pair``). Warnings: a zero safety factor
    ``scale · weight`` (``zero_safety_patch``); any other unexpected objective — harm not
    ``refusal``, benign not ``kl`` (``fisher_objectives``).
    """
    findings: list[Finding] = []
    if settings.method in WITH_ROLES:
        scale, weight = settings.scale, inputs[safety_input(inputs)].weight
        subtracts = "subtracts the safety patch (use a value > 0)"
        if scale < 0:
            findings.append(Finding("safety_factor", f"scale is {scale}: it {subtracts}", True))
        if weight < 0:
            text = f"the safety input's weight is {weight}: it {subtracts}"
            findings.append(Finding("safety_factor", text, True))
        if scale * weight == 0:
            text = (
                f"scale · weight of the safety input is {scale} · {weight} = 0: the safety "
                "patch is not added, the merge is the utility merge alone"
            )
            findings.append(Finding("zero_safety_patch", text, False))
    harm, benign = fishers.harm, fishers.benign
    if harm is not None and benign is not None:
        findings.extend(_pair_findings(harm, benign))
    elif harm is not None and harm.objective != Objective.REFUSAL:
        findings.append(_objective_warning([("harm_fisher", harm, Objective.REFUSAL)]))
    for model, gain in fishers.gain.items():
        same = _same_file(f"{model}: gain_fisher", gain, "cost_fisher", fishers.cost)
        if same is not None:
            text = (
                f"{same}: every generalized eigenvalue is 1, so the projection cannot tell the "
                "utility's own directions from those that disturb the safety behaviour"
            )
            findings.append(Finding("fisher_pair", text, True))
    return findings


#: what the two Fishers of ``sst_merge`` are
_ROLES = (
    "harm_fisher is the refusal Fisher of harmful prompts, benign_fisher the kl Fisher of "
    "benign prompts"
)


def _same_file(label: str, opened: FisherFile, other_label: str, other: FisherFile) -> str | None:
    """``"<label> and <other_label> are the same file …"`` (by path or content), else ``None``."""
    if opened.path.resolve() == other.path.resolve():
        return f"{label} and {other_label} are the same file {str(opened.path)!r}"
    if os.path.getsize(opened.path) == os.path.getsize(other.path):
        digest = file_sha256(str(opened.path))
        if digest == file_sha256(str(other.path)):
            return (
                f"{label} {str(opened.path)!r} and {other_label} {str(other.path)!r} have the "
                f"same content (sha256 {digest[:12]}…)"
            )
    return None


def _pair_findings(harm: FisherFile, benign: FisherFile) -> list[Finding]:
    both = f"harm_fisher {str(harm.path)!r} and benign_fisher {str(benign.path)!r}"
    same = _same_file("harm_fisher", harm, "benign_fisher", benign)
    if same is not None:
        text = f"{same}: every generalized eigenvalue is 1, so the projection selects nothing"
        return [Finding("fisher_pair", f"{text}; {_ROLES}", True)]
    if (harm.objective, benign.objective) == (Objective.KL, Objective.REFUSAL):
        text = (
            f"{both} are swapped: harm_fisher has objective 'kl' and benign_fisher 'refusal' "
            f"({_ROLES})"
        )
        return [Finding("fisher_pair", text, True)]
    unexpected = [
        (label, opened, expected)
        for label, opened, expected in (
            ("harm_fisher", harm, Objective.REFUSAL),
            ("benign_fisher", benign, Objective.KL),
        )
        if opened.objective != expected
    ]
    return [_objective_warning(unexpected)] if unexpected else []


def _objective_warning(unexpected: list[tuple[str, FisherFile, str]]) -> Finding:
    found = "; ".join(
        f"{label} {str(opened.path)!r} has objective {opened.objective!r} (expected '{expected}')"
        for label, opened, expected in unexpected
    )
    return Finding("fisher_objectives", f"{found} — is this the Fisher you meant?", False)


def warn_findings(findings: Iterable[Finding]) -> None:
    """Issue each non-fatal finding once as an :class:`SSTCheckWarning` ``[<check>] …``."""
    for message in dict.fromkeys(f"[{f.check}] {f.message}" for f in findings if not f.fatal):
        warnings.warn(SSTCheckWarning(message), stacklevel=3)
