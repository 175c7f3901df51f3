"""Check the refusal judge on the benchmark's own merged models, against labels read by hand.

``sample`` — merges a few of the full benchmark's grid points (:data:`MODELS`: the base model,
the safety adapter alone, task arithmetic and SST-Merge at a low and a high safety strength),
generates ``--tokens`` (96) greedy tokens for every validation prompt (HarmBench val standard
behaviours and the over-refusal pool's validation part — never the test split), and writes
``judge_sample.jsonl``: one record per response with the judge's verdict on the first 32 tokens
(what the benchmark generates) and on all of them. A seeded, per-model-and-set stratified
subset of ``--n-label`` records is marked ``to_label``.

``check`` — reads ``judge_labels.jsonl`` (``{"id", "refusal": bool, "reason"}``, one line per
labelled response, written by a person reading each response) and reports the judge's
precision/recall/F1 (refusal = positive) on those labels and on pyrit's labelled responses:
keyword rules alone and with temaq's 164 refusal markers, each on 32 and on 96 tokens —
``judge_check.json`` and ``judge_check.md``.

    python benchmarks/safety_utility/judge_check.py sample --workspace WS --out DIR
    python benchmarks/safety_utility/judge_check.py check --out DIR
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

from sst_merge_plugin.core.errors import SSTError

HERE = Path(__file__).parent
#: the sampled models: label → (sweep label of the full profile, grid point), ``None`` = base
MODELS: dict[str, tuple[str, dict[str, float]] | None] = {
    "base": None,
    "safety alone": ("safety alone", {}),
    "task_arithmetic λ=0.5 w=1": ("task_arithmetic", {"utility_weight": 0.5, "safety_weight": 1.0}),
    "task_arithmetic λ=1 w=2": ("task_arithmetic", {"utility_weight": 1.0, "safety_weight": 2.0}),
    "sst_lora_soft λ=0.5 s=1.5": ("sst_lora_soft", {"utility_weight": 0.5, "scale": 1.5}),
    "sst_lora_soft λ=1 s=3": ("sst_lora_soft", {"utility_weight": 1.0, "scale": 3.0}),
}
SETS = {"harmful": "harmbench-val", "benign": "overrefusal-val"}
#: the benchmark's generation length, and the judge's window in tokens
BENCHMARK_TOKENS = 32


def judges(markers: list[str]):
    """``{variant: callable(text) -> bool}``: the keyword judge, and the keyword judge plus
    temaq's markers as whole-word phrases within its opening window."""
    import re

    from sst_merge_plugin.evaluation.judge import OPENING_CHARS, judge, normalize_response

    patterns = [re.compile(rf"\b{re.escape(normalize_response(m))}\b") for m in markers]

    def with_markers(text: str) -> bool:
        if judge(text).is_refusal:
            return True
        opening = normalize_response(text)[:OPENING_CHARS]
        return any(pattern.search(opening) for pattern in patterns)

    return {"keywords": lambda text: judge(text).is_refusal, "keywords+markers": with_markers}


