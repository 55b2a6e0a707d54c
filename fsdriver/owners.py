"""Who owns a pipeline: one small JSON record per pipeline, kept in the backend.

Every node that mounts the bucket reads the same record, so they all agree on the owner::

    owners/pipeline/<id>.json   {"owner": "alice", "uid": 1001, "created": 1763800000.5, "host": "node-3"}

The record is created with a conditional put (``if_none_match``), so when two users create the
same pipeline at once exactly one becomes its owner.  It is deleted last when the pipeline is
archived (after its data), so an interrupted archive still shows the pipeline and can be rerun.
A pipeline without a record (written before records existed, or by plain S3 tools) has no owner:
the mount shows it as the mount owner's (see docs/permissions.md).  ``owner`` is a user *name*:
uids can differ between nodes, names come from the shared user database.
"""

import json
import socket
import time
from dataclasses import dataclass
from typing import Iterator, Optional

from . import layout
from .backend import Backend, ObjectInfo
from .errors import NotFound, PreconditionFailed

PREFIX = "owners/pipeline/"
SUFFIX = ".json"


@dataclass(frozen=True)
class PipelineOwner:
    pipeline: str
    owner: str
    uid: int  # the owner's uid on the node that created the record (for information only)
    created: float


def record_key(pipeline: str) -> str:
    return PREFIX + layout.check_name(pipeline, "pipeline id") + SUFFIX


def _parse(pipeline: str, data: bytes) -> PipelineOwner:
    try:
        d = json.loads(data)
        return PipelineOwner(pipeline, str(d["owner"]), int(d.get("uid", -1)), float(d.get("created", 0)))
    except (ValueError, KeyError, TypeError):
        # A damaged record must not hand the pipeline to anyone: nobody but root owns it.
        return PipelineOwner(pipeline, "", -1, 0.0)


def get(backend: Backend, pipeline: str) -> Optional[PipelineOwner]:
    """The pipeline's owner record, or None if it has none."""
    try:
        data = backend.get_range(record_key(pipeline), 0)
    except NotFound:
        return None
    return _parse(pipeline, data)


def _record(owner: str, uid: int) -> dict:
    return {"owner": owner, "uid": uid, "created": time.time(), "host": socket.gethostname()}


def set_owner(backend: Backend, pipeline: str, owner: str, uid: int) -> PipelineOwner:
    """Give ``pipeline`` to ``owner`` whoever owned it (`mountctl pipeline chown`, admins)."""
    record = _record(owner, uid)
    backend.put_bytes(record_key(pipeline), json.dumps(record).encode())
    return PipelineOwner(pipeline, owner, uid, record["created"])


def claim(backend: Backend, pipeline: str, owner: str, uid: int) -> PipelineOwner:
    """Make ``owner`` the owner of ``pipeline`` unless it has one; returns the owner in force."""
    record = _record(owner, uid)
    try:
        backend.put_bytes(record_key(pipeline), json.dumps(record).encode(), if_none_match=True)
        return PipelineOwner(pipeline, owner, uid, record["created"])
    except PreconditionFailed:
        existing = get(backend, pipeline)
        if existing is None:  # removed between our put and our read: try once more
            return claim(backend, pipeline, owner, uid)
        return existing


def remove(backend: Backend, pipeline: str) -> None:
    try:
        backend.delete(record_key(pipeline))
    except NotFound:
        pass


def records(backend: Backend) -> Iterator[ObjectInfo]:
    """Every owner record object (``<id>`` is ``key[len(PREFIX):-len(SUFFIX)]``)."""
    for e in backend.list(PREFIX):
        if isinstance(e, ObjectInfo) and e.key.endswith(SUFFIX):
            yield e


def pipeline_of(key: str) -> str:
    return key[len(PREFIX):-len(SUFFIX)]
