"""Cost of the SST projection per LLM layer shape, against the SVD that TSV-style merges compute.

For each weight shape (default: the Llama/Mistral-7B shapes 4096×4096, 4096×14336, 14336×4096)
the parent process builds random SPD harm/benign Fisher factors (diagonal + low-rank with a
decaying spectrum, float32), a rank-16 patch, and the restricted ``lora`` and ``diag`` Fishers,
saves them once, and then runs every method in a FRESH child process so that each gets its own
clean peak-RSS reading:

* ``svd``        — ``torch.linalg.svd(ΔW, full_matrices=False)`` of the dense patch (the reference)
* ``kfac_dense`` — ``project_patch`` kind kfac, ``select: ratio`` (full spectrum, dense float64)
* ``kfac_topk``  — ``project_patch`` kind kfac, ``select: top_k`` (k=16, Krylov solver)
* ``lora``       — ``project_patch`` kind lora (r=16), ``select: ratio``
* ``diag``       — ``project_patch`` kind diag, ``select: ratio``

Each child loads its inputs, records its RSS, runs the method ``--repeats`` times (median wall
time, fresh GEVP cache each time) and reports the peak RSS above the loaded inputs. Ratios are
taken against the SVD timed in the same run. The dense kfac solver is skipped above
``--dense-max-dim`` (a float64 ``eigh`` of a 14336² factor takes many minutes on 2 cores).

    python benchmarks/gevp_cost.py                       # all three LLM shapes
    python benchmarks/gevp_cost.py --shapes 1024x2048 --json out.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import PROJECTION_METHODS, RANK, build_inputs, measure_projection, parse_shape

METHODS = PROJECTION_METHODS


def run_child(method: str, path: Path, repeats: int, device: str) -> dict[str, float]:
    """Load what ``method`` needs, then time it; returns seconds and extra peak RSS."""
    result = measure_projection(method, path, repeats, device)
    return {"seconds": result["seconds"], "peak_extra_mb": result["peak_extra_mb"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", type=parse_shape,
                        default=[(4096, 4096), (4096, 14336), (14336, 4096)])  # fmt: skip
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--dense-max-dim", type=int, default=4096)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "INPUTS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_child(args.child[0], Path(args.child[1]), args.repeats, args.device)))
        return 0

    rows = []
    with tempfile.TemporaryDirectory(prefix="sst-gevp-") as tmp:
        for d_out, d_in in args.shapes:
            path = Path(tmp) / f"{d_out}x{d_in}.safetensors"
            start = time.perf_counter()
            build_inputs(d_out, d_in, path, args.seed)
            print(f"# {d_out}x{d_in}: inputs built in {time.perf_counter() - start:.1f}s",
                  file=sys.stderr, flush=True)  # fmt: skip
            results: dict[str, dict[str, float] | None] = {}
            for method in args.methods:
                if method == "kfac_dense" and max(d_out, d_in) > args.dense_max_dim:
                    results[method] = None
                    continue
                out = subprocess.run(
                    [sys.executable, __file__, "--child", method, str(path),
                     "--repeats", str(args.repeats), "--device", args.device],
                    check=True, capture_output=True, text=True,
                )  # fmt: skip
                results[method] = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"#   {method}: {results[method]}", file=sys.stderr, flush=True)
            svd = results.get("svd")
            for method, res in results.items():
                rows.append({
                    "shape": f"{d_out}x{d_in}",
                    "method": method,
                    "seconds": None if res is None else res["seconds"],
                    "ratio_to_svd": None if res is None or not svd else res["seconds"] / svd["seconds"],
                    "peak_extra_mb": None if res is None else res["peak_extra_mb"],
                })  # fmt: skip
    print(f"\nGEVP/projection cost vs torch.linalg.svd of the same ΔW (rank-{RANK} patch, "
          f"device {args.device}, median of {args.repeats})\n")  # fmt: skip
    print("| shape | method | seconds | × SVD time | peak extra RSS (MiB) |")
    print("|---|---|---:|---:|---:|")
    for row in rows:
        if row["seconds"] is None:
            print(f"| {row['shape']} | {row['method']} | skipped (dim > --dense-max-dim) | | |")
            continue
        ratio = "" if row["ratio_to_svd"] is None else f"{row['ratio_to_svd']:.4f}"
        print(f"| {row['shape']} | {row['method']} | {row['seconds']:.3f} | {ratio} | "
              f"{row['peak_extra_mb']:.0f} |")  # fmt: skip
    print("\ntargets: lora ≤ 0.05× SVD time; kfac_topk ≤ 1× SVD time")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
