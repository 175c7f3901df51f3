"""Cost of the SST projection per LLM layer shape, against the SVD that TSV-style merges compute.

For each weight shape (default: the Llama/Mistral-7B shapes 4096×4096, 4096×14336, 14336×4096)
the parent process builds random SPD harm/benign Fisher factors (diagonal + low-rank with a
decaying spectrum, float32), a rank-16 patch, and the restricted ``lora`` and ``diag`` Fishers,
saves them once, and then times every method, each measurement in a FRESH child process (its own
clean peak-RSS reading, its own thread count):

* ``svd``        — ``torch.linalg.svd(ΔW, full_matrices=False)`` of the dense patch (the reference)
* ``kfac_dense`` — ``project_patch`` kind kfac, ``select: ratio`` (τ = 1), dense float64 solver
                   (torch.linalg.eigh of the whitened factors: the full spectrum)
* ``kfac_topk``  — ``project_patch`` kind kfac, ``select: top_k`` (k=16, Krylov solver)
* ``lora``       — ``project_patch`` kind lora (r=16), ``select: ratio``
* ``diag``       — ``project_patch`` kind diag, ``select: ratio``

Each child loads its inputs, runs the method once untimed on a 256-square block (one-off library
initialisation, paid once per merge, stays out), then times one projection (fresh GEVP cache)
and reports the wall and CPU seconds and the peak RSS above the loaded inputs.

The measurements are interleaved (``_common.interleaved``): ``--rounds`` rounds, each running
every (thread count, method) pair once in the same round-robin order, so load from other jobs
that comes and goes is spread over all methods instead of landing on one. Per thread count and
method the script reports the median seconds and the median over rounds of
``seconds / seconds(svd, same round, same thread count)`` (``_common.summarise_rounds``), for
wall time (``seconds``, ``ratio``; the figures the targets apply to) and for process CPU time
(``cpu_seconds``, ``cpu_ratio``; at one thread the figure least moved by other jobs). The load
average (1, 5, 15 min) after every round goes into the JSON. ``kfac_dense`` is skipped above
``--dense-max-dim`` (a full eigh of a 14336² factor takes minutes on 2 cores).

    python benchmarks/gevp_cost.py                       # all three LLM shapes, 1 and 2 threads
    python benchmarks/gevp_cost.py --shapes 4096x4096 --threads 1 2 --rounds 3 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import (
    PROJECTION_METHODS,
    RANK,
    build_inputs,
    interleaved,
    measure_projection,
    parse_shape,
    summarise_rounds,
    thread_environment,
)

METHODS = PROJECTION_METHODS
#: targets on the ratio to the SVD's time
TARGETS = {"lora": 0.05, "kfac_topk": 1.0}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_child(method: str, path: Path, device: str) -> dict[str, float]:
    """Load what ``method`` needs, warm up, then time it once: wall and CPU seconds, extra
    peak RSS."""
    result = measure_projection(method, path, 1, device, warmup=True)
    return {key: result[key] for key in ("seconds", "cpu_seconds", "peak_extra_mb")}


def measure_in_child(method: str, path: Path, threads: int, device: str) -> dict[str, float]:
    """:func:`run_child` in a fresh interpreter limited to ``threads`` threads."""
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", method, str(path),
         "--threads", str(threads), "--device", device],
        check=True, capture_output=True, text=True, env=thread_environment(threads),
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def shape_rows(
    shape: tuple[int, int], path: Path, args: argparse.Namespace, loads: list[dict]
) -> list[dict[str, object]]:
    """Interleaved rounds over every (threads, method) of one shape; one row per pair."""
    methods = [
        m for m in args.methods if not (m == "kfac_dense" and max(shape) > args.dense_max_dim)
    ]
    keys = [(threads, method) for threads in args.threads for method in methods]
    label = f"{shape[0]}x{shape[1]}"

    def measure(key: tuple[int, str], round_index: int) -> dict[str, float]:
        return measure_in_child(key[1], path, key[0], args.device)

    def report(round_index: int, results: dict[tuple[int, str], dict[str, float]]) -> None:
        loads.append({"shape": label, "round": round_index + 1, "load_average": os.getloadavg()})
        times = ", ".join(f"{m}@{t} {r['seconds']:.3g}s" for (t, m), r in results.items())
        log(f"# {label} round {round_index + 1}: {times}; load average {os.getloadavg()}")

    results = interleaved(keys, args.rounds, measure, report)
    rows = []
    reference = "svd" if "svd" in methods else None
    for threads in args.threads:
        measured = {method: results[(threads, method)] for method in methods}
        summary = summarise_rounds(measured, reference, clocks=("", "cpu_"))
        for method, records in measured.items():
            peak = max(record["peak_extra_mb"] for record in records)
            rows.append({"shape": label, "threads": threads, "method": method,
                         **summary[method], "peak_extra_mb": peak})  # fmt: skip
        if "kfac_dense" in args.methods and "kfac_dense" not in methods:
            rows.append({"shape": label, "threads": threads, "method": "kfac_dense",
                         "skipped": f"dim > --dense-max-dim {args.dense_max_dim}"})  # fmt: skip
    return rows


def markdown(rows: list[dict[str, object]], rounds: int, device: str) -> str:
    lines = [
        f"\nGEVP/projection cost vs torch.linalg.svd of the same ΔW (rank-{RANK} patch, device "
        f"{device}; median of {rounds} interleaved rounds, ratio = median over rounds of "
        "seconds / SVD seconds of the same round)\n",
        "| shape | threads | method | median s | × SVD | per-round × SVD | × SVD (CPU time) "
        "| peak extra RSS MiB |",
        "|---|---:|---|---:|---:|---|---:|---:|",
    ]
    for row in rows:
        head = f"| {row['shape']} | {row['threads']} | {row['method']} |"
        if "skipped" in row:
            lines.append(f"{head} skipped ({row['skipped']}) | | | | |")
            continue
        ratio, per_round, cpu_ratio = "", "", ""
        if row["ratio"] is not None:
            ratio, cpu_ratio = f"{row['ratio']:.3g}", f"{row['cpu_ratio']:.3g}"
            per_round = ", ".join(f"{r:.3g}" for r in row["all_ratios"])
        lines.append(
            f"{head} {row['seconds']:.3g} | {ratio} | {per_round} | {cpu_ratio} | "
            f"{row['peak_extra_mb']:.0f} |"
        )
    checks = [
        f"{row['method']} at {row['threads']} thread(s): {row['ratio']:.3g}× "
        f"({'ok' if row['ratio'] <= TARGETS[row['method']] else 'MISSED'})"
        for row in rows
        if row["method"] in TARGETS and row.get("ratio") is not None
    ]
    lines.append("\ntargets: lora ≤ 0.05× SVD time; kfac_topk ≤ 1× SVD time")
    lines += [f"  {check}" for check in checks]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", type=parse_shape,
                        default=[(4096, 4096), (4096, 14336), (14336, 4096)])  # fmt: skip
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2],
                        help="thread counts to measure (each in every round)")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument("--dense-max-dim", type=int, default=4096)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "INPUTS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds < 1 or min(args.threads) < 1:
        parser.error("--rounds and --threads must be >= 1")
    if args.child:
        torch.set_num_threads(args.threads[0])
        print(json.dumps(run_child(args.child[0], Path(args.child[1]), args.device)))
        return 0

    started = time.perf_counter()
    rows: list[dict[str, object]] = []
    loads: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="sst-gevp-") as tmp:
        for d_out, d_in in args.shapes:
            path = Path(tmp) / f"{d_out}x{d_in}.safetensors"
            start = time.perf_counter()
            build_inputs(d_out, d_in, path, args.seed)
            log(f"# {d_out}x{d_in}: inputs built in {time.perf_counter() - start:.1f}s")
            rows += shape_rows((d_out, d_in), path, args, loads)
            path.unlink()
    print(markdown(rows, args.rounds, args.device))
    if args.json:
        result = {
            "settings": {
                "shapes": [f"{d_out}x{d_in}" for d_out, d_in in args.shapes],
                "methods": args.methods,
                "threads": args.threads,
                "rounds": args.rounds,
                "dense_max_dim": args.dense_max_dim,
                "device": args.device,
                "seed": args.seed,
                "rank": RANK,
            },
            "environment": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "cpu_count": os.cpu_count(),
                "load_average_per_round": loads,
            },
            "rows": rows,
            "wall_seconds": time.perf_counter() - started,
        }
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
