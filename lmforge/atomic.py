"""Write files and folders so that a reader never sees half of one.

Everything is first written under a temporary name in the destination's folder, then
moved into place with `os.replace` (atomic on POSIX). If the writer fails, the
temporary is removed and whatever was at the destination before is untouched.

Temporary names carry the writer's process id and a random suffix, `.NAME.PID.RAND.tmp`
(and `.old`, `.deleting` for a folder being replaced or removed), so that `clean_temps`
removes what a killed writer left behind and never what a live one is still writing.

A full disk (ENOSPC, EDQUOT) or a read-only one (EROFS, EACCES) while writing raises
DiskFullError / DiskError naming the path: one line for the user, not a traceback from
whichever library happened to be writing (torch.save only says "unexpected pos").
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import DiskError, DiskFullError, LmforgeError

_FULL = {errno.ENOSPC, errno.EDQUOT}
_READ_ONLY = {errno.EROFS, errno.EACCES, errno.EPERM}
# how Rust (safetensors) and C++ libraries spell them when no errno reaches Python
_MESSAGES = {"no space left on device": errno.ENOSPC, "os error 28": errno.ENOSPC,
             "disk quota exceeded": errno.EDQUOT, "os error 122": errno.EDQUOT,
             "read-only file system": errno.EROFS, "os error 30": errno.EROFS}


def _prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


def _aside(path: Path, kind: str) -> Path:
    """A fresh hidden name beside `path` for it to be moved to (`kind`: old, deleting)."""
    return path.with_name(f"{_prefix(path)}{secrets.token_hex(4)}.{kind}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, needed: int | None = None) -> Iterator[Path]:
    """Yield a temporary file path next to `path`; on success rename it to `path`.

    `needed`: the bytes about to be written, named in the message if the disk is full.
    """
    path = Path(path)
    with disk_errors(path, needed):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_prefix(path), suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(tmp)
        try:
            yield tmp
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path, needed=len(data)) as tmp:
        tmp.write_bytes(data)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, needed: int | None = None) -> Iterator[Path]:
    """Yield a temporary folder next to `path`; on success it becomes `path`.

    An existing `path` is replaced only after the new folder is complete (a kill between
    the two renames leaves the old folder aside, and `clean_temps` puts it back).
    """
    path = Path(path)
    with disk_errors(path, needed):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=_prefix(path), suffix=".tmp", dir=path.parent))
        try:
            yield tmp
            if path.exists():
                old = _aside(path, "old")
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old)
            else:
                os.replace(tmp, path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


def remove_dir(path: str | os.PathLike) -> None:
    """Delete folder `path` so that no reader ever sees part of it: it is renamed to a
    hidden `.deleting` name first (one atomic step), then removed."""
    path = Path(path)
    doomed = _aside(path, "deleting")
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


# .NAME.PID.RAND.KIND (RAND: a random suffix), or earlier versions' .NAME.RAND.tmp, .NAME.old
_TEMP = re.compile(r"^\.(?P<name>.+?)\.(?:(?P<pid>\d+)\.)?[^.]+\.(?P<kind>tmp|old|deleting)$")
_OLD = re.compile(r"^\.(?P<name>.+)\.(?P<kind>old)$")


def _alive(pid: int) -> bool:
    if pid == os.getpid():  # an earlier process with our pid: nothing of ours is in flight
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def clean_temps(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Remove the temporaries that killed writers left in `folder` (only those for `name`
    if given); a folder set aside by a replace that never finished goes back in place.
    Returns what was removed or restored."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    done = []
    for p in sorted(folder.iterdir()):
        m = _TEMP.match(p.name) or _OLD.match(p.name)
        if m is None or (name is not None and m["name"] != name):
            continue
        pid = m.groupdict().get("pid")
        if pid is not None and _alive(int(pid)):
            continue
        target = folder / m["name"]
        try:
            if m["kind"] == "old" and not target.exists():
                os.replace(p, target)  # killed between the two renames of atomic_dir
            elif p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink(missing_ok=True)
        except OSError:  # a read-only folder, a race with another cleaner: leave it
            continue
        done.append(p)
    return done


# ---------------------------------------------------------------- disk errors


def disk_errno(e: BaseException) -> int | None:
    """ENOSPC / EDQUOT / EROFS / EACCES / EPERM if `e` (or what caused it) is one."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _FULL | _READ_ONLY:
            return e.errno
        text = str(e).lower()
        for fragment, code in _MESSAGES.items():
            if fragment in text:
                return code
        e = e.__cause__ or e.__context__
    return None


def _nearest(path: Path) -> Path:
    """`path`, or its nearest parent that exists."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n:,} bytes"


def disk_error(e: BaseException, path: str | os.PathLike,
               needed: int | None = None) -> DiskError | None:
    """The one-line error for a failed write of `path`, if a full or read-only disk
    caused it (None otherwise)."""
    code = disk_errno(e)
    path = Path(path)
    if code in _FULL:
        free = shutil.disk_usage(_nearest(path)).free
        need = f"needs about {_mb(needed)}, " if needed else ""
        return DiskFullError(f"the disk is full: cannot write {path} ({need}{_mb(free)} free); "
                             "free some space and run again")
    if code in _READ_ONLY:
        return DiskError(f"cannot write {path}: {os.strerror(code).lower()}")
    return None


@contextlib.contextmanager
def disk_errors(path: str | os.PathLike, needed: int | None = None) -> Iterator[None]:
    """Turn a full or read-only disk met while writing `path` into DiskFullError /
    DiskError (the cause stays attached for --debug); other errors pass unchanged."""
    try:
        yield
    except LmforgeError:
        raise
    except Exception as e:
        err = disk_error(e, path, needed)
        if err is None:
            raise
        raise err from e


def check_run_dir(path: str | os.PathLike, what: str = "run_dir") -> None:
    """Refuse, before any work starts, a run dir that is a file or cannot be written (a
    read-only disk, no permission): a file is created and removed in it, or in its
    nearest existing parent when it does not exist yet."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DiskError(f"{what} {path} is a file, not a folder")
    probe = _nearest(path)
    if not probe.is_dir():
        raise DiskError(f"{what} {path} cannot be made: {probe} is a file")
    try:
        fd, name = tempfile.mkstemp(prefix=".lmforge-write-test.", dir=probe)
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        err = disk_error(e, path)
        if isinstance(err, DiskFullError):
            raise err from None
        raise DiskError(f"{what} {path} is not writable: {(e.strerror or str(e)).lower()}"
                        + (f" ({probe})" if probe != path else "")) from None
