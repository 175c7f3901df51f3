"""Benchmark pipeline shared by ``benchmarks/`` and ``sst-merge demo``: adapter training, cached
stages (adapters → Fisher files → merges → evaluation), method grids and reports."""
