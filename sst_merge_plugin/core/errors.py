"""Exception types shared by the whole plugin.

Every error a user can cause (bad shapes, non-finite values, missing Fisher entries, corrupted
files, unknown parameters) is raised as an :class:`SSTError` subclass with a message that names
the offending object, so the CLI and the host adapters can report it without a traceback.
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


class FisherFileError(SSTError):
    """A Fisher file is missing entries, corrupted, or inconsistent with another file or model."""


class AssetError(SSTError):
    """An offline asset could not be fetched, verified or converted."""
