"""Fisher collection (hooks on the Linear layers of an HF causal LM) and the Fisher file format.

* :mod:`.targets` — which Linear layers, keyed by dense weight name; :mod:`.adapter` — LoRA
  adapter folders and their subspaces; :mod:`.statistics` — the estimator and accumulators;
  :mod:`.hooks` — forward/backward hooks with padding masks; :mod:`.objectives` and
  :mod:`.sampling` — refusal / kl / lm data and labels; :mod:`.collect` — the library API;
  :mod:`.file` — the Fisher file; :mod:`.fingerprint` — ``model_fingerprint``; :mod:`.cli` —
  ``sst-merge fisher``.

This package module stays import-light (no torch) so the CLI parser can use the names below.
"""

#: Fisher structures (DESIGN 1.1)
KINDS: tuple[str, ...] = ("diag", "kfac", "lora")
#: collection objectives (see :mod:`.objectives`)
OBJECTIVES: tuple[str, ...] = ("refusal", "kl", "lm")
