"""Cost of Fisher collection on the real SmolLM2-135M-Instruct, against a plain forward+backward.

Side by side in ONE process, on the same tokenized batches (``--examples`` AdvBench training
prompts with their refusal targets, ``--batch-size``, ``--max-length``), interleaved over
``--repeats`` rounds (median wall time per method):

* ``fwd+bwd``        — the reference: a plain training-style forward + backward of the summed
                       response NLL, parameters requiring grad (weight gradients computed)
* ``fwd+bwd frozen`` — the same with frozen parameters (activation gradients only): what a
                       collection pass costs without its hooks (for reading the numbers)
* ``diag`` / ``kfac`` / ``lora`` — :func:`~sst_merge_plugin.fisher.collect.accumulate_statistics`
                       over the same batches (hooks, padding masks, float64 accumulation).
                       ``lora`` uses a random rank-``--rank`` subspace on every targeted weight
                       (its cost depends on the shapes only).

Ratios are medians over the rounds of ``method / fwd+bwd`` of the same round
(``_common.summarise_rounds``), for wall time and for process CPU time (on a shared machine CPU
time is the steadier one; with ``--threads 1`` it counts no spin-waiting);
the targets are ``lora``, ``kfac`` ≤ 1.3× and ``diag`` ≤ 1.5×, "ok" when both ratios meet it.
The one-off ``finalize`` (averaging + validating the containers, independent of the number of
tokens) and the file write are timed separately, and each Fisher file's size is measured.

The second table is the factor memory of a Llama-2-7B-shaped model (32 layers, hidden 4096,
MLP 11008, default targets) per kind, from the shapes of a weightless meta-device model:
``diag`` d_out·d_in, ``kfac`` d_in² + d_out² (as stored, one ``A`` per weight), ``lora``
r·(d_out + d_in) + 2r²; file size at float32, accumulators at float64. The same formulas are
shown for SmolLM2 to check them against the measured files.

    python benchmarks/fisher_cost.py                  # ~10 min on 2 CPU cores
    python benchmarks/fisher_cost.py --json fisher_cost.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from _common import (
    KINDS,
    LLAMA2_7B,
    cpu_timed,
    file_costs,
    interleaved,
    memory_row,
    model_weight_shapes,
    plain_forward_backward,
    random_subspaces,
    summarise_rounds,
)

from sst_merge_plugin.data.chat import collate
from sst_merge_plugin.data.prompts import held_out_split, load_prompts
from sst_merge_plugin.data.smollm2 import smollm2_model_dir
from sst_merge_plugin.fisher.collect import accumulate_statistics, pad_token_id
from sst_merge_plugin.fisher.objectives import prepare_data
from sst_merge_plugin.fisher.targets import find_target_layers, layer_shape

TARGET_RATIO = {"diag": 1.5, "kfac": 1.3, "lora": 1.3}


def llama2_7b_shapes() -> list[tuple[int, int]]:
    """Default-target weight shapes of a Llama-2-7B-shaped model (meta device, no weights)."""
    return list(model_weight_shapes(LLAMA2_7B).values())


def print_tables(rows: list[dict], memory: list[dict], repeats: int, rank: int) -> None:
    print(
        f"\n| method | median wall s ({repeats} runs) | × fwd+bwd (wall) | median CPU s | "
        "× fwd+bwd (CPU) | target | finalize s | write s | file MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        target = ""
        if "target" in row:
            target = f"≤ {row['target']}× {'ok' if row['meets_target'] else 'MISSED'}"
        costs = " | | "
        if "file_MiB" in row:
            costs = (
                f"{row['finalize_seconds']:.2f} | {row['write_seconds']:.2f} | "
                f"{row['file_MiB']:.1f}"
            )
        print(
            f"| {row['method']} | {row['seconds']:.2f} | {row['ratio']:.2f} | "
            f"{row['cpu_seconds']:.2f} | {row['cpu_ratio']:.2f} | {target} | {costs} |"
        )
    columns = [f"{k} file GiB (fp32)" for k in KINDS] + [f"{k} accum. GiB (fp64)" for k in KINDS]
    print("\n| model | weights | " + " | ".join(columns) + " |")
    print("|---|---|" + "---|" * len(columns))
    for row in memory:
        values = [row[f"{k}_file_GiB"] for k in KINDS] + [
            row[f"{k}_accumulators_GiB"] for k in KINDS
        ]
        cells = " | ".join(f"{value:.3g}" for value in values)
        print(f"| {row['model']} | {row['n_weights']} | {cells} |")
    print(f"(lora rank r = {rank})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rank", type=int, default=8, help="lora subspace rank")
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated subset")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    kinds = [kind for kind in args.kinds.split(",") if kind]
    if args.threads:
        torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = smollm2_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(args.device)
    model.eval()
    train, _ = held_out_split(load_prompts("advbench"))
    data = prepare_data(
        tokenizer,
        objective="refusal",
        prompts=list(train.prompts[: args.examples]),
        max_length=args.max_length,
    )
    pad_id = pad_token_id(tokenizer)
    batches = [
        {
            key: value.to(args.device)
            for key, value in collate(data.examples[i : i + args.batch_size], pad_id).items()
        }
        for i in range(0, len(data.examples), args.batch_size)
    ]
    n_tokens = sum(int(batch["attention_mask"].sum()) for batch in batches)
    subspaces = random_subspaces(model, args.rank, seed=0)
    print(
        f"SmolLM2-135M ({model_dir}), {len(data.examples)} examples, {len(batches)} batches, "
        f"{n_tokens} tokens, {torch.get_num_threads()} threads, device {args.device}"
    )

    methods: dict[str, Callable[[], object]] = {
        "fwd+bwd": lambda: plain_forward_backward(model, batches, frozen=False),
        "fwd+bwd frozen": lambda: plain_forward_backward(model, batches, frozen=True),
        **{
            kind: (
                lambda kind=kind: accumulate_statistics(
                    model, batches, kind=kind, subspaces=subspaces if kind == "lora" else None
                )
            )
            for kind in kinds
        },
    }
    last: dict[str, object] = {}

    def measure(name: str, round_index: int) -> dict[str, float]:
        seconds, cpu_seconds, value = cpu_timed(methods[name])
        if name in kinds and round_index == args.repeats - 1:
            last[name] = value  # the statistics of the last round are finalised and written
        return {"seconds": seconds, "cpu_seconds": cpu_seconds}

    def report(round_index: int, results: dict[str, dict[str, float]]) -> None:
        print(
            f"round {round_index + 1}: "
            + ", ".join(f"{n} {r['seconds']:.2f}s" for n, r in results.items())
        )

    plain_forward_backward(model, batches[:1], frozen=False)  # warm-up
    results = interleaved(list(methods), args.repeats, measure, report)
    summary = summarise_rounds(results, "fwd+bwd", clocks=("", "cpu_"))
    rows = []
    with tempfile.TemporaryDirectory(prefix="fisher_cost_") as folder:
        for name in methods:
            row = {"method": name, **summary[name]}
            if name in kinds:
                row.update(file_costs(last.pop(name), name, Path(folder), data.data_sha256))
                row.update(
                    target=TARGET_RATIO[name],
                    meets_target=max(row["ratio"], row["cpu_ratio"]) <= TARGET_RATIO[name],
                )
            rows.append(row)

    smol_shapes = [layer_shape(module) for module in find_target_layers(model).values()]
    memory = [
        memory_row("SmolLM2-135M (default targets)", smol_shapes, args.rank),
        memory_row("Llama-2-7B-shaped (default targets)", llama2_7b_shapes(), args.rank),
    ]

    print_tables(rows, memory, args.repeats, args.rank)
    if args.json:
        result = {
            "settings": {
                **vars(args),
                "json": str(args.json),
                "n_tokens": n_tokens,
                "n_batches": len(batches),
                "threads": torch.get_num_threads(),
            },
            "timings": rows,
            "memory": memory,
        }
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
