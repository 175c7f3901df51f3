"""Cost of ``mergekit-yaml`` with ``sst_merge`` (each Fisher kind) against mergekit's ``ties``.

Setup (not timed): a SmolLM2-135M-shaped model — the converted SmolLM2 folder when it exists
(``sst_merge_plugin.data.smollm2.smollm2_location()``), else a random Llama with its shapes
(30 layers, hidden 576, MLP 1536, 9 heads / 3 KV heads, vocab 49152, tied embeddings) — three
random rank-8 LoRA adapters on all 7 projections (one safety, two utility; ``A`` and ``B``
non-zero), the adapters merged once into a shared ``--lora-merge-cache``, and synthetic Fisher
files of the right shapes for every projection (``lora``: the safety adapter's column/row
spaces and random SPD 8×8 factors; ``kfac``: random SPD factors, ``A`` shared by q/k/v and by
gate/up as in a real collection; ``diag``: random positive).

Timed: each merge in a fresh ``mergekit-yaml`` subprocess, started from a fresh wrapper process
so its peak RSS (``ru_maxrss`` of the one child) and CPU time (user + system) are its own.
``ties`` merges the three adapters; ``sst_merge`` projects the safety adapter and merges the two
utility adapters with ``ties`` (same densities). The runs are interleaved over ``--repeats``
rounds (``_common.interleaved``: every method once per round, in the same order), and each
ratio is the median over rounds of ``method / ties`` of the same round
(``_common.summarise_rounds``), for wall and for CPU time, so load from other jobs that comes
and goes does not land on one method; the load average after each round is reported.
``--baseline-tree DIR`` also times the ``sst_merge`` runs with the plugin imported from
``DIR`` (a checkout of another commit, e.g. ``git worktree add DIR main``), in the same
rounds; ``--threads 1 2`` runs every merge at each thread count (OpenMP, MKL and OpenBLAS
pools), also in the same rounds, each ratio against ``ties`` at its own thread count. The Python start-up cost of the ``.pth`` hook is measured too (``python -X importtime``
of ``sst_merge_plugin._autoload``, and ``python -c pass`` with and without
``SST_MERGE_NO_AUTOLOAD``).

    python benchmarks/merge_cost.py                 # markdown table
    python benchmarks/merge_cost.py --kinds lora --repeats 3 --json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from _common import (
    SMOLLM2_135M,
    input_group,
    interleaved,
    summarise_rounds,
    thread_environment,
)

RANK = 8
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
KINDS = ("lora", "diag", "kfac")
MEASURE = r"""
import json, resource, subprocess, sys, time
start = time.perf_counter()
code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
wall = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": code.returncode, "seconds": wall,
                  "cpu_seconds": usage.ru_utime + usage.ru_stime,
                  "peak_rss_mb": usage.ru_maxrss / 1024,
                  "stderr": code.stderr[-2000:] if code.returncode else ""}))
"""


def base_model_dir(workdir: Path) -> tuple[Path, str]:
    """The SmolLM2 folder if converted already, else a saved random model with its shapes."""
    from sst_merge_plugin.data.smollm2 import conversion_record, smollm2_location

    real = smollm2_location()
    if conversion_record(real):
        return real, "SmolLM2-135M-Instruct (converted folder)"
    target = workdir / "smollm2_shaped"
    if not (target / "config.json").is_file():
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(**SMOLLM2_135M)
        torch.manual_seed(0)
        LlamaForCausalLM(config).save_pretrained(str(target), safe_serialization=True)
    return target, "random Llama with SmolLM2-135M shapes"


def make_adapter(base: Path, path: Path, seed: int) -> None:
    if (path / "adapter_model.safetensors").is_file():
        return
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    model = get_peft_model(
        model, LoraConfig(r=RANK, lora_alpha=2 * RANK, target_modules=list(TARGETS))
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(0.02 * torch.randn(param.shape, generator=generator))
    model.save_pretrained(str(path))


def adapter_factors(adapter: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Weight name → ``(B, A)`` of a saved PEFT adapter."""
    from safetensors.torch import load_file

    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    out = {}
    for key, a in tensors.items():
        if key.endswith("lora_A.weight"):
            module = key[len("base_model.model.") : -len(".lora_A.weight")]
            out[f"{module}.weight"] = (tensors[key.replace("lora_A", "lora_B")], a)
    return out


def spd(dim: int, generator: torch.Generator) -> torch.Tensor:
    x = torch.randn(dim, 2 * dim if dim <= 64 else 64, generator=generator)
    return x @ x.T / x.shape[1] + 1e-3 * torch.eye(dim)


