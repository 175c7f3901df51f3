"""Concurrent benchmark runs on one workspace (the tiny world of ``test_bench_pipeline``).

* Two processes run the same :class:`~sst_merge_plugin.bench.pipeline.Pipeline` profile at
  once: both succeed with identical rows, and every expensive stage ran once over both
  (adapter training, Fisher collection, mergekit merges, LoRA merges into mergekit's cache,
  evaluations — counted through a side file); no merge folder or lock file is left.
* mergekit's LoRA merge cache: while one run is inside the ``base+adapter`` merge of an entry,
  another run that needs the entry waits for it (mergekit alone creates the entry's folder
  before writing into it, and the other run would read it half-written).
"""

from __future__ import annotations

import json
import multiprocessing
import time
from collections import Counter
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from test_bench_pipeline import PROMPTS, _profile
from test_entry_lock import PATIENCE_S, blocked_on_a_lock, pytestmark, start_process, wait_for
from test_fusion_bench_world import World
from test_fusion_bench_world import world as world  # the fixture

from sst_merge_plugin.bench.pipeline import Pipeline
from sst_merge_plugin.bench.report import summarise

__all__ = ["pytestmark", "start_process"]  # Linux only, as test_entry_lock; the fixture

#: children start from this process's modules (no second import of torch, mergekit, peft)
FORK = multiprocessing.get_context("fork")


def _count_calls(owner: Any, name: str, counts: str, label: str) -> None:
    """Replace ``owner.name`` by a wrapper that appends ``label`` to the file ``counts``."""
    original = getattr(owner, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        with open(counts, "a", encoding="utf-8") as handle:
            handle.write(label + "\n")
        return original(*args, **kwargs)

    setattr(owner, name, counted)


def _count_stages(counts: str) -> None:
    """Count every expensive stage of this process into ``counts``."""
    from peft.tuners.tuners_utils import BaseTuner

    from sst_merge_plugin.bench import training
    from sst_merge_plugin.bench.merges import Merges
    from sst_merge_plugin.evaluation import suite
    from sst_merge_plugin.fisher import collect

    _count_calls(training, "train_lora_adapter", counts, "train")
    _count_calls(collect, "collect_fisher_file", counts, "fisher")
    _count_calls(Merges, "run", counts, "merge")
    _count_calls(BaseTuner, "merge_and_unload", counts, "lora")
    _count_calls(suite, "evaluate_model", counts, "evaluate")


def _counted(counts: Path) -> Counter[str]:
    return Counter(counts.read_text().split()) if counts.exists() else Counter()


def _pipeline(root: str, workspace: str) -> Pipeline:
    """The tiny profile's pipeline on the world at ``root`` (profiles do not pickle)."""
    world = World(Path(root))
    return Pipeline(
        _profile(world), workspace, model_dir=world.base, prompts=PROMPTS, progress=False
    )


def _run_pipeline(root: str, workspace: str, counts: str, rows: str, start: Any) -> None:
    """Child: the whole pipeline, started with the other child; its rows into ``rows``."""
    _count_stages(counts)
    pipeline = _pipeline(root, workspace)
    start.wait(PATIENCE_S)
    Path(rows).write_text(json.dumps(summarise(pipeline.run())))


def test_two_concurrent_runs_share_every_stage(
    world: World, tmp_path: Path, start_process: Callable[..., BaseProcess]
) -> None:
    workspace, counts = tmp_path / "ws", tmp_path / "counts"
    start = FORK.Barrier(2)
    common = (str(world.root), str(workspace), str(counts))
    runs = [
        start_process(_run_pipeline, *common, str(tmp_path / f"rows-{i}.json"), start, context=FORK)
        for i in (0, 1)
    ]
    for run in runs:
        run.join(PATIENCE_S)
    assert [run.exitcode for run in runs] == [0, 0]

    first, second = (json.loads((tmp_path / f"rows-{i}.json").read_text()) for i in (0, 1))
    assert [m["method"] for m in first["methods"]] == [
        "utility_only",
        "task_arithmetic",
        "sst_lora_soft",
    ]
    assert first == second
    # each stage once over both runs: two adapters, one Fisher pair, two LoRAs merged into
    # mergekit's cache; eleven records (base on validation and test, safety alone and the
    # utility-only reference on test — the utility-only method's test record is that one —,
    # one utility-only, two task-arithmetic and two SST grid points on validation, the two
    # chosen points on test), nine of them merged (all but the base model's two)
    assert _counted(counts) == {"train": 2, "fisher": 2, "merge": 9, "lora": 2, "evaluate": 11}
    assert not (workspace / "merges").exists() or not any((workspace / "merges").iterdir())
    assert not [path for path in workspace.rglob("*") if path.name.startswith(".")]


def _merge_row(root: str, workspace: str, row: int, out: str, counts: str, pause: str) -> None:
    """Child: merge job ``row`` (0: the utility-only reference, base+uppercase; 1: the first
    task-arithmetic grid point, base+safety and base+uppercase) into ``out``; with ``pause``,
    the LoRA merge
    (mergekit's ``merge_and_unload``) touches ``pause + '.started'`` and waits for ``pause``."""
    from peft.tuners.tuners_utils import BaseTuner

    _count_calls(BaseTuner, "merge_and_unload", counts, "lora")
    if pause:
        original = BaseTuner.merge_and_unload

        def paused(*args: Any, **kwargs: Any) -> Any:
            Path(pause + ".started").touch()
            while not Path(pause).exists():
                time.sleep(0.02)
            return original(*args, **kwargs)

        BaseTuner.merge_and_unload = paused
    pipeline = _pipeline(root, workspace)
    jobs = [
        list(pipeline.merges.references())[-1],
        pipeline.merges.sweep_jobs(pipeline.profile.sweeps[1])[0],
    ]
    pipeline.merges.run(jobs[row], Path(out))


def test_a_lora_merge_cache_entry_is_waited_for(
    world: World, tmp_path: Path, start_process: Callable[..., BaseProcess]
) -> None:
    workspace, counts, pause = tmp_path / "ws", tmp_path / "counts", tmp_path / "go"
    _pipeline(str(world.root), str(workspace)).adapters.all()  # reused by both children
    common = (str(world.root), str(workspace))
    paused = start_process(
        _merge_row, *common, 0, str(tmp_path / "a"), str(counts), str(pause), context=FORK
    )
    wait_for(Path(str(pause) + ".started").exists, "the first LoRA merge to start")
    other = start_process(
        _merge_row, *common, 1, str(tmp_path / "b"), str(counts), "", context=FORK
    )
    wait_for(lambda: blocked_on_a_lock(other.pid) or not other.is_alive(), "the second merge")
    assert other.is_alive(), "the second merge did not wait for the LoRA merge in progress"
    pause.touch()
    for run in (paused, other):
        run.join(PATIENCE_S)
    assert [paused.exitcode, other.exitcode] == [0, 0]
    assert _counted(counts) == {"lora": 2}  # base+uppercase once, base+safety once
    cache = workspace / "lora_merge_cache"
    entries = sorted(path.name for path in cache.iterdir())
    assert len(entries) == 2 and not [name for name in entries if name.startswith(".")]
    assert all((cache / name / "config.json").is_file() for name in entries)
    assert all((tmp_path / name / "config.json").is_file() for name in ("a", "b"))
