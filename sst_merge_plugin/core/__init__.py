"""Framework-free torch math of SST-Merge (no mergekit / FusionBench imports)."""
