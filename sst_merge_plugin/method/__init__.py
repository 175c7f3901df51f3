"""The host-neutral method layer: what both hosts (mergekit, FusionBench) call.

* :mod:`.settings` — the four methods, their parameter table and the validated settings;
* :mod:`.tensor_merge` — the per-tensor merge (utility merge + SST projection / baselines);
* :mod:`.fisher_sources` — the Fisher files of a merge, opened once and shared;
* :mod:`.checks` — does a Fisher file belong to the model being merged;
* :mod:`.session`, :mod:`.report`, :mod:`.adapter` — per-run records, the JSON report and
  model-card section, the PEFT adapter output.

The hosts only translate: :mod:`sst_merge_plugin.mergekit` (registration, planner hooks,
mergekit config ↔ settings) and :mod:`sst_merge_plugin.fusion_bench` (the algorithm class,
pool ↔ settings, Fisher collection planning). Neither imports the other.
"""