def write_fishers(kind: str, safety: Path, folder: Path) -> tuple[Path, Path]:
    from sst_merge_plugin.core import DiagFisher, KFACFisher, LoRAFisher
    from sst_merge_plugin.fisher.file import FisherMetadata, write_fisher_file

    paths = (folder / f"{kind}_harm.safetensors", folder / f"{kind}_benign.safetensors")
    if all(p.is_file() for p in paths):
        return paths
    factors = adapter_factors(safety)
    for index, (path, objective) in enumerate(zip(paths, ("refusal", "kl"), strict=True)):
        generator = torch.Generator().manual_seed(100 + index)
        fishers, shared = {}, {}
        for name, (b, a) in sorted(factors.items()):
            d_out, d_in = b.shape[0], a.shape[1]
            if kind == "lora":
                u, v = torch.linalg.qr(b.double()).Q, torch.linalg.qr(a.double().T).Q
                fishers[name] = LoRAFisher(u, v, spd(RANK, generator), spd(RANK, generator))
            elif kind == "diag":
                fishers[name] = DiagFisher(torch.rand(d_out, d_in, generator=generator) + 1e-3)
            else:
                group = input_group(name)
                if group not in shared:
                    shared[group] = spd(d_in, generator)
                fishers[name] = KFACFisher(shared[group], spd(d_out, generator))
        write_fisher_file(path, fishers, FisherMetadata(kind, objective, 1000, 100, "0" * 64))
    return paths


def config_for(
    method: str, base: Path, adapters: dict[str, Path], fishers: tuple[Path, Path] | None
) -> dict:
    models = []
    for role, adapter in adapters.items():
        params = {"weight": 1.0, "density": 0.5}
        if method == "sst_merge" and role == "safety":
            params = {"role": "safety"}
        models.append({"model": f"{base}+{adapter}", "parameters": params})
    config = {"merge_method": method, "base_model": str(base), "dtype": "float32", "models": models}
    if fishers is not None:
        config["parameters"] = {
            "harm_fisher": str(fishers[0]), "benign_fisher": str(fishers[1]),
            "select": "energy", "energy": 0.9, "utility_merge": "ties",
        }  # fmt: skip
    return config


def timed_merge(
    config: dict,
    workdir: Path,
    name: str,
    cache: Path,
    plugin_tree: Path | None = None,
    threads: int | None = None,
) -> dict:
    """One ``mergekit-yaml`` run (wall/CPU seconds, peak RSS). ``plugin_tree`` goes first on the
    ``PYTHONPATH`` of the run, so its ``sst_merge_plugin`` is the one imported; ``threads``
    limits its thread pools (``_common.thread_environment``)."""
    path = workdir / f"{name}.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    script = Path(sys.executable).with_name("mergekit-yaml")
    out = workdir / "out" / name
    argv = [
        str(script),
        str(path),
        str(out),
        "--lora-merge-cache",
        str(cache),
        "--no-copy-tokenizer",
        "--no-write-model-card",
    ]
    env = thread_environment(threads)
    if plugin_tree is not None:
        paths = [str(plugin_tree), env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, *argv], capture_output=True, text=True, check=True, env=env
    )
    record = json.loads(result.stdout)
    if record["rc"] != 0:
        raise RuntimeError(f"{name} failed:\n{record['stderr']}")
    return record


