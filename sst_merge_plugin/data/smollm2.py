"""SmolLM2-135M-Instruct: the ``smollm2`` entry of :mod:`.models`, under its original names.

The conversion and the folder checks live in :mod:`sst_merge_plugin.data.models`, shared by
every registered model; this module keeps the SmolLM2 names existing callers use.
"""

from __future__ import annotations

import os
from pathlib import Path

from sst_merge_plugin.data.assets import Downloader
from sst_merge_plugin.data.models import (
    LOGIT_TOLERANCE,
    MARKER,
    MODELS,
    conversion_record,
    convert_gguf,
    model_dir,
    model_dir_status,
    model_location,
)

__all__ = [
    "CHECK_PROMPT",
    "GGUF_ASSET",
    "LOGIT_TOLERANCE",
    "MARKER",
    "MODEL_NAME",
    "conversion_record",
    "convert_gguf",
    "model_dir_status",
    "smollm2_location",
    "smollm2_model_dir",
]

SPEC = MODELS["smollm2"]
GGUF_ASSET = SPEC.gguf_asset
MODEL_NAME = SPEC.folder
CHECK_PROMPT = SPEC.check_prompt


def smollm2_location(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the converted folder lives: ``<cache>/models/SmolLM2-135M-Instruct-Q4_1-f32``."""
    return model_location(SPEC, cache_dir)


def smollm2_model_dir(
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    downloader: Downloader | None = None,
    verify: bool = False,
) -> Path:
    """The converted SmolLM2 folder, fetched and converted on first use
    (:func:`~sst_merge_plugin.data.models.model_dir` of the ``smollm2`` entry)."""
    return model_dir(SPEC, cache_dir, downloader=downloader, verify=verify)
