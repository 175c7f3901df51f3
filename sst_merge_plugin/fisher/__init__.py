"""Fisher collection (hooks on the Linear layers of an HF causal LM) and the Fisher file format.

* :mod:`.request` — :class:`~.request.FisherRequest`, everything one collection needs, checked
  on construction; :mod:`.collect` — the library API, from a loaded model
  (:func:`~.collect.collect_fisher`) up to a request (:func:`~.collect.collect_fisher_file`);
  :mod:`.cache` — requests cached by content; :mod:`.cli` — ``sst-merge fisher``.
* :mod:`.targets` — which Linear layers, keyed by dense weight name; :mod:`.adapter` — LoRA
  adapter folders and their subspaces; :mod:`.hooks` — forward/backward hooks with padding
  masks; :mod:`.objectives` and :mod:`.sampling` — refusal / kl / lm data and labels.
* :mod:`.file` — the Fisher file; :mod:`.fingerprint` — ``model_fingerprint``.

The kinds (what is accumulated per layer) are registered in :mod:`sst_merge_plugin.core.kinds`.
This package module stays import-light (no torch) so the CLI parser can use the names below.
"""

from sst_merge_plugin.choice import Choice


class Objective(Choice):
    """What a Fisher is the Fisher *of* (:mod:`.objectives`, ``docs/design.md`` §2.4)."""

    #: empirical Fisher of refusal targets on harmful prompts (the gain, ``F_harm``)
    REFUSAL = "refusal"
    #: true Fisher of the model's own sampled responses (the cost, ``F_benign``)
    KL = "kl"
    #: empirical Fisher of given prompt/response completions
    LM = "lm"
