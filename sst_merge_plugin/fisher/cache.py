"""Fisher files collected for a :class:`~.request.FisherRequest` and cached by content
(FusionBench runs, the benchmark pipeline).

:func:`cached_fisher_file` returns the path of the file
:func:`~sst_merge_plugin.fisher.collect.collect_fisher_file` writes for the request — the same
function ``sst-merge fisher`` calls — reused from a cache folder when the *content key*
matches:

    sha256 of JSON { model_fingerprint of the model folder,
                     sha256 of the adapter files (adapter, every restrict_to adapter),
                     sha256 of the selected data items (after split / max_examples),
                     objective, kind, every option except device (and response_field at its
                     default) }

so a changed checkpoint, adapter, prompt file or option gives a new file, and the same inputs
on another machine give the same name. The file is ``<cache>/<label>-<objective>-<kind>-<key
prefix>.safetensors``; the default cache is ``<sst-merge cache root>/fisher``
(:func:`sst_merge_plugin.data.assets.cache_root`). Processes sharing a cache folder collect
each file once: the file is checked and, if missing, collected under its lock
(:func:`~sst_merge_plugin.atomic.make_once`); the others wait and reuse it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from sst_merge_plugin.atomic import make_once
from sst_merge_plugin.core.errors import SSTError
from sst_merge_plugin.data.assets import cache_root, sha256_file
from sst_merge_plugin.fisher.fingerprint import checkpoint_fingerprint
from sst_merge_plugin.fisher.request import DEFAULTS, FisherRequest

log = logging.getLogger(__name__)

#: options that do not change the collected statistics (left out of the content key)
NOT_IN_KEY = ("device",)
#: options left out of the content key while they have their default value (so the keys of
#: files cached before the option existed stay valid)
KEYED_WHEN_SET = ("response_field",)
#: files of a PEFT adapter folder that determine its weights
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def _adapter_digest(folder: str | None) -> str | None:
    if folder is None:
        return None
    path = Path(folder).expanduser()
    missing = [name for name in ADAPTER_FILES if not (path / name).is_file()]
    if missing:
        raise SSTError(f"adapter folder {str(path)!r} lacks {', '.join(missing)}")
    return hashlib.sha256(
        "".join(sha256_file(path / name) for name in ADAPTER_FILES).encode()
    ).hexdigest()


def _restriction_digest(folders: tuple[str, ...]) -> str | None:
    """One adapter: its digest (as before joint spans existed); several: the digest of theirs."""
    if len(folders) <= 1:
        return _adapter_digest(folders[0] if folders else None)
    return hashlib.sha256("".join(_adapter_digest(f) or "" for f in folders).encode()).hexdigest()


def content_key(request: FisherRequest) -> str:
    """The hex content key of ``request`` (module doc); reads the data, not the model weights."""
    items, _ = request.select_data()
    options = {
        key: value
        for key, value in request.options().items()
        if key not in NOT_IN_KEY
        and value is not None
        and not (key in KEYED_WHEN_SET and value == DEFAULTS[key])
    }
    payload = {
        "model_fingerprint": checkpoint_fingerprint(request.model),
        "adapter": _adapter_digest(request.adapter),
        "restrict_to": _restriction_digest(request.restrict_to),
        "data": hashlib.sha256(json.dumps(items, sort_keys=True).encode()).hexdigest(),
        "objective": request.objective,
        "kind": request.kind,
        "options": options,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def cached_fisher_file(
    request: FisherRequest,
    cache_dir: str | os.PathLike[str] | None,
    label: str,
    *,
    progress: bool = True,
) -> Path:
    """Path of the Fisher file for ``request``: reused from ``cache_dir`` or collected into it.

    ``label`` names the file's role (``harm``, ``benign``, a model name) in the file name;
    ``cache_dir=None`` is ``<cache root>/fisher``. Every input error is an :class:`SSTError`
    raised before collection starts; the file is written atomically by the collector, once
    (under its lock: a concurrent caller waits for it); ``progress``: the collector's
    progress bars.
    """
    from sst_merge_plugin.fisher.collect import collect_fisher_file

    folder = Path(cache_dir).expanduser() if cache_dir is not None else cache_root() / "fisher"
    key = content_key(request)
    path = folder / f"{label}-{request.objective}-{request.kind}-{key[:24]}.safetensors"

    def collect(entry: Path) -> None:
        log.info("Fisher file %s: collecting into %s", label, entry)
        collect_fisher_file(request, entry, progress=progress)

    if not make_once(path, collect, Path.is_file):
        log.info("Fisher file %s: reusing %s", label, path)
    return path
