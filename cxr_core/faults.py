"""Faults that come from the environment rather than from the user's files (docs/faults.md).

A cluster address that nothing answers, a port that is not a Ray head, a head whose authentication differs from
the driver's, a storage that cannot be reached or written, SIGTERM from a scheduler, a full disk: each becomes
one :class:`~cxr_core.errors.CxrError` line that names the problem and the fix, within a bounded time (default
:data:`DEFAULT_TIMEOUT_S` seconds, ``--connect-timeout`` or ``$CXR_CONNECT_TIMEOUT`` to wait longer), checked
before Ray starts wherever that is possible. Nothing here runs per epoch: the probes run once per command.

This module imports no heavy library at import time (no torch, no Ray), so a wrong ``--address`` fails in
about a second.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from cxr_core.errors import CxrError

DEFAULT_TIMEOUT_S = 20.0
TIMEOUT_ENV = "CXR_CONNECT_TIMEOUT"
SIGTERM_EXIT = 143  # 128 + SIGTERM, what shells and schedulers report for a process ended by SIGTERM
CLUSTER_DOCS = "README.md, 'Run on a Ray cluster'"

T = TypeVar("T")


class Abandoned(CxrError):
    """A bounded call that did not return in time. Its thread is still blocked inside a library (pyarrow's S3
    client, for one, then also blocks interpreter exit), so the entry point exits at once (``os._exit``) after
    printing the line, instead of waiting for it."""

    exit_now = True


def connect_timeout(value: float | None = None) -> float:
    """Seconds to wait for a cluster or a storage to answer: ``value`` (a flag), else ``$CXR_CONNECT_TIMEOUT``,
    else :data:`DEFAULT_TIMEOUT_S`.

    Raises:
        CxrError: the value is not a positive number.
    """
    source = "--connect-timeout"
    if value is None:
        text = os.environ.get(TIMEOUT_ENV, "").strip()
        if not text:
            return DEFAULT_TIMEOUT_S
        source = f"${TIMEOUT_ENV}"
        try:
            value = float(text)
        except ValueError:
            raise CxrError(f"{source} must be a number of seconds, got {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise CxrError(f"{source} must be a positive number of seconds, got {value}")
    return float(value)


def bounded(fn: Callable[[], T], *, seconds: float, what: str, fix: str) -> T:
    """``fn()`` in a daemon thread, waited for at most ``seconds``: its value, or its exception re-raised.

    Raises:
        Abandoned: ``fn`` did not return in time (the message: ``{what} did not answer within N s; {fix}``).
    """
    box: dict = {}

    def work() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: B036 - handed to the caller's thread as it is
            box["error"] = exc

    thread = threading.Thread(target=work, name=f"bounded: {what}", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise Abandoned(f"{what} did not answer within {seconds:g} s; {fix}")
    if "error" in box:
        raise box["error"]
    return box["value"]


def watchdog(seconds: float, message: str) -> threading.Timer:
    """A started timer that, unless cancelled within ``seconds``, prints ``error: MESSAGE`` and ends the process
    with exit code 2: for calls that cannot run in another thread (``ray.init``). Cancel it when the call returns.
    """

    def fire() -> None:
        print(f"error: {message}", file=sys.stderr, flush=True)
        os._exit(2)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    return timer


# ------------------------------------------------------------------------------------------------ cluster

_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])  # + empty SETTINGS
_GCS_PROBE = """
import json, sys
try:
    from ray._raylet import GcsClient
    GcsClient(address=sys.argv[1]).internal_kv_get(b"cxr-probe", None, timeout=float(sys.argv[2]))
    print(json.dumps({"ok": True}))
except Exception as exc:
    print(json.dumps({"error": type(exc).__name__, "text": str(exc).split(". Ensure")[0]}))
