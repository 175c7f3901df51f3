"""The plugin's base error and the errors of the core math.

Every error a user can cause (bad shapes, non-finite values, missing Fisher entries, corrupted
files, unknown parameters) is raised as an :class:`SSTError` subclass with a message that names
the offending object, so the CLI and the host adapters can report it without a traceback. The
other packages add their own subclasses where the concept lives (``FisherFileError`` in
:mod:`sst_merge_plugin.fisher.file`, ``AssetError`` in :mod:`sst_merge_plugin.data.assets`).
"""

from __future__ import annotations


class SSTError(ValueError):
    """Base class of all user-facing SST-Merge errors."""


class FisherValidationError(SSTError):
    """A Fisher factor is malformed: wrong shape, non-finite, asymmetric or not PSD."""


class SolverError(SSTError):
    """A generalized eigenproblem could not be solved (e.g. singular benign Fisher)."""


class SelectionError(SSTError):
    """Invalid selection parameters (unknown mode, k < 0, energy outside (0, 1], ...)."""
