"""Cost of SST-Merge at LLM size: Fisher collection throughput, and a whole 7B/8B merge's projection.

**1. Fisher collection throughput.** On one model — the cached real SmolLM2-135M folder
(``--fisher-model smollm2``, or any Hugging Face folder), or a randomly initialised Llama built
from a config (``--fisher-config tiny|smollm2-135m|llama2-7b|llama3-8b``; no download) — and
the same random token batches (``--batches`` × ``--batch-size`` × ``--seq-len``, the second half
of every row carrying the loss), interleaved over ``--fisher-repeats`` rounds in ONE process:
a plain training-style forward+backward (the reference), the same with frozen parameters, and
:func:`~sst_merge_plugin.fisher.collect.accumulate_statistics` for each kind (``lora`` on a
random rank-``--rank`` subspace of every targeted weight). Reported: median seconds, tokens/s,
the median over rounds of the ratio to the same round's forward+backward (wall, and process CPU
time; ``_common.summarise_rounds``), the peak memory of each pass, and
for each kind the finalize/write time and the Fisher file's measured size next to its on-paper
size. Default model: the SmolLM2 folder if it is cached, else a random SmolLM2-shaped Llama.

**2. Projection of a whole merge, extrapolated.** For every distinct weight shape of the
``--models`` (default Llama-2-7B: hidden 4096, MLP 11008, 32 heads, 32 layers; Llama-3-8B:
MLP 14336, 8 KV heads so k/v are 1024×4096) the synthetic inputs of ``gevp_cost.py`` (random
SPD harm/benign factors, a rank-16 patch, the restricted ``lora`` and ``diag`` Fishers) are
built once and each method is timed (median of ``--repeats``, after an untimed warm-up on a
256-square block that keeps one-off library initialisation out; a fresh child process per
measurement unless ``--isolation none``): ``svd`` (reference: the SVD a TSV-style merge
computes), ``kfac_dense`` (full spectrum; skipped above ``--dense-max-dim``, and a model's
total is then shown as a lower bound with the unmeasured weights named), ``kfac_topk``
(k=16, Krylov), ``lora`` (r=16), ``diag``. A merge projects every default-target weight
(q, k, v, o, gate, up, down × layers, from a weightless meta-device model) through ONE
:class:`~sst_merge_plugin.core.GEVPCache`; K-FAC's input factor ``A`` is shared by q/k/v and by
gate/up, so k, v and up find it solved. That case is measured as its own unit (a sibling
weight with the same ``A`` and another ``G`` is projected through the cache first, untimed).
The merge is then replayed through an LRU of the cache's size (``GEVPCache().max_entries``):
per weight the unit it costs, cache hits and misses, and the bytes each new cache entry keeps
alive (measured). Per model and method:

* projection seconds per merge = Σ over weights of its unit's median seconds
  (= Σ over units of count × seconds, both in the JSON);
* peak memory = max over weights of (cache entries held before it + its unit's measured peak
  above its loaded inputs) — host RSS on CPU (freed heap trimmed, then the kernel's peak mark
  reset, so the number is the projection's own), ``torch.cuda.max_memory_allocated`` on CUDA;
  neither includes the model tensors mergekit holds or the Fisher files' readers;
* Fisher file size (float32, each of the two files) and collection accumulators (float64), on
  paper from the shapes (``fisher_cost.py``'s formulas, in ``_common.py``; ``kfac`` stores one
  ``A`` per weight).

Not included: reading the Fisher files, the utility merge, writing the output (see
``merge_cost.py`` for whole ``mergekit-yaml`` runs at SmolLM2 size).

``--device cuda`` runs the collection and the projections on the GPU (synchronised before each
clock read; peak memory from ``torch.cuda.max_memory_allocated``); it stops with an error where
CUDA is unavailable.

    python benchmarks/cost_at_scale.py --json cost_at_scale.json           # full size
    python benchmarks/cost_at_scale.py --quick --json smoke.json            # tiny shapes, seconds
    python benchmarks/cost_at_scale.py --device cuda --dense-max-dim 14336  # on a GPU
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
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch
from _common import (
    MODEL_CONFIGS,
    PROJECTION_METHODS,
    RANK,
    PeakMemory,
    build_inputs,
    cpu_timed,
    device_sync,
    file_costs,
    input_group,
    interleaved,
    measure_projection,
    memory_row,
    model_weight_shapes,
    plain_forward_backward,
    random_subspaces,
    summarise_rounds,
)

FISHER_KINDS = ("diag", "kfac", "lora")
METHOD_KIND = {
    "svd": None,
    "kfac_dense": "kfac",
    "kfac_topk": "kfac",
    "lora": "lora",
    "diag": "diag",
}
MODEL_LABELS = {
    "tiny": "tiny Llama",
    "smollm2-135m": "SmolLM2-135M-shaped",
    "llama2-7b": "Llama-2-7B-shaped",
    "llama3-8b": "Llama-3-8B-shaped",
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: settings that ``--quick`` changes (unless given explicitly)
QUICK = {
    "fisher_config": "tiny",
    "batch_size": 2,
    "seq_len": 32,
    "batches": 2,
    "fisher_repeats": 2,
    "models": ["tiny"],
    "repeats": 1,
    "isolation": "none",
}
FULL = {
    "batch_size": 8,
    "seq_len": 256,
    "batches": 4,
    "fisher_repeats": 3,
    "models": ["llama2-7b", "llama3-8b"],
    "repeats": 1,
    "isolation": "process",
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def check_device(parser: argparse.ArgumentParser, device: str) -> str:
    """``cpu`` / ``cuda`` / ``cuda:N``; a CUDA device must exist (clear error otherwise)."""
    try:
        parsed = torch.device(device)
    except RuntimeError:
        parser.error(f"--device must be cpu, cuda or cuda:N, got {device!r}")
    if parsed.type not in ("cpu", "cuda"):
        parser.error(f"--device must be cpu, cuda or cuda:N, got {device!r}")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            parser.error(
                f"--device {device} was requested but CUDA is not available here "
                f"(torch {torch.__version__}, built with CUDA {torch.version.cuda}, "
                f"torch.cuda.is_available() is False); run on a machine with an NVIDIA GPU "
                f"and a CUDA build of torch, or use --device cpu"
            )
        index = parsed.index or 0
        if index >= torch.cuda.device_count():
            parser.error(
                f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) visible"
            )
    return device


# --------------------------------------------------------------------------- 1. Fisher


def load_fisher_model(args: argparse.Namespace):
    """The model the collection runs on, and a label saying what it is."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    dtype = DTYPES[args.fisher_dtype]
    source = args.fisher_model
    if source is None and args.fisher_config is None:
        from sst_merge_plugin.data.smollm2 import conversion_record, smollm2_location

        source = "smollm2" if conversion_record(smollm2_location()) else None
        args.fisher_config = None if source else "smollm2-135m"
    if source is not None:
        if source == "smollm2":
            from sst_merge_plugin.data.smollm2 import conversion_record, smollm2_location

            path = smollm2_location()
            if not conversion_record(path):
                raise SystemExit(
                    f"error: --fisher-model smollm2: no converted SmolLM2 folder at {path} "
                    "(run `sst-merge demo` or any SmolLM2 test once to fetch it, or use "
                    "--fisher-config smollm2-135m for a random model with its shapes)"
                )
            label = f"SmolLM2-135M-Instruct ({path})"
        else:
            path = Path(source)
            if not (path / "config.json").is_file():
                raise SystemExit(f"error: --fisher-model {source}: no config.json in that folder")
            label = str(path)
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
        model.to(args.device)
    else:
        config = LlamaConfig(**MODEL_CONFIGS[args.fisher_config])
        torch.manual_seed(args.seed)
        with torch.device(args.device):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        label = f"random {MODEL_LABELS[args.fisher_config]} model from a LlamaConfig"
    model.eval()
    n_params = sum(p.numel() for p in model.parameters())
    return model, f"{label}, {n_params / 1e6:.1f}M parameters, {args.fisher_dtype}"


