"""SST-Merge: safety-subspace task merging for LoRA-adapted causal LMs.

Subpackages: ``core`` (framework-free torch math), ``fisher`` (Fisher collection hook and file
format), ``data`` (offline assets and prompt sets), ``mergekit`` and ``fusion_bench`` (host
adapters), ``evaluation`` (refusal judge, reports).
"""

__version__ = "0.1.0"
