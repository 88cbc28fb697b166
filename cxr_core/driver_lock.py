"""One driver per sweep: a lock on ``STORAGE/NAME`` that a crashed or killed driver does not leave stuck.

Two drivers on the same results folder (a second ``jobs.sweep`` with the same ``--name``, or ``--resume`` while
the first still runs) would both schedule the sweep's trials and overwrite each other's experiment state. The
second is refused with one line naming the first (host, pid, start time).

- A local or NFS ``--storage``: ``fcntl.flock`` on ``STORAGE/.NAME.driver-lock``. The kernel (or the NFS
  server, when the client's lease lapses) releases it when the holder dies however it dies, so nothing is left
  to clean up; the file itself is removed on a normal exit and is harmless when left behind.
- A URI (``s3://``, ``gs://``, ...), which has no locks: ``STORAGE/.NAME.driver-lock.json`` holds the holder's
  host, pid and a heartbeat the holder rewrites every :data:`HEARTBEAT_S` seconds. A lock whose heartbeat is older
  than :data:`STALE_S` belongs to a driver that died and is taken over. Object stores give no atomic
  create-if-absent through pyarrow, so a taker writes its claim, waits, and reads it back: of two drivers
  starting within the same second, at most one keeps the lock.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from cxr_core.errors import CxrError

HEARTBEAT_S = 20.0
STALE_S = 90.0
SETTLE_S = 2.0


def _holder() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}


def _refusal(target: str, holder: dict, extra: str = "") -> CxrError:
    who = (
        f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, started {holder.get('started', '?')}"
    )
    return CxrError(
        f"another driver is running the sweep {target} ({who}{extra}); wait for it to finish, or stop it "
        "(`kill -TERM PID` saves its state), then continue with --resume; two drivers on one sweep would "
        "overwrite each other's results"
    )


class DriverLock:
    """The held lock of one sweep; :meth:`release` it when the driver ends (a dead driver's lock lapses)."""

    def release(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def __enter__(self) -> DriverLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class _FileLock(DriverLock):
    def __init__(self, path: Path, handle):
        self.path, self.handle = path, handle

    def release(self) -> None:
        if self.handle is None:
            return
        try:
            # Unlink while holding the lock: a waiter that opened this inode re-checks and retries (acquire).
            self.path.unlink(missing_ok=True)
        except OSError:
            pass
        self.handle.close()  # closing drops the flock
        self.handle = None


def _lock_file(path: Path, target: str) -> _FileLock:
    """``flock`` on ``path`` (created if needed), never waiting: the holder is named when it is taken."""
    for _ in range(20):
        try:
            handle = open(path, "a+")
        except OSError as exc:
            raise CxrError(
                f"cannot create the driver lock {path} ({exc.strerror or exc}); check --storage"
            ) from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            try:
                holder = json.loads(handle.read() or "{}")
            except ValueError:
                holder = {}
            handle.close()
            raise _refusal(target, holder) from None
        except OSError as exc:
            handle.close()
            raise CxrError(
                f"cannot lock {path} ({exc.strerror or exc}); the storage must support file locks (local disks "
                "and NFSv4 do), or use a URI such as s3://bucket/path"
            ) from None
        try:  # the holder before us may have removed the file after we opened it: then lock the new one
            same = os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps(_holder()))
            handle.flush()
            lock = _FileLock(path, handle)
            atexit.register(lock.release)  # tidy on any normal exit; a killed holder's flock lapses anyway
            return lock
        handle.close()
    raise CxrError(
        f"cannot take the driver lock {path}: it keeps being replaced; try again"
    )  # pragma: no cover


class _HeartbeatLock(DriverLock):
    """A lock object on a URI, kept alive by a heartbeat thread."""

    def __init__(self, fs, path: str, claim: dict, heartbeat_s: float):
        self.fs, self.path, self.claim = fs, path, claim
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(heartbeat_s,), name="driver-lock", daemon=True)
        self._thread.start()

    def _beat(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                _write_json(self.fs, self.path, {**self.claim, "heartbeat": time.time()})
            except OSError:
                pass  # a storage hiccup: the next beat tries again; STALE_S spans several beats

    def release(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        try:
            if _read_json(self.fs, self.path).get("token") == self.claim["token"]:
                self.fs.delete_file(self.path)
        except OSError:
            pass


def _read_json(fs, path: str) -> dict:
    import pyarrow.fs

    if fs.get_file_info(path).type == pyarrow.fs.FileType.NotFound:
        return {}
    try:
        with fs.open_input_stream(path) as f:
            return json.loads(f.read().decode("utf-8") or "{}")
    except ValueError:
        return {}


def _write_json(fs, path: str, data: dict) -> None:
    with fs.open_output_stream(path) as f:
        f.write(json.dumps(data).encode("utf-8"))


def _lock_uri(storage: str, name: str, target: str, *, stale_s: float, heartbeat_s: float, settle_s: float):
    from cxr_core.tune_runner import storage_filesystem

    fs, root = storage_filesystem(storage)
    path = f"{root.rstrip('/')}/.{name}.driver-lock.json"
    held = _read_json(fs, path)
    age = time.time() - float(held.get("heartbeat", 0))
    if held and age < stale_s:
        raise _refusal(target, held, f", last heartbeat {age:.0f} s ago")
    claim = {**_holder(), "token": uuid.uuid4().hex}
    _write_json(fs, path, {**claim, "heartbeat": time.time()})
    time.sleep(settle_s)
    now = _read_json(fs, path)
    if now.get("token") != claim["token"]:
        raise _refusal(target, now, ", it started at the same moment")
    lock = _HeartbeatLock(fs, path, claim, heartbeat_s)
    atexit.register(lock.release)
    return lock


def acquire(
    storage: str,
    name: str,
    *,
    stale_s: float = STALE_S,
    heartbeat_s: float = HEARTBEAT_S,
    settle_s: float = SETTLE_S,
) -> DriverLock:
    """Take the driver lock of the sweep ``STORAGE/NAME`` (``storage`` a local path or a URI) or refuse.

    Args:
        stale_s, heartbeat_s, settle_s: URI locks only (see the module's docstring).

    Raises:
        CxrError: another live driver holds it (the line names it), or the lock cannot be made.
    """
    target = f"{storage.rstrip('/')}/{name}"
    if "://" in storage:
        return _lock_uri(storage, name, target, stale_s=stale_s, heartbeat_s=heartbeat_s, settle_s=settle_s)
    root = Path(storage)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CxrError(
            f"cannot create the storage folder {root} ({exc.strerror or exc}); check --storage"
        ) from None
    return _lock_file(root / f".{name}.driver-lock", target)