def random_batches(
    vocab_size: int, batch_size: int, seq_len: int, n_batches: int, seed: int, device: str
) -> list[dict[str, torch.Tensor]]:
    """Unpadded random token batches; the loss is on the second half of every row."""
    from sst_merge_plugin.data.chat import IGNORE_INDEX

    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n_batches):
        input_ids = torch.randint(vocab_size, (batch_size, seq_len), generator=generator)
        labels = input_ids.clone()
        labels[:, : seq_len // 2] = IGNORE_INDEX
        batch = {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "labels": labels,
        }
        batches.append({key: value.to(device) for key, value in batch.items()})
    return batches


def fisher_throughput(args: argparse.Namespace) -> dict[str, object]:
    """Section 1 (module doc): rows per method, side by side on one model and one data set."""
    from sst_merge_plugin.fisher.collect import accumulate_statistics
    from sst_merge_plugin.fisher.targets import find_target_layers, layer_shape

    model, label = load_fisher_model(args)
    batches = random_batches(
        model.config.vocab_size, args.batch_size, args.seq_len, args.batches, args.seed, args.device
    )
    n_tokens = sum(int(batch["attention_mask"].sum()) for batch in batches)
    kinds = list(args.kinds)
    subspaces = random_subspaces(model, args.rank, seed=args.seed) if "lora" in kinds else None
    log(f"# Fisher: {label}; {len(batches)} batches, {n_tokens} tokens, device {args.device}")

    def collect(kind: str, data) -> object:
        return accumulate_statistics(
            model, data, kind=kind, subspaces=subspaces if kind == "lora" else None
        )

    methods: dict[str, Callable[[list], object]] = {
        "fwd+bwd": lambda data: plain_forward_backward(model, data, frozen=False),
        "fwd+bwd frozen": lambda data: plain_forward_backward(model, data, frozen=True),
        **{kind: (lambda data, kind=kind: collect(kind, data)) for kind in kinds},
    }
    sync = device_sync(args.device)
    for method in methods.values():  # warm-up: lazy initialisation, kernels, allocator
        method(batches[:1])
    last: dict[str, object] = {}

    def measure(name: str, round_index: int) -> dict[str, float]:
        with PeakMemory(args.device) as peak:
            seconds, cpu_seconds, value = cpu_timed(lambda: methods[name](batches), sync)
        if name in kinds and round_index == args.fisher_repeats - 1:
            last[name] = value  # the statistics of the last round are finalised and written
        return {"seconds": seconds, "cpu_seconds": cpu_seconds, "peak_extra_mb": peak.extra_mb}

    def report(round_index: int, results: dict[str, dict[str, float]]) -> None:
        times = ", ".join(f"{n} {r['seconds']:.3f}s" for n, r in results.items())
        log(f"#   round {round_index + 1}: {times}")

    results = interleaved(list(methods), args.fisher_repeats, measure, report)
    summary = summarise_rounds(results, "fwd+bwd", clocks=("", "cpu_"))
    shapes = [layer_shape(module) for module in find_target_layers(model).values()]
    paper = memory_row(label, shapes, args.rank)
    rows = []
    with tempfile.TemporaryDirectory(prefix="sst-cost-fisher-") as folder:
        for name in methods:
            row: dict[str, object] = {
                "method": name,
                **summary[name],
                "tokens_per_s": n_tokens / summary[name]["seconds"],
                "peak_extra_mb": max(record["peak_extra_mb"] for record in results[name]),
            }
            if name in kinds:
                row.update(file_costs(last.pop(name), name, Path(folder), "0" * 64))
                row["file_MiB_on_paper"] = 1024 * paper[f"{name}_file_GiB"]
            rows.append(row)
    return {
        "model": label,
        "device": args.device,
        "n_tokens": n_tokens,
        "n_batches": len(batches),
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "repeats": args.fisher_repeats,
        "rank": args.rank,
        "peak_memory": "torch.cuda.max_memory_allocated" if sync else "host RSS (VmHWM)",
        "rows": rows,
    }


# --------------------------------------------------------------------------- 2. projection


def unit_key(shape: tuple[int, int], method: str, input_cached: bool) -> str:
    """Name of one measurement: weight shape, method, whether ``A`` is already solved."""
    return f"{shape[0]}x{shape[1]}/{method}" + ("/input-cached" if input_cached else "")


def cache_keys(method: str, name: str) -> list[tuple[str, str]]:
    """The GEVP cache entries projecting weight ``name`` needs, in solve order (``G``, ``A``).

    K-FAC's ``A`` is keyed by the weight's input group (equal content across q/k/v, gate/up);
    the ``lora`` factors are restricted to each weight's own adapter subspace, never shared.
    """
    if METHOD_KIND[method] == "kfac":
        return [("G", name), ("A", input_group(name))]
    if method == "lora":
        return [("G", name), ("A", name)]
    return []


def replay_merge(
    weights: dict[str, tuple[int, int]],
    method: str,
    max_entries: int,
    units: dict[str, dict] | None = None,
) -> dict[str, object]:
    """Replay a merge's tensors (in ``weights`` order) through an LRU like ``GEVPCache``.

    Without ``units`` it only says which unit each weight costs. With measured ``units`` it
    also sums the seconds and tracks the bytes the cache holds (each new entry: the size the
    unit measured for it) to give the peak memory. A unit without a measurement (skipped,
    failed) makes the totals incomplete: its seconds are left out, its entries count as 0 bytes.
    """
    cache: OrderedDict[tuple[str, str], float] = OrderedDict()
    counts: dict[str, int] = {}
    hits = misses = 0
    seconds = 0.0
    peak_mb = held_max_mb = 0.0
    missing: set[str] = set()
    for name, shape in weights.items():
        held_mb = sum(cache.values())
        outcome = []
        for key in cache_keys(method, name):
            if key in cache:
                cache.move_to_end(key)
                outcome.append(True)
            else:
                cache[key] = 0.0
                outcome.append(False)
                while len(cache) > max_entries:
                    cache.popitem(last=False)
        input_cached = METHOD_KIND[method] == "kfac" and outcome[1]
        key = unit_key(shape, method, input_cached)
        counts[key] = counts.get(key, 0) + 1
        hits += sum(outcome)
        misses += len(outcome) - sum(outcome)
        if units is None:
            continue
        unit = units[key]
        if unit.get("seconds") is None:
            missing.add(key)
            continue
        new_keys = [k for k, hit in zip(cache_keys(method, name), outcome, strict=True) if not hit]
        if unit["misses"] != len(new_keys) or unit["hits"] != sum(outcome):
            raise RuntimeError(
                f"{key}: the measurement had {unit['hits']} cache hits / {unit['misses']} misses, "
                f"the replay expects {sum(outcome)} / {len(new_keys)}"
            )
        for new_key, solved in zip(new_keys, unit["solved"], strict=True):
            if new_key in cache:
                cache[new_key] = solved["bytes"] / 2**20
        seconds += unit["seconds"]
        peak_mb = max(peak_mb, held_mb + unit["peak_mb"])
        held_max_mb = max(held_max_mb, held_mb)
    result: dict[str, object] = {"counts": counts, "cache_hits": hits, "cache_misses": misses}
    if units is not None:
        complete = not missing
        result.update(
            complete=complete,
            missing_units=sorted(missing),
            weights_missing=sum(counts[key] for key in missing),
            seconds_per_merge=seconds if complete else None,
            seconds_measured_part=seconds,
            peak_mb=peak_mb,
            cache_held_max_mb=held_max_mb,
        )
    return result


def model_weights(model: str) -> dict[str, tuple[int, int]]:
    return model_weight_shapes(MODEL_CONFIGS[model])


def run_unit_in_child(spec: dict, threads: int | None) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)]
    if threads:
        command += ["--threads", str(threads)]
    out = subprocess.run(command, capture_output=True, text=True)
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or ["(no output)"])[-1]
        log(out.stderr[-4000:])
        return {"seconds": None, "failed": tail}
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_units(args: argparse.Namespace, needed: dict[tuple[int, int], set]) -> dict:
    """Measure every needed ``(method, input_cached)`` of every shape; skip dense above the cap."""
    units: dict[str, dict] = {}
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="sst-cost-gevp-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        for shape, variants in sorted(needed.items()):
            path = workdir / f"{shape[0]}x{shape[1]}.safetensors"
            start = time.perf_counter()
            build_inputs(*shape, path, args.seed)
            log(f"# {shape[0]}x{shape[1]}: inputs built in {time.perf_counter() - start:.1f}s")
            for method, input_cached in sorted(variants):
                key = unit_key(shape, method, input_cached)
                if method == "kfac_dense" and max(shape) > args.dense_max_dim:
                    units[key] = {
                        "seconds": None,
                        "skipped": f"dim > --dense-max-dim {args.dense_max_dim}",
                    }
                    continue
                spec = {
                    "method": method,
                    "path": str(path),
                    "repeats": args.repeats,
                    "device": args.device,
                    "input_cached": input_cached,
                }
                if args.isolation == "process":
                    result = run_unit_in_child(spec, args.threads)
                else:
                    result = child(spec)
                if result.get("seconds") is not None:
                    result["peak_mb"] = (
                        result["peak_extra_mb"]
                        if result["peak_device_extra_mb"] is None
                        else result["peak_device_extra_mb"]
                    )
                units[key] = {
                    "shape": list(shape),
                    "method": method,
                    "input_cached": input_cached,
                    **result,
                }
                log(f"#   {key}: {units[key].get('seconds')} s")
            path.unlink()
    finally:
        if args.workdir is None:
            for leftover in workdir.glob("*.safetensors"):
                leftover.unlink()
            workdir.rmdir()
    return units


