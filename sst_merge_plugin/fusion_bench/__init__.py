"""fusion_bench subpackage."""
