"""The Fisher files of one merge, opened once per file and shared by every tensor.

:class:`~sst_merge_plugin.fisher.file.FisherFile` already validates a file's header and layout
eagerly and reads factors lazily through a thread-safe cache. What the merge methods add here:

* :func:`open_fisher` keeps one ``FisherFile`` per file for the whole process, so the
  planner's up-front validation and the per-tensor merges (possibly in several threads) share
  its factor cache. An entry is re-opened when the file changed on disk (absolute path, size
  and mtime are the key). Errors name the parameter the path came from (``harm_fisher: ...``).
* :class:`FisherSources` — the files a method's settings name (``harm_fisher``,
  ``benign_fisher``, or ``sst_fisher_merge``'s per-input ``fisher``), with the kind and
  fingerprint checks between them, and :func:`file_sha256` digests for the report.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field

from sst_merge_plugin.fisher.file import FisherFile, FisherFileError
from sst_merge_plugin.method.settings import InputSettings, Method, Role, SharedSettings

_OPENED: dict[tuple[str, int, int], FisherFile] = {}
_DIGESTS: dict[tuple[str, int, int], str] = {}
_LOCK = threading.Lock()


def _file_key(path: str, label: str) -> tuple[str, int, int]:
    real = os.path.abspath(os.path.expanduser(path))
    try:
        stat = os.stat(real)
    except OSError as error:
        raise FisherFileError(
            f"{label}: cannot open Fisher file {path!r}: {error.strerror}"
        ) from None
    return real, stat.st_size, stat.st_mtime_ns


def open_fisher(path: str, label: str) -> FisherFile:
    """The process-wide :class:`FisherFile` for ``path``; :class:`FisherFileError` if unusable.

    ``label`` (e.g. ``harm_fisher``) prefixes error messages.
    """
    key = _file_key(path, label)
    with _LOCK:
        opened = _OPENED.get(key)
        if opened is None:
            try:
                opened = FisherFile(key[0])
            except FisherFileError as error:
                raise FisherFileError(f"{label}: {error}") from None
            _OPENED[key] = opened
        return opened


def file_sha256(path: str) -> str:
    """sha256 (hex) of the file's bytes, computed once per file version."""
    key = _file_key(path, "Fisher file")
    with _LOCK:
        cached = _DIGESTS.get(key)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    with open(key[0], "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    with _LOCK:
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


@dataclass(frozen=True)
class FisherSources:
    """The opened Fisher files one method's settings refer to.

    ``harm``/``benign`` — the shared ``harm_fisher``/``benign_fisher`` files (``None`` when the
    method does not take them); ``per_input`` — ``sst_fisher_merge``'s ``fisher`` file of each
    input, keyed like the inputs; ``cost`` and ``gain`` — the dual projection's cost Fisher
    ``C`` and each utility input's gain Fisher ``G_i`` (``project: utility`` or ``both``).
    """

    harm: FisherFile | None = None
    benign: FisherFile | None = None
    per_input: Mapping[Hashable, FisherFile] = field(default_factory=dict)
    cost: FisherFile | None = None
    gain: Mapping[Hashable, FisherFile] = field(default_factory=dict)

    @classmethod
    def open(
        cls, settings: SharedSettings, inputs: Mapping[Hashable, InputSettings]
    ) -> FisherSources:
        """Open (or reuse) the files named by ``settings``/``inputs`` and check them together.

        Raises :class:`FisherFileError` for a missing or corrupted file, two shared files of
        different kinds or model fingerprints, per-input files that are not ``diag``, a utility
        input without its ``gain_fisher`` when utility deltas are projected (or with one when
        they are not), and gain and cost files of different kinds or models.
        """
        harm = open_fisher(settings.harm_fisher, "harm_fisher") if settings.harm_fisher else None
        benign = (
            open_fisher(settings.benign_fisher, "benign_fisher") if settings.benign_fisher else None
        )
        if harm is not None and benign is not None:
            try:
                harm.check_compatible(benign)
            except FisherFileError as error:
                raise FisherFileError(
                    f"harm_fisher {str(harm.path)!r} vs benign_fisher {str(benign.path)!r}: {error}"
                ) from None
        per_input = {
            model: open_fisher(s.fisher, f"{model}: fisher")
            for model, s in inputs.items()
            if s.fisher is not None
        }
        for model, opened in per_input.items():
            if opened.kind != "diag":
                raise FisherFileError(
                    f"{model}: fisher {str(opened.path)!r} is a {opened.kind!r} Fisher file; "
                    "Fisher-weighted merging needs kind 'diag'"
                )
        cost = open_fisher(settings.cost_fisher, "cost_fisher") if settings.cost_fisher else None
        gain = {}
        projects_utility = settings.project is not None and settings.project.utility
        for model, given in inputs.items():
            needed = (
                projects_utility
                and given.role == Role.UTILITY
                and settings.method == (Method.SST_MERGE)
            )
            if needed and given.gain_fisher is None:
                raise FisherFileError(
                    f"{model}: a utility input needs its gain_fisher (project: {settings.project})"
                )
            if not needed and given.gain_fisher is not None:
                raise FisherFileError(
                    f"{model}: gain_fisher only applies to utility inputs of sst_merge with "
                    "project: utility or both"
                )
            if needed:
                gain[model] = open_fisher(given.gain_fisher, f"{model}: gain_fisher")
        for model, opened in gain.items():
            try:
                opened.check_compatible(cost)
            except FisherFileError as error:
                raise FisherFileError(
                    f"{model}: gain_fisher {str(opened.path)!r} vs cost_fisher "
                    f"{str(cost.path)!r}: {error}"
                ) from None
        return cls(harm, benign, per_input, cost, gain)

    def _files(self) -> list[tuple[str, FisherFile, Role | None, Hashable]]:
        """``(label, file, role, model)``: a shared file projects the deltas of the inputs with
        ``role``; a per-input file (``role`` ``None``) those of ``model``."""
        files: list[tuple[str, FisherFile, Role | None, Hashable]] = []
        if self.harm is not None:
            files.append(("harm_fisher", self.harm, Role.SAFETY, None))
        if self.benign is not None:
            files.append(("benign_fisher", self.benign, Role.SAFETY, None))
        files.extend((f"{m}: fisher", opened, None, m) for m, opened in self.per_input.items())
        if self.cost is not None:
            files.append(("cost_fisher", self.cost, Role.UTILITY, None))
        files.extend((f"{m}: gain_fisher", opened, None, m) for m, opened in self.gain.items())
        return files

    @property
    def own_files(self) -> frozenset[str]:
        """Labels of the per-input files (``<model>: fisher``, ``<model>: gain_fisher``),
        collected at that input's own model."""
        return frozenset(label for label, _, role, _ in self._files() if role is None)

    def labelled(self) -> dict[str, FisherFile]:
        """Every file under the name of the parameter that set it (for reports and checks)."""
        return {label: opened for label, opened, _, _ in self._files()}

    def inputs_of(
        self, inputs: Mapping[Hashable, InputSettings]
    ) -> dict[str, tuple[Hashable, ...]]:
        """For each file of :meth:`labelled`, the inputs whose deltas it projects or weights:
        ``harm_fisher``/``benign_fisher`` — the safety input; ``cost_fisher`` — every utility
        input; ``<model>: gain_fisher`` and ``<model>: fisher`` — that input."""
        return {
            label: (model,)
            if role is None
            else tuple(m for m, s in inputs.items() if s.role == role)
            for label, _, role, model in self._files()
        }

    @property
    def reference(self) -> FisherFile | None:
        """The file whose kind the projection uses: ``harm_fisher``, else ``cost_fisher``."""
        return self.harm if self.harm is not None else self.cost


def describe_fisher(opened: FisherFile) -> dict[str, object]:
    """Path, sha256, kind, weight count and header metadata of a file, for the report."""
    return {
        "path": str(opened.path),
        "sha256": file_sha256(str(opened.path)),
        "kind": opened.kind,
        "n_weights": len(opened.weight_names()),
        "metadata": dict(opened.metadata),
    }