def child(spec: dict) -> dict:
    """One projection measurement (in this process)."""
    return measure_projection(
        spec["method"],
        Path(spec["path"]),
        spec["repeats"],
        spec["device"],
        shared_input_cached=spec["input_cached"],
        exact_peak=True,
        warmup=True,
    )


def projection_at_scale(args: argparse.Namespace) -> dict[str, object]:
    """Section 2 (module doc): per-shape units, then the per-model replay."""
    from sst_merge_plugin.core import GEVPCache

    max_entries = GEVPCache().max_entries
    weights = {model: model_weights(model) for model in args.models}
    needed: dict[tuple[int, int], set] = {}
    for model_weights_ in weights.values():
        for method in args.methods:
            for key in replay_merge(model_weights_, method, max_entries)["counts"]:
                shape_text, _, variant = key.partition("/")
                shape = tuple(int(part) for part in shape_text.split("x"))
                needed.setdefault(shape, set()).add((method, variant.endswith("/input-cached")))
    units = measure_units(args, needed)
    models = {}
    for model, model_weights_ in weights.items():
        shapes = list(model_weights_.values())
        paper = memory_row(MODEL_LABELS[model], shapes, RANK)
        config = MODEL_CONFIGS[model]
        methods = {}
        for method in args.methods:
            replay = replay_merge(model_weights_, method, max_entries, units)
            kind = METHOD_KIND[method]
            replay["fisher_file_GiB"] = paper[f"{kind}_file_GiB"] if kind else None
            replay["fisher_accumulators_GiB"] = paper[f"{kind}_accumulators_GiB"] if kind else None
            methods[method] = replay
        svd = methods.get("svd", {}).get("seconds_per_merge")
        for record in methods.values():
            total = record["seconds_per_merge"]
            record["ratio_to_svd"] = total / svd if total is not None and svd else None
        models[model] = {
            "label": MODEL_LABELS[model],
            "config": config,
            "n_layers": config["num_hidden_layers"],
            "n_weights": len(model_weights_),
            "weight_shapes": {
                name.split(".")[-2]: list(shape)
                for name, shape in model_weights_.items()
                if ".layers.0." in name
            },
            "methods": methods,
        }
    return {
        "device": args.device,
        "rank": RANK,
        "repeats": args.repeats,
        "dense_max_dim": args.dense_max_dim,
        "isolation": args.isolation,
        "cache_max_entries": max_entries,
        "peak_memory": "torch.cuda.max_memory_allocated"
        if torch.device(args.device).type == "cuda"
        else "host RSS (VmHWM)",
        "units": units,
        "models": models,
    }


