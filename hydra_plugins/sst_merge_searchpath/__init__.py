"""Hydra plugin package of SST-Merge (see :mod:`.sst_merge_searchpath`)."""
