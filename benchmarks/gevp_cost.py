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
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

METHODS = ("svd", "kfac_dense", "kfac_topk", "lora", "diag")
RANK = 16
LOW_RANK_FACTOR = 256  # rank of the low-rank part of the synthetic Fisher factors


def spd_factor(dim: int, generator: torch.Generator) -> torch.Tensor:
    """``D + Y Yᵀ``: a positive diagonal plus a low-rank part with power-law column scales."""
    width = min(LOW_RANK_FACTOR, dim)
    scales = torch.arange(1, width + 1, dtype=torch.float32) ** -0.75
    y = torch.randn(dim, width, generator=generator) * scales
    diag = torch.rand(dim, generator=generator) * 0.05 + 0.01
    return y @ y.T + torch.diag(diag)


def build_inputs(d_out: int, d_in: int, path: Path, seed: int) -> None:
    """Factors, patch and restricted Fishers for one shape, saved as one safetensors file."""
    g = torch.Generator().manual_seed(seed)
    lora_b = torch.randn(d_out, RANK, generator=g) / RANK**0.5
    lora_a = torch.randn(RANK, d_in, generator=g) / d_in**0.5
    tensors = {"lora_B": lora_b, "lora_A": lora_a}
    u = torch.linalg.qr(lora_b).Q
    v = torch.linalg.qr(lora_a.T).Q
    tensors.update(U=u.contiguous(), V=v.contiguous())
    for side in ("harm", "benign"):
        a, gg = spd_factor(d_in, g), spd_factor(d_out, g)
        tensors[f"{side}_A"], tensors[f"{side}_G"] = a, gg
        tensors[f"{side}_A_r"] = (v.T @ a @ v).contiguous()
        tensors[f"{side}_G_r"] = (u.T @ gg @ u).contiguous()
        tensors[f"{side}_A_trace"] = torch.trace(a).reshape(())
        tensors[f"{side}_G_trace"] = torch.trace(gg).reshape(())
        tensors[f"{side}_diag"] = torch.rand(d_out, d_in, generator=g) ** 2
    save_file(tensors, str(path))


def rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def run_child(method: str, path: Path, repeats: int, device: str) -> dict[str, float]:
    """Load what ``method`` needs, then time it; returns seconds and extra peak RSS."""
    from sst_merge_plugin.core import DiagFisher, KFACFisher, LoRAFisher, Selection, project_patch
    from sst_merge_plugin.core.gevp import GEVPCache

    needs = {
        "svd": [],
        "kfac_dense": ["A", "G"],
        "kfac_topk": ["A", "G"],
        "lora": ["A_r", "G_r", "A_trace", "G_trace"],
        "diag": ["diag"],
    }[method]
    with safe_open(str(path), framework="pt", device=device) as handle:
        patch = handle.get_tensor("lora_B") @ handle.get_tensor("lora_A")
        loaded = {
            f"{side}_{key}": handle.get_tensor(f"{side}_{key}")
            for side in ("harm", "benign")
            for key in needs
        }
        u, v = handle.get_tensor("U"), handle.get_tensor("V")

    def fisher(side: str):
        if method.startswith("kfac"):
            return KFACFisher(loaded[f"{side}_A"], loaded[f"{side}_G"])
        if method == "lora":
            return LoRAFisher(
                u, v, loaded[f"{side}_A_r"], loaded[f"{side}_G_r"],
                A_trace=float(loaded[f"{side}_A_trace"]), G_trace=float(loaded[f"{side}_G_trace"]),
            )  # fmt: skip
        return DiagFisher(loaded[f"{side}_diag"])

    if method == "svd":
        task = lambda: torch.linalg.svd(patch, full_matrices=False)  # noqa: E731
    else:
        harm, benign = fisher("harm"), fisher("benign")
        if method == "kfac_topk":
            selection, solver = Selection.create("top_k", k=RANK), "krylov"
        else:
            selection, solver = Selection.create("ratio", ratio=1.0), "dense"
        task = lambda: project_patch(  # noqa: E731
            patch, harm, benign, selection, solver=solver, cache=GEVPCache()
        )
    baseline = current_rss_mb()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        task()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return {"seconds": statistics.median(times), "peak_extra_mb": max(0.0, rss_mb() - baseline)}


def parse_shape(text: str) -> tuple[int, int]:
    try:
        d_out, d_in = (int(part) for part in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"shape must look like 4096x14336, got {text!r}") from exc
    return d_out, d_in


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
