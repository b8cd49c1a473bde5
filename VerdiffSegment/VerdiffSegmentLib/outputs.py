"""All of a run's outputs or none: ``staged_outputs(outdir)``, the CLI's one way to write.

    with staged_outputs(outdir) as staging:
        ...write every output file into staging...

How it is atomic, and the decisions where the promise needed one:

- Files are written into a hidden folder *inside* OUTDIR (``.verdiff-staging-*``), so
  the final renames never cross file systems and OUTDIR's parent need not be writable.
- On success the staged files are flushed to disk and the folder is renamed
  ``.verdiff-commit-*`` (one atomic rename: "the new set is complete"). Then the old
  ``*.json`` summaries the new set replaces are deleted, each other file is renamed over
  its old namesake, and the JSON summaries come last. So whenever ``S.json`` exists,
  every file it lists belongs to the same run; an earlier run's outputs stay untouched
  until the new set is complete on disk.
- A failure while writing (disk full, read-only or unwritable folder, an error in a
  writer) removes the staging folder, and OUTDIR too if this run created it, and raises
  one ``VerdiffError``; OUTDIR is left as it was.
- A kill (SIGKILL, power loss) can leave a hidden ``.verdiff-staging-*`` folder (not
  complete: deleted by the next run into OUTDIR) or a ``.verdiff-commit-*`` folder (the
  kill came within the few milliseconds of renames: the next run into OUTDIR finishes
  that commit first, JSON last). Never a visible partial file.
- Two runs into the same OUTDIR serialise on an exclusive ``flock`` of
  ``OUTDIR/.verdiff.lock``, held from staging to commit: the second waits (a few seconds
  at most: the first has already computed its result) and then replaces the first's set
  with its own, complete. The lock file is removed when released. (On Windows, which has
  no ``flock``, runs are not serialised; everything else holds.)
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import VerdiffError

try:
    import fcntl
except ImportError:  # Windows: no flock; runs into one folder are not serialised there
    fcntl = None

LOCK_NAME = ".verdiff.lock"
STAGING_PREFIX = ".verdiff-staging-"
COMMIT_PREFIX = ".verdiff-commit-"


def check_output_folder(outdir: str | Path) -> None:
    """Refuse, before any work, an OUTDIR that cannot be written: a file, or a folder (or its
    nearest existing parent) without write permission or on a read-only file system. A full
    disk shows only when writing (``staged_outputs``)."""
    outdir = Path(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise VerdiffError(f"output {outdir} exists and is not a folder")
    existing = outdir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise VerdiffError(f"cannot write into output folder {outdir}: {existing} is not a folder")
    read_only = hasattr(os, "statvfs") and bool(os.statvfs(existing).f_flag & getattr(os, "ST_RDONLY", 1))
    if read_only or not os.access(existing, os.W_OK | os.X_OK):
        raise VerdiffError(f"cannot write into output folder {outdir}: {os.strerror(errno.EROFS if read_only else errno.EACCES)}")


@contextlib.contextmanager
def staged_outputs(outdir: str | Path) -> Iterator[Path]:
    """Yield an empty staging folder; when the block ends without error, move its files into
    ``outdir`` as described in the module docstring. Any failure (including one in the block)
    leaves ``outdir`` as it was and is raised as ``VerdiffError`` when it is an OS error."""
    outdir = Path(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise VerdiffError(f"output {outdir} exists and is not a folder")
    created = not outdir.exists()
    lock = staging = None
    try:
        try:
            outdir.mkdir(parents=True, exist_ok=True)
            lock = _lock(outdir)
            _recover(outdir)
            staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=outdir))
        except OSError as error:
            raise VerdiffError(f"cannot write into output folder {outdir}: {_reason(error, outdir)}") from None
        try:
            yield staging
            _commit(staging, outdir)
        except (OSError, RuntimeError) as error:  # RuntimeError: ITK's writers
            raise VerdiffError(f"cannot write the outputs into {outdir}: {_reason(error, outdir)}") from None
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if lock is not None:
            _unlock(outdir, lock)
        if created:
            with contextlib.suppress(OSError):
                outdir.rmdir()  # only if empty: this run failed before its commit


def _reason(error: Exception, outdir: Path) -> str:
    """One line: the OS's reason, or for a writer's error the disk being full when it is."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    with contextlib.suppress(OSError):
        if shutil.disk_usage(outdir).free < (1 << 20):
            return os.strerror(errno.ENOSPC)
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1][:200] if lines else type(error).__name__


def _lock(outdir: Path) -> int:
    """An exclusive flock on OUTDIR/.verdiff.lock; blocks while another run holds it. The lock
    file may have been removed by its previous holder between our open and our flock: then
    our lock is on a file nobody else will see, so open it again."""
    path = outdir / LOCK_NAME
    while True:
        descriptor = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        if fcntl is None:
            return descriptor
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        try:
            if os.stat(path).st_ino == os.fstat(descriptor).st_ino:
                return descriptor
        except FileNotFoundError:
            pass
        os.close(descriptor)


def _unlock(outdir: Path, descriptor: int) -> None:
    with contextlib.suppress(OSError):
        os.unlink(outdir / LOCK_NAME)
    os.close(descriptor)  # releases the flock


def _recover(outdir: Path) -> None:
    """Under the lock, what an earlier killed run left: staging folders (incomplete) are
    deleted, commit folders (complete) are finished."""
    for leftover in sorted(outdir.iterdir()):
        if leftover.name.startswith(STAGING_PREFIX):
            shutil.rmtree(leftover, ignore_errors=True)
        elif leftover.name.startswith(COMMIT_PREFIX):
            _move_in(leftover, outdir)


def _commit(staging: Path, outdir: Path) -> None:
    for item in staging.iterdir():
        _fsync(item)
    committed = staging.with_name(COMMIT_PREFIX + staging.name[len(STAGING_PREFIX) :])
    os.replace(staging, committed)
    _fsync(outdir)
    _move_in(committed, outdir)


def _move_in(committed: Path, outdir: Path) -> None:
    """Rename the files of a complete set over OUTDIR's, the JSON summaries last; delete the
    old summaries first so that no summary ever stands beside files of another run."""
    summaries = sorted(p for p in committed.iterdir() if p.suffix == ".json")
    for summary in summaries:
        with contextlib.suppress(FileNotFoundError):
            (outdir / summary.name).unlink()
    for item in sorted(p for p in committed.iterdir() if p.suffix != ".json") + summaries:
        os.replace(item, outdir / item.name)
    _fsync(outdir)
    committed.rmdir()


def _fsync(path: Path) -> None:
    """Flush a file, or a folder's entries (the renames), to disk."""
    if os.name == "nt" and path.is_dir():
        return  # Windows cannot open a folder; NTFS journals its renames
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