def startup_overhead(runs: int = 20) -> dict:
    """Import cost of the .pth hook and ``python -c pass`` with the hook on and off."""
    importtime = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "pass"],
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    cumulative = [
        int(line.split("|")[1])
        for line in importtime.splitlines()
        if line.rstrip().endswith("sst_merge_plugin._autoload")
    ]

    def wall(env: dict) -> float:
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", "pass"], env=env, check=True)
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    on = {k: v for k, v in os.environ.items() if k != "SST_MERGE_NO_AUTOLOAD"}
    return {
        "autoload_import_cumulative_ms": cumulative[0] / 1000 if cumulative else None,
        "python_c_pass_ms_hook_on": 1000 * wall(on),
        "python_c_pass_ms_hook_off": 1000 * wall({**on, "SST_MERGE_NO_AUTOLOAD": "1"}),
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated Fisher kinds")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument("--workdir", type=Path, help="keep models/adapters/Fishers here (reused)")
    parser.add_argument(
        "--baseline-tree", type=Path, help="also time sst_merge with the plugin from this checkout"
    )
    parser.add_argument("--threads", nargs="+", type=int,
                        help="thread counts for the merges (each in every round; default: the "
                        "libraries' own)")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    args = parser.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    if unknown := set(kinds) - set(KINDS):
        parser.error(f"unknown kinds {sorted(unknown)}")
    if args.repeats < 1 or (args.threads and min(args.threads) < 1):
        parser.error("--repeats and --threads must be >= 1")
    if args.baseline_tree and not (args.baseline_tree / "sst_merge_plugin").is_dir():
        parser.error(f"--baseline-tree {args.baseline_tree}: no sst_merge_plugin folder there")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="sst_merge_cost_"))
    workdir.mkdir(parents=True, exist_ok=True)
    base, base_label = base_model_dir(workdir)
    adapters = {role: workdir / f"adapter_{role}" for role in ("safety", "math", "text")}
    for seed, path in enumerate(adapters.values()):
        make_adapter(base, path, seed)
    cache = workdir / "lora_cache"
    from mergekit.common import ModelPath, ModelReference

    for adapter in adapters.values():  # merge the LoRAs once; the timed runs reuse the cache
        ModelReference(model=ModelPath(path=str(base)), lora=ModelPath(path=str(adapter))).merged(
            cache_dir=str(cache)
        )
    # method -> (config, plugin tree or None for this one)
    runs: dict[str, tuple[dict, Path | None]] = {
        "ties": (config_for("ties", base, adapters, None), None)
    }
    for kind in kinds:
        config = config_for(
            "sst_merge", base, adapters, write_fishers(kind, adapters["safety"], workdir)
        )
        runs[f"sst_merge ({kind})"] = (config, None)
        if args.baseline_tree:
            runs[f"sst_merge ({kind}) [baseline]"] = (config, args.baseline_tree)
    thread_counts = args.threads or [None]
    keys = [(threads, method) for threads in thread_counts for method in runs]
    loads: list[dict] = []

    def measure(key: tuple[int | None, str], round_index: int) -> dict:
        threads, method = key
        config, tree = runs[method]
        slug = re.sub(r"\W+", "_", f"{method} {threads or ''}").strip("_")
        return timed_merge(config, workdir, slug, cache, tree, threads)

    def report(round_index: int, records: dict[tuple[int | None, str], dict]) -> None:
        loads.append({"round": round_index + 1, "load_average": os.getloadavg()})
        times = ", ".join(f"{m}@{t or '-'} {r['seconds']:.1f}s" for (t, m), r in records.items())
        print(f"# round {round_index + 1}: {times}; load {loads[-1]['load_average']}",
              file=sys.stderr, flush=True)  # fmt: skip

    measured = interleaved(keys, args.repeats, measure, report)
    rows = []
    for threads in thread_counts:
        records = {method: measured[(threads, method)] for method in runs}
        summary = summarise_rounds(records, "ties", clocks=("", "cpu_"))
        ties_peak = max(r["peak_rss_mb"] for r in records["ties"])
        for method, runs_of_method in records.items():
            peak = max(r["peak_rss_mb"] for r in runs_of_method)
            rows.append({"threads": threads, "method": method, **summary[method],
                         "peak_rss_mb": peak, "rss_ratio": peak / ties_peak})  # fmt: skip
    result = {
        "base": base_label,
        "repeats": args.repeats,
        "threads": args.threads,
        "baseline_tree": str(args.baseline_tree) if args.baseline_tree else None,
        "cpu_count": os.cpu_count(),
        "load_average_per_round": loads,
        "rows": rows,
        "startup": startup_overhead(),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"mergekit-yaml on {base_label}, 3 rank-{RANK} LoRAs on all 7 projections; median of "
        f"{args.repeats} interleaved rounds (ratios: median of the per-round ratios to ties)\n"
    )
    print("| threads | method | wall s | × ties | CPU s | × ties (CPU) | peak RSS MB | × ties |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['threads'] or 'default'} | {r['method']} | {r['seconds']:.1f} | "
            f"{r['ratio']:.2f} | {r['cpu_seconds']:.1f} | {r['cpu_ratio']:.2f} | "
            f"{r['peak_rss_mb']:.0f} | {r['rss_ratio']:.2f} |"
        )
    s = result["startup"]
    print(
        f"\nPython start-up: .pth hook import {s['autoload_import_cumulative_ms']} ms (-X importtime); "
        f"`python -c pass` {s['python_c_pass_ms_hook_on']:.1f} ms with the hook, "
        f"{s['python_c_pass_ms_hook_off']:.1f} ms with SST_MERGE_NO_AUTOLOAD=1 (median of {s['runs']})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
