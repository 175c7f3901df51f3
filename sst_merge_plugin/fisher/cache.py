"""Fisher files collected like ``sst-merge fisher`` and cached by content (FusionBench runs, benchmarks).

When a caller names data instead of Fisher files (a FusionBench ``fisher_collection``, the benchmark pipeline),
:func:`cached_fisher_file` returns the path of a Fisher file collected with exactly the
``sst-merge fisher`` command (:mod:`sst_merge_plugin.fisher.cli`: same validation, data split
and subset, collection, metadata, atomic write), run in-process with options built from the
config. Files are kept in a cache folder and reused when the *content key* matches:

    sha256 of JSON { model_fingerprint of the model folder,
                     sha256 of the adapter files (--adapter, --restrict-to),
                     sha256 of the selected data items (after --split / --max-examples),
                     objective, kind, every other collection option except --device }

so a changed checkpoint, adapter, prompt file or option gives a new file, and the same inputs
on another machine give the same name. The file is ``<cache>/<label>-<objective>-<kind>-<key
prefix>.safetensors``; the default cache is ``<sst-merge cache root>/fisher``
(:func:`sst_merge_plugin.data.assets.cache_root`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from sst_merge_plugin.core.errors import SSTError
from sst_merge_plugin.data.assets import cache_root, sha256_file
from sst_merge_plugin.fisher.fingerprint import checkpoint_fingerprint

log = logging.getLogger(__name__)

#: ``sst-merge fisher`` options a config may set (``max_examples`` → ``--max-examples``)
OPTIONS = (
    "field",
    "targets",
    "max_examples",
    "batch_size",
    "max_length",
    "response_tokens",
    "seed",
    "split",
    "device",
)
#: options that do not change the collected statistics (left out of the content key)
NOT_IN_KEY = ("device",)
#: files of a PEFT adapter folder that determine its weights
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


class _Parser(argparse.ArgumentParser):
    """``sst-merge fisher``'s parser, raising :class:`SSTError` instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise SSTError(f"Fisher collection: {message}")


@dataclass(frozen=True)
class FisherRequest:
    """One Fisher file to collect: ``sst-merge fisher`` with these arguments.

    ``label`` names the file's role (``harm``, ``benign``, a model name) in the file name and
    in error messages; ``options`` holds values for :data:`OPTIONS`.
    """

    label: str
    model_dir: str
    data: str
    objective: str
    kind: str
    adapter: str | None = None
    restrict_to: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    def argv(self, out: str | os.PathLike[str]) -> list[str]:
        """The ``sst-merge fisher`` command line (without the program name)."""
        unknown = sorted(set(self.options) - set(OPTIONS))
        if unknown:
            raise SSTError(
                f"fisher_collection: unknown option(s) {unknown}; allowed: {', '.join(OPTIONS)}"
            )
        argv = ["--model", self.model_dir, "--data", self.data, "--objective", self.objective]
        argv += ["--kind", self.kind, "--out", str(out)]
        if self.adapter is not None:
            argv += ["--adapter", self.adapter]
        if self.restrict_to is not None:
            argv += ["--restrict-to", self.restrict_to]
        for key, value in sorted(self.options.items()):
            if value is not None:
                argv += [f"--{key.replace('_', '-')}", str(value)]
        return argv


def parse_request(request: FisherRequest, out: str | os.PathLike[str]) -> argparse.Namespace:
    """The request as ``sst-merge fisher`` arguments, validated by that command's own parser."""
    from sst_merge_plugin.fisher import cli

    parser = _Parser(prog=f"fisher_collection ({request.label})")
    cli.add_arguments(parser)
    return parser.parse_args(request.argv(out))


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


def content_key(request: FisherRequest) -> str:
    """The hex content key of ``request`` (module doc); reads the data, not the model weights."""
    from sst_merge_plugin.fisher import cli

    args = parse_request(request, os.devnull)
    items, _ = cli.load_data(args)
    payload = {
        "model_fingerprint": checkpoint_fingerprint(request.model_dir),
        "adapter": _adapter_digest(request.adapter),
        "restrict_to": _adapter_digest(request.restrict_to),
        "data": hashlib.sha256(json.dumps(items, sort_keys=True).encode()).hexdigest(),
        "objective": request.objective,
        "kind": request.kind,
        "options": {
            key: getattr(args, key)
            for key in OPTIONS
            if key not in NOT_IN_KEY and getattr(args, key) is not None
        },
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def cached_fisher_file(request: FisherRequest, cache_dir: str | os.PathLike[str] | None) -> Path:
    """Path of the Fisher file for ``request``: reused from ``cache_dir`` or collected into it.

    ``cache_dir=None`` is ``<cache root>/fisher``. Every input error is an :class:`SSTError`
    raised before collection starts; the file is written atomically by the collector.
    """
    from sst_merge_plugin.fisher import cli

    folder = Path(cache_dir).expanduser() if cache_dir is not None else cache_root() / "fisher"
    key = content_key(request)
    path = folder / f"{request.label}-{request.objective}-{request.kind}-{key[:24]}.safetensors"
    if path.is_file():
        log.info("Fisher file %s: reusing %s", request.label, path)
        return path
    folder.mkdir(parents=True, exist_ok=True)
    log.info("Fisher file %s: collecting into %s", request.label, path)
    cli.run(parse_request(request, path))
    return path