"""


def _split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise CxrError(
            f"--address must be auto or HOST:PORT of the Ray head (e.g. 10.0.0.5:6379), got {address!r}"
        )
    return host.strip("[]"), int(port)


def _resolve_auto(address: str) -> str:
    """``auto`` -> the HOST:PORT of the Ray instance started on this machine with ``ray start`` (or
    ``$RAY_ADDRESS``), as ``ray.init`` finds it; like ``ray.init``, it turns token authentication on when this
    machine holds a token and ``RAY_AUTH_MODE`` is unset."""
    try:
        from ray._private.services import canonicalize_bootstrap_address_or_die
    except ImportError:  # pragma: no cover - a Ray without the helper: let ray.init find it
        return address
    try:
        resolved = canonicalize_bootstrap_address_or_die(address)
    except (ConnectionError, ValueError) as exc:
        raise CxrError(
            f"--address {address}: no running Ray cluster found on this machine ({exc}); start its head with "
            "`ray start --head` here, or pass --address HOST:PORT of the head"
        ) from None
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )

        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    except ImportError:  # pragma: no cover - a Ray without token authentication
        pass
    return resolved


def _connect(host: str, port: int, deadline: float, timeout: float) -> socket.socket:
    """A TCP connection to ``host:port``, retried (a head that is still starting) until ``deadline``."""
    last: OSError | None = None
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            return socket.create_connection((host, port), timeout=min(3.0, left))
        except socket.gaierror as exc:
            raise CxrError(
                f"--address {host}:{port}: the host name {host!r} does not resolve ({exc.strerror}); pass the "
                "head's IP address or a name this machine resolves"
            ) from None
        except OSError as exc:
            last = exc
            time.sleep(min(0.5, max(deadline - time.monotonic(), 0)))
    why = (last.strerror or type(last).__name__) if last is not None else "no time left"
    raise CxrError(
        f"--address {host}:{port}: nothing answers there ({why}, tried for "
        f"{timeout:g} s); check the head's IP and port (`ray start --head` prints them; "
        f"the default port is 6379) and that the head is running, or wait longer with --connect-timeout SECONDS "
        f"(${TIMEOUT_ENV})"
    )


def _speaks_http2(sock: socket.socket, deadline: float) -> str | None:
    """None when the server answers an HTTP/2 preface with a SETTINGS frame (as Ray's gRPC servers do), else
    what it did instead."""
    try:
        sock.settimeout(max(min(3.0, deadline - time.monotonic()), 0.1))
        sock.sendall(_HTTP2_PREFACE)
        head = b""
        while len(head) < 9:
            chunk = sock.recv(9 - len(head))
            if not chunk:
                break
            head += chunk
    except TimeoutError:
        return "it accepted the connection but sent nothing back"
    except OSError as exc:
        return f"the connection failed: {exc.strerror or exc}"
    finally:
        sock.close()
    if len(head) == 9 and head[3] == 0x4:
        return None
    if head.startswith((b"HTTP/", b"<")):  # a status line, or an HTML page (an error page without one)
        return f"it answered as an HTTP/1 web server ({head.decode('latin-1').split(' ')[0]!r}...), not gRPC"
    if not head:
        return "it closed the connection without answering"
    return f"it answered with bytes that are not HTTP/2 ({head[:9]!r})"


def _auth_mode() -> str:
    return (os.environ.get("RAY_AUTH_MODE") or "disabled").strip().lower()


def _auth_error(address: str) -> CxrError:
    if _auth_mode() != "token":
        return CxrError(
            f"the Ray cluster at {address} requires token authentication and this driver has none "
            f"(InvalidAuthToken; RAY_AUTH_MODE is {os.environ.get('RAY_AUTH_MODE', 'unset')!r} here): export "
            "RAY_AUTH_MODE=token RAY_AUTH_TOKEN=<the cluster's token> in the driver's shell, the same as on every "
            f"node ({CLUSTER_DOCS})"
        )
    return CxrError(
        f"the Ray cluster at {address} refused this driver's token (InvalidAuthToken): the token in "
        "RAY_AUTH_TOKEN (or the file in RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token) is not the one the head was "
        f"started with; set the cluster's token, the same on every node and the driver ({CLUSTER_DOCS})"
    )


def probe_cluster(address: str, *, timeout: float) -> str:
    """Check, before ``ray.init``, that ``address`` is a Ray head this driver may join, and return it resolved.

    ``ray.init`` on an address that nothing answers retries for minutes, and on a head with another
    authentication setting prints a screen of ``InvalidAuthToken`` and a traceback. Here: a TCP connection
    (retried until ``timeout``: a head may still be starting), an HTTP/2 handshake (Ray's GCS is a gRPC server),
    then one real GCS request from a child process under the driver's own environment (so with its
    authentication settings), killed if it outlives the time left.

    Args:
        address: ``auto``, ``HOST:PORT``, or ``ray://HOST:PORT`` (Ray Client: only the first two steps).
        timeout: seconds for the whole probe.

    Returns:
        ``HOST:PORT`` of the head (``auto`` resolved), or ``address`` itself for ``ray://``.

    Raises:
        CxrError: nothing answers, it is not a Ray head, or the head refuses this driver's authentication.
    """
    deadline = time.monotonic() + timeout
    client = address.startswith("ray://")
    target = address.removeprefix("ray://") if client else address
    if target == "auto":
        target = _resolve_auto(target)
        if target == "auto":  # pragma: no cover - see _resolve_auto
            return address
    host, port = _split_address(target)
    sock = _connect(host, port, deadline, timeout)
    if os.environ.get("RAY_USE_TLS", "0").lower() not in ("1", "true"):
        problem = _speaks_http2(sock, deadline)
        if problem is not None:
            raise CxrError(
                f"--address {target} is not a Ray head: {problem}; pass the head's GCS address (`ray start --head` "
                "prints it; default port 6379), not the dashboard's (8265), a worker's or another service's port"
            )
    else:
        sock.close()
    if client:
        return address
    left = max(deadline - time.monotonic(), 1.0)
    try:
        proc = subprocess.run([sys.executable, "-c", _GCS_PROBE, target, f"{min(left, 10.0):.1f}"],
                              capture_output=True, text=True, timeout=left)  # fmt: skip
        answer = json.loads(proc.stdout.strip().splitlines()[-1])
    except subprocess.TimeoutExpired:
        raise CxrError(
            f"--address {target} accepted a connection but did not answer as a Ray head within {timeout:g} s; "
            "check that it is the head's GCS port (default 6379) and that the head is healthy, or wait longer "
            f"with --connect-timeout SECONDS (${TIMEOUT_ENV})"
        ) from None
    except (ValueError, IndexError):
        return target  # the probe itself failed (no JSON): ray.init will say more; nothing was refused here
    if answer.get("ok"):
        return target
    if answer.get("error") == "AuthenticationError" or "InvalidAuthToken" in answer.get("text", ""):
        raise _auth_error(target)
    detail = answer.get("text", "").strip().removeprefix("RPC error:").strip()
    raise CxrError(
        f"--address {target} is not a Ray head: it speaks gRPC but does not serve Ray's GCS ({answer.get('error')}"
        f"{': ' + detail if detail else ''}); pass the head's GCS address (`ray start --head` prints it; default "
        "port 6379), not a worker's or another service's port"
    )


# ------------------------------------------------------------------------------------------------ storage


def _probe_name() -> str:
    return f".cxr-probe-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _local_probe(root: Path) -> None:
    """Write and delete a probe file in ``root``, or, when ``root`` does not exist yet, create and remove a
    probe folder in its nearest existing parent (where the sweep's first ``mkdir`` will happen)."""
    if root.exists() and not root.is_dir():
        raise CxrError(f"storage {root} is a file, not a folder; pass --storage a folder")
    existing = root
    while not existing.exists():
        existing = existing.parent
    probe = existing / _probe_name()
    if existing == root:
        with open(probe, "wb") as f:
            f.write(b"cxr-tune storage probe\n")
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    else:
        probe.mkdir()
        probe.rmdir()


def _uri_probe(uri: str) -> None:
    from cxr_core.tune_runner import storage_filesystem

    fs, path = storage_filesystem(uri)
    probe = f"{path.rstrip('/')}/{_probe_name()}"
    with fs.open_output_stream(probe) as f:
        f.write(b"cxr-tune storage probe\n")
    fs.delete_file(probe)


def probe_storage(storage: str, *, timeout: float) -> None:
    """Write a small file where the sweep will write and delete it again, before Ray starts any trial.

    A local or NFS path, or a URI (``s3://``, ``gs://``, ...) through pyarrow as Ray Tune writes it. Leaves
    nothing behind. Bounded by ``timeout``: pyarrow's cloud clients retry an unreachable endpoint for many
    minutes.

    Raises:
        CxrError: the storage cannot be written (read-only, no permission, full, no filesystem for the scheme),
            or :class:`Abandoned` when it did not answer in time.
    """
    uri = "://" in storage
    fix = (
        "check the bucket name, the credentials and the network (every node must reach it), or pass --storage a "
        f"local or NFS path; wait longer with --connect-timeout SECONDS (${TIMEOUT_ENV})"
        if uri
        else f"check the mount (an NFS server that does not answer); wait longer with --connect-timeout "
        f"SECONDS (${TIMEOUT_ENV})"
    )
    try:
        bounded(lambda: _uri_probe(storage) if uri else _local_probe(Path(storage)), seconds=timeout,
                what=f"storage {storage}", fix=fix)  # fmt: skip
    except OSError as exc:  # pyarrow's errors are OSErrors too (ArrowIOError)
        text = " ".join(str(exc).split()) or type(exc).__name__
        if exc.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left" in text:
            raise CxrError(f"storage {storage} is full ({free_space_text(storage)}); free space there or pass "
                           "--storage another folder") from None  # fmt: skip
        raise CxrError(
            f"storage {storage} cannot be written ({text}); pass --storage a folder or bucket that this user can "
            "write, on every node (an NFS path mounted read-write, or a URI such as s3://bucket/path)"
        ) from None


# --------------------------------------------------------------------------------------------- disk full


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_space_text(path: str | Path) -> str:
    """``'12.3 MB free of 64.0 MB'`` on the file system that holds ``path`` (or its nearest existing parent)."""
    if "://" in str(path):
        return "free space unknown for a URI"
    try:
        usage = shutil.disk_usage(_existing(Path(path)))
    except OSError:
        return "free space unknown"
    return f"{usage.free / 2**20:.1f} MB free of {usage.total / 2**20:.1f} MB"


_FULL_TEXTS = ("No space left on device", "os error 28", "Disk quota exceeded", "os error 122")
_NEARLY_FULL_BYTES = 4 * 2**20


def is_disk_full(exc: BaseException, path: str | Path | None = None) -> bool:
    """Whether ``exc``, raised by a write to ``path``, comes from a full disk or quota.

    ``ENOSPC``/``EDQUOT``, or the words of it (safetensors and pyarrow raise their own types); torch's writer
    says only "unexpected pos", so any ``OSError``/``RuntimeError`` counts too when ``path``'s file system has
    less than 4 MB left now.
    """
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if any(text in str(exc) for text in _FULL_TEXTS):
        return True
    return path is not None and isinstance(exc, (OSError, RuntimeError)) and nearly_full(path)


def nearly_full(path: str | Path) -> bool:
    """Whether the local file system holding ``path`` has less than 4 MB left (False for a URI)."""
    if "://" in str(path):
        return False
    try:
        return shutil.disk_usage(_existing(Path(path))).free < _NEARLY_FULL_BYTES
    except OSError:
        return False


class DiskFull(OSError):
    """A write failed because its disk is full; the message names the path, the free space and what to do."""


def disk_full(path: str | Path, *, resume: str = "--resume --retry-errored") -> DiskFull:
    """The :class:`DiskFull` error for a failed write to ``path``."""
    return DiskFull(
        errno.ENOSPC,
        f"no space left on device writing {path} ({free_space_text(path)}); earlier checkpoints are intact: free "
        f"space there, then continue the sweep with its command plus {resume}",
    )


class naming_full_disk:  # noqa: N801 - used as a context manager, like contextlib's
    """``with naming_full_disk(path): ...``: an error inside that comes from a full disk (:func:`is_disk_full`)
    becomes :func:`disk_full` of ``path``; others pass through unchanged."""

    def __init__(self, path: str | Path):
        self.path = path

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> None:
        if exc is not None and not isinstance(exc, DiskFull) and is_disk_full(exc, self.path):
            raise disk_full(self.path) from None


def _ray_temp_dir() -> Path:
    return Path(os.environ.get("RAY_TMPDIR") or os.path.join(os.environ.get("TMPDIR") or "/tmp", "ray"))


def repair_experiment_state(folder: str) -> str | None:
    """Put back the files of the sweep ``folder`` that Tune's driver left cut short on the storage.

    Tune's driver writes its files (``experiment_state-*.json``, the search algorithm's state, each trial's
    ``result.json``, ``progress.csv``, error files) on its own node first, in Ray's session folder
    (``artifacts/STAMP/NAME/driver_artifacts/``), then copies them over the storage's copies in place. A storage
    that fills up, or a driver killed mid-copy, leaves those cut short: ``Tuner.restore`` then fails on the
    state, or restores a trial with its first epochs missing. The driver's copies of the newest state's time stamp
    are whole; every storage file shorter than its copy (or missing), or older and different, is written
    again from it. (After a driver killed with SIGKILL this also uploads what it had not uploaded yet: results
    that are no less true.)

    Returns:
        What was repaired (one line), or None when nothing was cut short (or no copy is on this machine and the
        state reads).

    Raises:
        CxrError: the newest state is cut short and no whole copy of it is on this machine.
    """
    import pyarrow.fs

    if "://" in folder:
        from cxr_core.tune_runner import storage_filesystem

        fs, root = storage_filesystem(folder)
    else:
        fs, root = pyarrow.fs.LocalFileSystem(), str(Path(folder).resolve())
    root = root.rstrip("/")
    names = sorted(
        Path(i.path).name
        for i in fs.get_file_info(pyarrow.fs.FileSelector(root))
        if Path(i.path).name.startswith("experiment_state-") and i.path.endswith(".json")
    )
    if not names:
        return None
    newest = names[-1]
    with fs.open_input_stream(f"{root}/{newest}") as f:
        size = len(f.read())
    # Tune names the session's artifacts folder by the experiment's start, which can be a second before the
    # state file's own time stamp: match the file by its name under any artifacts folder.
    copies = [p.parent for p in _ray_temp_dir().glob(f"session_*/artifacts/*/*/driver_artifacts/{newest}")
              if _whole_json(p)]  # fmt: skip
    if not copies:
        if _whole_json_at(fs, f"{root}/{newest}"):
            return None
        raise CxrError(
            f"{folder}: Tune's state {newest} is cut short ({size} bytes; a full disk or a driver killed while "
            "writing it) and no whole copy of it is on this machine (Ray's session folders); run this --resume on "
            "the node where the sweep's driver ran, or start the sweep again under another --name (its trials' "
            "results and checkpoints stay readable in their folders)"
        )
    local = max({p.resolve() for p in copies}, key=lambda p: p.stat().st_mtime)
    repaired = []
    for source in sorted(p for p in local.rglob("*") if p.is_file()):
        rel = source.relative_to(local).as_posix()
        info = fs.get_file_info(f"{root}/{rel}")
        if info.type == pyarrow.fs.FileType.File and not _stale(fs, info, source):
            continue
        fs.create_dir(f"{root}/{rel}".rsplit("/", 1)[0], recursive=True)
        tmp = f"{root}/{rel}.cxr-repair"
        with fs.open_output_stream(tmp) as f:
            f.write(source.read_bytes())
        fs.move(tmp, f"{root}/{rel}")
        repaired.append(rel)
    if not repaired:
        return None
    shown = ", ".join(repaired[:4]) + (f" and {len(repaired) - 4} more" if len(repaired) > 4 else "")
    return (
        f"repaired {len(repaired)} file(s) of {folder} cut short or not yet uploaded ({shown}) from the driver's "
        f"copies in {local}"
    )


def _stale(fs, info, source: Path) -> bool:
    """Whether the storage's file (``info``) is behind the driver's copy ``source``: shorter (cut short), or
    older and different (not uploaded since the copy changed: a state that names ``checkpoint_000000`` where the
    copy names ``checkpoint_000001``, of the same length or not). A storage file as long or longer and newer
    than the copy (a later driver's) is never replaced."""
    if info.size < source.stat().st_size:
        return True
    if info.mtime is None or info.mtime.timestamp() >= source.stat().st_mtime:
        return False
    with fs.open_input_stream(info.path) as f:
        return f.read() != source.read_bytes()


def _whole_json_at(fs, path: str) -> bool:
    try:
        with fs.open_input_stream(path) as f:
            json.loads(f.read())
        return True
    except (ValueError, OSError):
        return False


def _whole_json(path: Path) -> bool:
    try:
        json.loads(path.read_bytes())
        return True
    except (ValueError, OSError):
        return False


# ------------------------------------------------------------------------------------------------ SIGTERM

_TERMINATED = threading.Event()


def _on_sigterm(signum, frame) -> None:
    """SIGTERM does what Ctrl-C does at this moment: the current SIGINT handler runs (Tune's, during a sweep,
    which saves the experiment and stops; otherwise Python's, which raises KeyboardInterrupt)."""
    _TERMINATED.set()
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
    else:
        raise KeyboardInterrupt("SIGTERM")


def sigterm_as_interrupt() -> None:
    """Make SIGTERM (what SLURM, Kubernetes and spot reclaim send) behave like Ctrl-C in this process.

    Call again after ``ray.init``, which installs handlers of its own. No-op outside the main thread."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)


def terminated() -> bool:
    """Whether this process has received SIGTERM."""
    return _TERMINATED.is_set()