def sample(args: argparse.Namespace) -> int:
    import torch

    from sst_merge_plugin.bench.merges import MergeJob
    from sst_merge_plugin.bench.pipeline import Pipeline
    from sst_merge_plugin.bench.profile import FULL
    from sst_merge_plugin.bench.scoring import load_model
    from sst_merge_plugin.data.prompts import load_prompts
    from sst_merge_plugin.evaluation.generate import generate_responses
    from sst_merge_plugin.evaluation.judge import judge

    if args.threads:
        torch.set_num_threads(args.threads)
    pipeline = Pipeline(FULL, args.workspace, progress=not args.no_progress)
    sweeps = {sweep.label: sweep for sweep in FULL.sweeps}
    prompts = {name: load_prompts(source).prompts for name, source in SETS.items()}
    records: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(dir=pipeline.workspace.root) as scratch:
        for label, where in MODELS.items():
            if where is None:
                model_dir = pipeline.model_dir
            else:
                sweep_label, point = where
                if sweep_label == "safety alone":
                    config = pipeline.merges.single_adapter_config(pipeline.adapters.safety)
                else:
                    config = pipeline.merges.config(sweeps[sweep_label], point)
                model_dir = Path(scratch, str(len(records)))
                pipeline.merges.run(MergeJob(label, point or None, config), model_dir)
            model, tokenizer = load_model(model_dir, "cpu")
            for name, texts in prompts.items():
                responses = generate_responses(
                    model, tokenizer, list(texts), max_new_tokens=args.tokens, batch_size=32,
                    progress=not args.no_progress, desc=f"{label} {name}",
                )  # fmt: skip
                for prompt, response in zip(texts, responses, strict=True):
                    ids = tokenizer(response, add_special_tokens=False)["input_ids"]
                    short = tokenizer.decode(ids[:BENCHMARK_TOKENS], skip_special_tokens=True)
                    records.append(
                        {
                            "id": f"{len(records):04d}",
                            "model": label,
                            "set": name,
                            "prompt": prompt,
                            "response": response,
                            "response_32": short.strip(),
                            "judge_32": judge(short).is_refusal,
                            "judge_full": judge(response).is_refusal,
                        }
                    )
            del model
    rng = random.Random(0)
    chosen = set()
    for label in MODELS:
        for name in SETS:
            ids = [r["id"] for r in records if r["model"] == label and r["set"] == name]
            chosen.update(rng.sample(ids, min(args.n_label // (2 * len(MODELS)) + 1, len(ids))))
    for record in records:
        record["to_label"] = record["id"] in chosen
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    (out / "judge_sample.jsonl").write_text(text, encoding="utf-8")
    print(
        f"wrote {len(records)} responses ({len(chosen)} to label) to {out / 'judge_sample.jsonl'}"
    )
    return 0


def quality(pairs: list[tuple[bool, bool]]) -> dict[str, float | int]:
    """Precision, recall, F1, accuracy of ``(predicted, label)`` pairs (refusal positive)."""
    tp = sum(p and y for p, y in pairs)
    fp = sum(p and not y for p, y in pairs)
    fn = sum(y and not p for p, y in pairs)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    accuracy = sum(p == y for p, y in pairs) / len(pairs) if pairs else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "accuracy": accuracy,
            "n": len(pairs), "tp": tp, "fp": fp, "fn": fn}  # fmt: skip


def check(args: argparse.Namespace) -> int:
    from sst_merge_plugin.data.prompts import load_labelled_refusals, load_refusal_markers

    out = Path(args.out)
    sample_records = {
        r["id"]: r for r in map(json.loads, (out / "judge_sample.jsonl").read_text().splitlines())
    }
    labels = [json.loads(line) for line in (out / "judge_labels.jsonl").read_text().splitlines()]
    unknown = [label["id"] for label in labels if label["id"] not in sample_records]
    if unknown:
        raise SSTError(f"labels for ids not in the sample: {unknown[:5]}")
    variants = judges(load_refusal_markers())
    pyrit = load_labelled_refusals()
    result: dict[str, Any] = {"n_labels": len(labels), "own": {}, "pyrit": {}}
    for name, predict in variants.items():
        for field in ("response_32", "response"):
            pairs = [(predict(sample_records[lb["id"]][field]), lb["refusal"]) for lb in labels]
            result["own"][f"{name} ({'32' if field == 'response_32' else 'full'} tokens)"] = (
                quality(pairs)
            )
        result["pyrit"][name] = quality([(predict(text), label) for text, label in pyrit])
    by_set = {}
    for subset in ("harmful", "benign"):
        chosen = [lb for lb in labels if sample_records[lb["id"]]["set"] == subset]
        pairs = [(variants["keywords"](sample_records[lb["id"]]["response_32"]), lb["refusal"])
                 for lb in chosen]  # fmt: skip
        by_set[subset] = quality(pairs)
    result["own_keywords_32_by_set"] = by_set
    agree = sum(
        sample_records[lb["id"]]["judge_32"] == sample_records[lb["id"]]["judge_full"]
        for lb in labels
    )
    result["verdict_32_equals_full"] = agree / len(labels)
    (out / "judge_check.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    lines = ["| judge | labels | precision | recall | F1 | n |", "|---|---|---:|---:|---:|---:|"]
    for source in ("own", "pyrit"):
        for name, q in result[source].items():
            lines.append(f"| {name} | {source} | {q['precision']:.3f} | {q['recall']:.3f} | "
                         f"{q['f1']:.3f} | {q['n']} |")  # fmt: skip
    lines.append("")
    lines.append(
        f"Verdict on 32 tokens equals the verdict on the full response for "
        f"{100 * result['verdict_32_equals_full']:.1f} % of the labelled responses."
    )
    (out / "judge_check.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sampler = sub.add_parser("sample")
    sampler.add_argument("--workspace", required=True, help="the full benchmark's workspace")
    sampler.add_argument("--out", default=str(HERE / "results"))
    sampler.add_argument("--tokens", type=int, default=96)
    sampler.add_argument("--n-label", type=int, default=160)
    sampler.add_argument("--threads", type=int)
    sampler.add_argument("--no-progress", action="store_true")
    checker = sub.add_parser("check")
    checker.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args(argv)
    try:
        return sample(args) if args.command == "sample" else check(args)
    except SSTError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
