"""The cache keys of the benchmark profiles, computed without training, collecting or merging.

Every stage of :mod:`sst_merge_plugin.bench.pipeline` names its output by the content of its
inputs. A code change that alters one of those inputs for an existing profile silently
invalidates a workspace that took hours to fill. This script prints (as JSON) every key a
profile's run computes before anything expensive happens, so two versions of the code can be
compared:

* the adapters: each training call's inputs (model fingerprint, sha256 of the pairs, the
  training configuration) and the folder name (``adapters/<name>-<key>``);
* the prompt files (``data/<label>-<key>.jsonl``) and the look-alike answers file;
* every Fisher request the sweeps make (its file name with the content-key prefix, the full
  content key and the request's options);
* every merge job (references and each sweep's grid points: job key and configuration) and the
  evaluation key of each job on the validation and the test split.

Nothing real is trained, collected, merged or generated: training writes a stand-in adapter
whose two files hold the training call's inputs (so an adapter's digest, and every Fisher key
that includes it, changes exactly when those inputs do); Fisher collection writes the request;
merges are never run; the base model's answers to the look-alikes are stand-ins (a look-alikes
file already in the workspace under the right key is reused as the pipeline would). Paths
under the workspace are printed as ``<ws>/…`` and the model folder as ``<model>``, so two
runs in one workspace folder compare (``tests/test_bench_models.py`` runs it on a tiny model
against keys recorded with the code before the model-agnostic change).

    PYTHONPATH=<checkout> python benchmarks/cache_keys.py --workspace /tmp/keys/ws \\
        --profiles quick full --out keys.json

Run it once with each version of the code (same ``--workspace``, emptied in between, and the
same asset cache) and compare the JSON files. Only APIs that exist since the pipeline's first
version are used, so it runs against older checkouts too.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any


def _stand_in_adapter(model_dir: Any, examples: Any, out_dir: Any, config: Any, **_: Any) -> None:
    """Write an adapter folder whose files hold the training call's inputs (the model by its
    fingerprint, so the keys do not depend on where the model folder is)."""
    from sst_merge_plugin.atomic import atomic_path
    from sst_merge_plugin.bench.training import examples_sha256
    from sst_merge_plugin.fisher.fingerprint import checkpoint_fingerprint

    inputs = {
        "model": checkpoint_fingerprint(model_dir),
        "examples_sha256": examples_sha256(list(examples)),
        "n_examples": len(examples),
        "config": asdict(config),
    }
    text = json.dumps(inputs, sort_keys=True, default=str)
    with atomic_path(out_dir, directory=True) as temporary:
        (temporary / "adapter_config.json").write_text(text, encoding="utf-8")
        (temporary / "adapter_model.safetensors").write_bytes(
            hashlib.sha256(text.encode()).digest()
        )
        (temporary / "inputs.json").write_text(text, encoding="utf-8")


def _stand_in_fisher(request: Any, out: Any, **_: Any) -> Path:
    """Write the request instead of collecting it."""
    from sst_merge_plugin.atomic import write_text
    from sst_merge_plugin.fisher.cache import content_key

    # options set to None are not part of the content key (fisher/cache.py); leaving them out
    # here too keeps a new option that defaults to None from showing up as a difference
    options = {key: value for key, value in request.options().items() if value is not None}
    payload = {"content_key": content_key(request), "options": options}
    write_text(out, json.dumps(payload, sort_keys=True, default=str))
    return Path(out)


def _stand_in_answers(model: Any, tokenizer: Any, prompts: Any, **_: Any) -> list[str]:
    return [f"stand-in answer {hashlib.sha256(p.encode()).hexdigest()[:8]}" for p in prompts]


def _stand_in_turns(model: Any, tokenizer: Any, prompts: Any, **_: Any) -> list[Any]:
    from sst_merge_plugin.evaluation.generate import Turn

    return [Turn(f"I can't help with that ({text[-8:]}).", True) for text in _stand_in_answers(
        model, tokenizer, prompts
    )]  # fmt: skip


def _patch(set_attribute: Any = setattr) -> None:
    """Replace every expensive step by its stand-in (module doc); tests pass
    ``monkeypatch.setattr``."""
    import sst_merge_plugin.bench.merges as merges
    import sst_merge_plugin.bench.scoring as scoring
    import sst_merge_plugin.bench.training as training
    import sst_merge_plugin.evaluation.generate as generate
    import sst_merge_plugin.fisher.collect as collect

    set_attribute(training, "train_lora_adapter", _stand_in_adapter)
    set_attribute(collect, "collect_fisher_file", _stand_in_fisher)
    set_attribute(generate, "generate_responses", _stand_in_answers)
    if hasattr(generate, "generate_turns"):  # the own refusals of a self-distilling profile
        set_attribute(generate, "generate_turns", _stand_in_turns)
    set_attribute(scoring, "load_model", lambda model_dir, device: (None, None))

    def no_merge(*args: Any, **kwargs: Any) -> float:
        raise RuntimeError("cache_keys: a merge would run")

    set_attribute(merges, "run_merge_job", no_merge)


def _relative(value: Any, roots: dict[str, str]) -> Any:
    """``value`` with each path of ``roots`` replaced by its placeholder in every string."""
    if isinstance(value, str):
        for root, placeholder in roots.items():
            value = value.replace(root, placeholder)
        return value
    if isinstance(value, dict):
        return {key: _relative(item, roots) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_relative(item, roots) for item in value]
    return value


def profile_keys(
    name: str,
    workspace: Path,
    *,
    model_dir: Any = None,
    prompts: Any = None,
    methods: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """Every key of profile ``name``'s run in ``workspace`` (module doc), on the registered
    model and the asset prompts unless ``model_dir`` / ``prompts`` are given (tests);
    ``methods``: only those sweeps (a sweep added later leaves the others' keys alone)."""
    from sst_merge_plugin.bench.pipeline import Pipeline
    from sst_merge_plugin.bench.profile import PROFILES
    from sst_merge_plugin.bench.scoring import eval_key

    profile = PROFILES[name] if methods is None else PROFILES[name].with_sweeps(methods)
    pipeline = Pipeline(profile, workspace, progress=False, model_dir=model_dir, prompts=prompts)
    out: dict[str, Any] = {"model_dir": str(pipeline.model_dir)}
    adapters = pipeline.adapters.all()
    out["adapters"] = {
        spec: {
            "folder": folder.name,
            "inputs": json.loads((folder / "inputs.json").read_text(encoding="utf-8")),
        }
        for spec, folder in adapters.items()
    }
    files = pipeline.prompt_files
    out["prompt_files"] = {
        "harmful": files.harmful().name,
        "benign": files.benign().name,
        "safety_behaviour": files.safety_behaviour().name,
    }
    jobs = list(pipeline.merges.references())
    references = [job.key for job in jobs]
    sweeps = {}
    for sweep in profile.sweeps:
        grid = pipeline.merges.sweep_jobs(sweep)
        sweeps[sweep.label] = [job.key for job in grid]
        jobs += grid
    out["references"] = references
    out["sweeps"] = sweeps
    out["jobs"] = {
        job.key: {"method": job.method, "knob": job.knob, "config": job.config} for job in jobs
    }
    out["eval_configs"] = {"validation": asdict(profile.validation), "test": asdict(profile.test)}
    out["evals"] = {
        split: {job.key: eval_key(job.key, evaluation) for job in jobs}
        for split, evaluation in (("validation", profile.validation), ("test", profile.test))
    }
    out["data_files"] = sorted(path.name for path in (workspace / "data").iterdir())
    out["fishers"] = {
        path.name: json.loads(path.read_text(encoding="utf-8"))
        for path in sorted((workspace / "fishers").glob("*.safetensors"))
    }
    # the workspace (longest first: it may lie inside the model folder's parent) and the model
    roots = {str(workspace): "<ws>", str(pipeline.model_dir): "<model>"}
    return _relative(out, dict(sorted(roots.items(), key=lambda item: -len(item[0]))))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", required=True, help="an empty scratch folder")
    parser.add_argument("--profiles", nargs="+", default=["quick", "full"])
    parser.add_argument(
        "--lookalikes",
        nargs="*",
        default=[],
        help="look-alike answer files to reuse (copied into each profile's data/ first)",
    )
    parser.add_argument("--out", required=True, help="JSON file to write")
    args = parser.parse_args(argv)
    _patch()
    root = Path(args.workspace).resolve()
    keys = {}
    for name in args.profiles:
        workspace = root / name
        if workspace.exists():
            shutil.rmtree(workspace)
        (workspace / "data").mkdir(parents=True)
        for path in map(Path, args.lookalikes):
            shutil.copyfile(path, workspace / "data" / path.name)
        keys[name] = profile_keys(name, workspace)
        keys[name]["reused_lookalikes"] = [
            Path(path).name
            for path in args.lookalikes
            if Path(path).name in keys[name]["data_files"]
        ]
    Path(args.out).write_text(json.dumps(keys, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(
        f"wrote {args.out}: " + ", ".join(f"{n} ({len(k['jobs'])} jobs)" for n, k in keys.items())
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
