"""The :class:`~sst_merge_plugin.method.session.MergeSession` of the mergekit merge being run.

mergekit calls a merge method once per output tensor with no handle on the run it belongs to.
The planner hook (:mod:`.registration`) validates the planned merge and *activates* a session;
the method's ``merge_group`` records into the active session; the ``run_merge`` hook writes the
report and adapter from it and releases it. mergekit runs one merge at a time per process; a
method called outside a planned merge (``mergekit.merge_methods.merge_tensors``) gets a
per-method default session that is never reported.
"""

from __future__ import annotations

import threading

from sst_merge_plugin.method.session import MergeSession

_ACTIVE: MergeSession | None = None
_DEFAULTS: dict[str, MergeSession] = {}
_LOCK = threading.Lock()


def activate(session: MergeSession) -> None:
    """Make ``session`` the one the methods record into (replacing any previous one)."""
    global _ACTIVE
    with _LOCK:
        _ACTIVE = session


def active() -> MergeSession | None:
    """The session of the merge being run, if a planned merge activated one."""
    return _ACTIVE


def release() -> MergeSession | None:
    """Deactivate and return the active session."""
    global _ACTIVE
    with _LOCK:
        session, _ACTIVE = _ACTIVE, None
    return session


def current(method: str) -> MergeSession:
    """The active session if it is ``method``'s, else ``method``'s default session."""
    session = _ACTIVE
    if session is not None and session.method == method:
        return session
    with _LOCK:
        return _DEFAULTS.setdefault(method, MergeSession(method))
