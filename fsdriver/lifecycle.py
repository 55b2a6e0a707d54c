"""Pipeline lifecycle: list pipelines, archive (delete) one, pick idle ones for gc.

Pure and synchronous, over a `Backend`; no mount needed (``mountctl pipeline`` is the shell side,
docs/lifecycle.md the full semantics).

- A pipeline is an id with keys under ``pipeline/<id>/``, or an owner record
  ``owners/pipeline/<id>.json`` (`fsdriver.owners`), or both.  Keys under ``pipeline/`` whose id is
  not a valid name (`layout.NAME_RE`) and objects named ``pipeline/<id>`` itself are not pipelines.
- Its numbers: ``objects`` counts objects, not directory markers (keys ending in "/");
  ``bytes`` is their total size; ``last_write`` is the newest mtime of anything under the prefix,
  markers included (on disk a directory's mtime moves when an entry is added or removed), or the
  owner record's mtime when nothing is under the prefix.
- `archive` deletes the pipeline's objects in batches, then sweeps the prefix (disk directories,
  markers, keys written meanwhile), then removes the owner record *last*: an interrupted archive
  leaves the pipeline listed, and rerunning it finishes the job.  It never touches a key outside
  ``pipeline/<id>/`` other than that one record (``p1`` never reaches ``p10/`` or ``p1x``).
- gc selection: a pipeline is idle when ``last_write < now - idle``; ``now`` is a parameter.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

from . import layout, owners
from .backend import Backend, ObjectInfo
from .errors import NotFound

ROOT = "pipeline/"
BATCH = 1000  # keys per delete_many call (one DeleteObjects request on S3), one progress step
RECORD_READERS = 8  # owner records fetched in parallel by `pipelines`

Progress = Callable[[int, int, int, int], None]  # (done objects, done bytes, total objects, total bytes)


@dataclass(frozen=True)
class PipelineSummary:
    id: str
    owner: Optional[str]  # None: no owner record; "": a damaged record (only root/admins own it)
    objects: int
    bytes: int
    last_write: float  # seconds since the epoch


class _Tally:
    """The running numbers of one pipeline's keys."""

    def __init__(self):
        self.objects = self.bytes = 0
        self.last_write = float("-inf")

    def add(self, info: ObjectInfo) -> None:
        if not info.key.endswith("/"):
            self.objects += 1
            self.bytes += info.size
        self.last_write = max(self.last_write, info.mtime)


def _summary(pid: str, tally: _Tally | None, record: owners.PipelineOwner | None,
             record_mtime: float | None) -> PipelineSummary | None:
    if tally is None and record is None:
        return None
    if tally is None:
        return PipelineSummary(pid, record.owner, 0, 0, record_mtime or 0.0)
    return PipelineSummary(pid, record.owner if record else None, tally.objects, tally.bytes, tally.last_write)


def _pipeline_id(key: str) -> str | None:
    """The id of a key under ``pipeline/<id>/``, or None for anything else."""
    pid, sep, _ = key[len(ROOT):].partition("/")
    return pid if sep and layout.NAME_RE.match(pid) else None


def pipelines(backend: Backend) -> list[PipelineSummary]:
    """Every pipeline with its numbers, sorted by id: one LIST of ``pipeline/`` plus the records."""
    tallies: dict[str, _Tally] = {}
    for e in backend.list(ROOT):
        pid = _pipeline_id(e.key) if isinstance(e, ObjectInfo) else None
        if pid is not None:
            tallies.setdefault(pid, _Tally()).add(e)
    record_mtimes = {
        owners.pipeline_of(r.key): r.mtime for r in owners.records(backend)
        if layout.NAME_RE.match(owners.pipeline_of(r.key))
    }
    with ThreadPoolExecutor(RECORD_READERS, thread_name_prefix="owner-get") as pool:
        records = dict(zip(record_mtimes, pool.map(lambda pid: owners.get(backend, pid), record_mtimes)))
    found = []
    for pid in sorted(set(tallies) | set(records)):
        # A record removed between the LIST and its GET reads as None: that pipeline was archived.
        s = _summary(pid, tallies.get(pid), records.get(pid), record_mtimes.get(pid))
        if s is not None:
            found.append(s)
    return found


def summary(backend: Backend, pipeline_id: str) -> PipelineSummary | None:
    """One pipeline's numbers, freshly listed; None if it does not exist."""
    prefix = layout.root_prefix("pipeline", pipeline_id)
    tally = None
    for e in backend.list(prefix):
        if isinstance(e, ObjectInfo):
            tally = tally or _Tally()
            tally.add(e)
    record, record_mtime = owners.get(backend, pipeline_id), None
    if record is not None and tally is None:
        try:
            record_mtime = backend.head(owners.record_key(pipeline_id)).mtime
        except NotFound:  # removed since the GET: archived meanwhile
            record = None
    return _summary(pipeline_id, tally, record, record_mtime)


def is_idle(s: PipelineSummary, idle: float, now: float) -> bool:
    """Whether ``s`` was last written more than ``idle`` seconds before ``now``."""
    return s.last_write < now - idle


def idle_pipelines(backend: Backend, idle: float, now: float) -> list[PipelineSummary]:
    """The gc candidates: pipelines whose last write is older than ``now - idle``, sorted by id."""
    return [s for s in pipelines(backend) if is_idle(s, idle, now)]


def _batches(items: list, n: int) -> Iterable[list]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


class StillActive(Exception):
    """gc deleted a pipeline's old objects but kept it: some were written after the cutoff."""

    def __init__(self, pipeline_id: str, kept: int, objects: int, nbytes: int):
        super().__init__(f"pipeline {pipeline_id}: {kept} object(s) written during gc were kept, "
                         "with the pipeline and its owner")
        self.kept, self.objects, self.bytes = kept, objects, nbytes


def archive(backend: Backend, pipeline_id: str, progress: Progress | None = None,
            written_before: float | None = None) -> tuple[int, int]:
    """Delete everything of one pipeline; returns (objects, bytes) deleted.

    Order: the listed objects in batches of `BATCH` (``progress`` after each), then a sweep of
    the prefix (markers, directories, keys written meanwhile: counted in objects, not in bytes),
    then the owner record.  Archiving a pipeline that does not exist does nothing: (0, 0).

    With ``written_before`` (gc), only objects last written before it are deleted; if the pipeline
    holds anything newer when they are gone, the sweep and the owner record's removal are skipped
    and `StillActive` is raised: a write acknowledged during gc is never lost.
    """
    prefix = layout.root_prefix("pipeline", pipeline_id)  # InvalidName before anything is touched
    objects = [e for e in backend.list(prefix) if isinstance(e, ObjectInfo) and not e.key.endswith("/")
               and (written_before is None or e.mtime < written_before)]
    total_objects, total_bytes = len(objects), sum(e.size for e in objects)
    done_objects = done_bytes = 0
    for batch in _batches(objects, BATCH):
        backend.delete_many([e.key for e in batch])
        done_objects += len(batch)
        done_bytes += sum(e.size for e in batch)
        if progress:
            progress(done_objects, done_bytes, total_objects, total_bytes)
    if written_before is not None:
        newer = sum(1 for e in backend.list(prefix) if isinstance(e, ObjectInfo) and not e.key.endswith("/"))
        if newer:
            raise StillActive(pipeline_id, newer, total_objects, total_bytes)
    swept = backend.delete_prefix(prefix)
    owners.remove(backend, pipeline_id)
    return total_objects + swept, total_bytes