# --------------------------------------------------------------------------- output


def fmt(value: object, spec: str = ".3g") -> str:
    return "–" if value is None else format(value, spec)


def num(value: float) -> str:
    """Three significant digits below 1000, whole numbers above (no exponent notation)."""
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def markdown(result: dict) -> str:
    lines = []
    fisher = result.get("fisher")
    if fisher:
        lines += [
            f"\n## Fisher collection throughput — {fisher['model']}",
            f"{fisher['n_batches']} batches × {fisher['batch_size']} × {fisher['seq_len']} tokens "
            f"= {fisher['n_tokens']} tokens, device {fisher['device']}, median of "
            f"{fisher['repeats']} interleaved rounds, lora rank {fisher['rank']}, peak memory: "
            f"{fisher['peak_memory']} above the pass's start\n",
            "| method | median s | tokens/s | × fwd+bwd (wall) | × fwd+bwd (CPU) | peak extra MiB "
            "| finalize s | file MiB (measured) | file MiB (on paper) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in fisher["rows"]:
            lines.append(
                f"| {row['method']} | {row['seconds']:.3f} | {row['tokens_per_s']:.0f} | "
                f"{row['ratio']:.2f} | {fmt(row['cpu_ratio'], '.2f')} | {row['peak_extra_mb']:.0f} | "
                f"{fmt(row.get('finalize_seconds'), '.3f')} | {fmt(row.get('file_MiB'), '.2f')} | "
                f"{fmt(row.get('file_MiB_on_paper'), '.2f')} |"
            )
    projection = result.get("projection")
    if projection:
        lines += [
            f"\n## Projection per weight shape (device {projection['device']}, median of "
            f"{projection['repeats']}, rank-{projection['rank']} patch)\n",
            "| unit (shape/method[/input-cached]) | seconds | peak extra MiB | new cache entries MiB |",
            "|---|---:|---:|---:|",
        ]
        for key, unit in projection["units"].items():
            if unit.get("seconds") is None:
                reason = unit.get("skipped") or f"failed: {unit.get('failed')}"
                lines.append(f"| {key} | {reason} | | |")
                continue
            entries = sum(entry["bytes"] for entry in unit["solved"]) / 2**20
            lines.append(
                f"| {key} | {num(unit['seconds'])} | {num(unit['peak_mb'])} | {num(entries)} |"
            )
        for model in projection["models"].values():
            layers = model["n_layers"]
            shapes = ", ".join(f"{n} {s[0]}×{s[1]}" for n, s in model["weight_shapes"].items())
            lines += [
                f"\n### {model['label']}: {model['n_weights']} weights ({layers} layers: {shapes}), "
                f"extrapolated",
                f"One GEVPCache of {projection['cache_max_entries']} entries per merge; peak = cache "
                f"held + one weight's projection ({projection['peak_memory']}); Fisher sizes on "
                "paper (kfac stores one A per weight).\n",
                "| method | projection s / merge | × SVD | peak MiB | cache held (max) MiB | GEVP "
                "solves / hits | Fisher file GiB (fp32, each) | accumulators GiB (fp64) |",
                "|---|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for method, record in model["methods"].items():
                if record["complete"]:
                    seconds = num(record["seconds_per_merge"])
                else:
                    seconds = (
                        f"≥ {num(record['seconds_measured_part'])} ({record['weights_missing']} "
                        f"weights not measured: {', '.join(record['missing_units'])})"
                    )
                lines.append(
                    f"| {method} | {seconds} | {fmt(record['ratio_to_svd'], '.3f')} | "
                    f"{num(record['peak_mb'])}{'' if record['complete'] else ' (≥)'} | "
                    f"{num(record['cache_held_max_mb'])} | {record['cache_misses']} / "
                    f"{record['cache_hits']} | {fmt(record['fisher_file_GiB'])} | "
                    f"{fmt(record['fisher_accumulators_GiB'])} |"
                )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="tiny shapes: a smoke run in seconds")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here (atomic)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-fisher", action="store_true", help="no collection benchmark")
    parser.add_argument("--skip-projection", action="store_true", help="no projection benchmark")
    group = parser.add_argument_group("Fisher collection")
    source = group.add_mutually_exclusive_group()
    source.add_argument("--fisher-model", help="'smollm2' (the cached folder) or a model folder")
    source.add_argument("--fisher-config", choices=sorted(MODEL_CONFIGS), help="random Llama")
    group.add_argument("--fisher-dtype", choices=sorted(DTYPES), default="float32")
    group.add_argument("--kinds", nargs="+", choices=FISHER_KINDS, default=list(FISHER_KINDS))
    group.add_argument("--batch-size", type=int)
    group.add_argument("--seq-len", type=int)
    group.add_argument("--batches", type=int)
    group.add_argument("--fisher-repeats", type=int)
    group.add_argument("--rank", type=int, default=RANK, help="lora collection subspace rank")
    group = parser.add_argument_group("projection")
    group.add_argument("--models", nargs="+", choices=sorted(MODEL_CONFIGS))
    group.add_argument(
        "--methods", nargs="+", choices=PROJECTION_METHODS, default=list(PROJECTION_METHODS)
    )
    group.add_argument("--repeats", type=int, help="timed runs per unit (median)")
    group.add_argument("--dense-max-dim", type=int, default=4096, help="skip kfac_dense above")
    group.add_argument(
        "--isolation",
        choices=("process", "none"),
        help="fresh child process per unit (clean memory readings; default) or in-process "
        "(default with --quick)",
    )
    group.add_argument("--workdir", type=Path, help="where the synthetic inputs are written")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    check_device(parser, args.device)
    for name, value in (QUICK if args.quick else FULL).items():
        if name == "fisher_config" and args.fisher_model is not None:
            continue
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    for name in ("batch_size", "seq_len", "batches", "fisher_repeats", "repeats", "rank"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.seq_len < 2:
        parser.error("--seq-len must be >= 2 (the loss is on the second half)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    started = time.perf_counter()
    result: dict[str, object] = {
        "settings": {
            key: (str(value) if isinstance(value, Path) else value)
            for key, value in vars(args).items()
            if key != "child"
        },
        "environment": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
            "device_name": torch.cuda.get_device_name(args.device)
            if torch.device(args.device).type == "cuda"
            else platform.processor() or platform.machine(),
        },
    }
    if not args.skip_fisher:
        result["fisher"] = fisher_throughput(args)
    if not args.skip_projection:
        result["projection"] = projection_at_scale(args)
    result["wall_seconds"] = time.perf_counter() - started
    print(markdown(result))
    if args.json:
        from sst_merge_plugin.atomic import write_text

        write_text(args.json, json.dumps(result, indent=2) + "\n")
    failed = [
        key
        for key, unit in result.get("projection", {}).get("units", {}).items()
        if unit.get("failed")
    ]
    if failed:
        log(f"error: {len(failed)} measurement(s) failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
