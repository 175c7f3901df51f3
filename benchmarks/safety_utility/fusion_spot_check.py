"""Spot check: the FusionBench path gives the same model and numbers as the mergekit path.

One point of a full-profile SST sweep (``--sweep``, ``--value``) is merged twice from the same
adapters and Fisher files of the benchmark workspace: by mergekit (``merge_method: sst_merge``,
what the benchmark table reports) and by FusionBench (``SSTMergeAlgorithm`` on a
``CausalLMPool`` of base + LoRA, :mod:`sst_merge_plugin.bench.fusion_merge`). It prints the
largest weight difference between the two folders and both rows' metrics (the FusionBench
model is evaluated with the same :class:`~sst_merge_plugin.evaluation.suite.EvalConfig`;
evaluations are cached in the workspace), and writes them to ``--json``.

    python benchmarks/safety_utility/fusion_spot_check.py --sweep sst_lora_soft --value 3.0
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from sst_merge_plugin.core.errors import SSTError

ALGORITHM = "fusion_bench:sst_merge_plugin.fusion_bench.algorithm.SSTMergeAlgorithm"
METRICS = ("harmful_refusal", "benign_over_refusal", "utility", "truefalse_accuracy")


def max_weight_difference(left: Path, right: Path) -> tuple[float, int]:
    """Largest ``|a − b|`` over the tensors of two model folders, and how many were compared
    (an error if they hold different tensor names or shapes)."""
    from safetensors.torch import load_file

    def tensors(folder: Path) -> dict:
        merged: dict = {}
        for shard in sorted(folder.glob("*.safetensors")):
            merged.update(load_file(str(shard)))
        return merged

    a, b = tensors(left), tensors(right)
    if a.keys() != b.keys():
        raise SSTError(f"the two merges hold different tensors: {sorted(a.keys() ^ b.keys())[:5]}")
    worst = 0.0
    for name, tensor in a.items():
        if tensor.shape != b[name].shape:
            raise SSTError(f"{name}: shapes {tuple(tensor.shape)} vs {tuple(b[name].shape)}")
        worst = max(worst, float((tensor.double() - b[name].double()).abs().max()))
    return worst, len(a)


def main(argv: list[str] | None = None) -> int:
    from sst_merge_plugin.bench.merges import MergeJob
    from sst_merge_plugin.bench.pipeline import Pipeline
    from sst_merge_plugin.bench.profile import FULL, SAFETY, Sweep
    from sst_merge_plugin.data.assets import cache_root

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", default="sst_lora_soft", help="an SST sweep of the profile")
    parser.add_argument("--value", type=float, default=3.0, help="its knob value")
    parser.add_argument("--workspace", help="default: <asset cache>/bench/full")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, help="write the comparison here")
    args = parser.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            raise SSTError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    sweep = next((s for s in FULL.sweeps if s.label == args.sweep), None)
    if sweep is None or sweep.merge_method != "sst_merge":
        raise SSTError(f"--sweep must name an sst_merge sweep of the full profile: {args.sweep!r}")
    pipeline = Pipeline(
        FULL, args.workspace or cache_root() / "bench" / "full", progress=False, keep_models=False
    )
    mergekit_job = MergeJob(sweep.label, args.value, pipeline.merges.config(sweep, args.value))
    shared = dict(mergekit_job.config["parameters"])
    fusion_sweep = Sweep(
        f"{sweep.label} (FusionBench)",
        ALGORITHM,
        None,
        (None,),
        {"merge_method": "sst_merge", "safety_model": SAFETY, **shared},
    )
    fusion_job = MergeJob(
        fusion_sweep.label, args.value, pipeline.merges.config(fusion_sweep, None)
    )
    with tempfile.TemporaryDirectory(dir=pipeline.workspace.root) as scratch:
        pipeline.merges.run(mergekit_job, Path(scratch, "mergekit"))
        pipeline.merges.run(fusion_job, Path(scratch, "fusion_bench"))
        difference, n_tensors = max_weight_difference(
            Path(scratch, "mergekit"), Path(scratch, "fusion_bench")
        )
    rows = {
        host: {key: pipeline.scoring.record(job)["metrics"][key] for key in METRICS}
        for host, job in (("mergekit", mergekit_job), ("fusion_bench", fusion_job))
    }
    report = {
        "sweep": sweep.label,
        "value": args.value,
        "max_abs_weight_difference": difference,
        "tensors_compared": n_tensors,
        "metrics": rows,
        "metrics_equal": rows["mergekit"] == rows["fusion_bench"],
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        from sst_merge_plugin.atomic import write_text

        write_text(args.json, text + "\n")
    return 0 if report["metrics_equal"] else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SSTError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
