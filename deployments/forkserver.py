"""A machine's fork server: flow-run processes forked from one that has already imported
the third-party libraries, instead of a new Python process per run.

Prefect's process worker starts every flow run as a new interpreter that imports Prefect
and its engine, then the flow's libraries (pydantic, httpx, paramiko, sqlalchemy,
pandas, boto3...), about 1.5 s of CPU before the flow's first line; on a machine taking
tens of runs at a window's start, those seconds are the queue. ``caretaker-worker``
starts, in the worker's process group, this server beside ``prefect worker start``: it
imports those libraries once (:data:`PRELOAD`), never caretaker's own packages (a run
must execute the code of the commit its deployment names, which it clones, not the
worker's checkout), and waits on a Unix socket in a private folder. The pool's job
command (``python -m deployments.forkclient``) sends it each run's arguments,
environment, folder and standard streams; the server forks, and the child:

- starts a session of its own and dies with the server (``PR_SET_PDEATHSIG``);
- takes the client's stdin, stdout and stderr, the run's environment (``os.environ``
  replaced) and folder, ``sys.path`` as ``python -m`` would make it there (``PYTHONPATH``
  first), caretaker's modules dropped from ``sys.modules``;
- refreshes Prefect's settings and logging from that environment;
- runs ``prefect.engine`` as ``__main__``, which clones the deployed commit and imports
  the flow from the clone, as ``python -m prefect.engine`` does.

The server also loads certifi's CA bundle once into an SSL context that every run shares
for the same CA file (:func:`share_ssl_contexts`): Prefect makes one per API client.

The server kills a run's process group when its client goes away (the client killed:
the worker's machine dying), sends the client the run's exit status, and on SIGTERM
passes it to every run and waits for them. It never forks with a second thread or an
event loop alive (Prefect's engine deadlocks in a fork of a process that had one): it
checks before each fork and refuses the run instead (the client then starts Prefect's
engine itself).

    caretaker-worker --pool caretaker-process --limit 8     # prefect worker start's options
    python -m deployments.forkserver SOCKET                  # the server alone (tests)
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import gc
import importlib
import importlib.util
import os
import runpy
import selectors
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from deployments.forkclient import (
    ENV_SOCKET,
    HEADER_SIZE,
    decode_request,
    encode_reply,
    request_length,
)

__all__ = [
    "CARETAKER_PACKAGES",
    "PRELOAD",
    "Job",
    "caretaker_modules",
    "child_sys_path",
    "exit_status",
    "fork_hazards",
    "main",
    "serve",
    "share_ssl_contexts",
    "shared_context_key",
    "worker_main",
]

#: Third-party modules imported once by the server (what a flow run of caretaker imports
#: before its first line: Prefect's engine, the flow's libraries). Never caretaker's.
PRELOAD: tuple[str, ...] = (
    "prefect",
    "prefect.main",
    "prefect.engine",
    "prefect.flow_engine",
    "prefect.task_engine",
    "prefect.flows",
    "prefect.tasks",
    "prefect.deployments.steps",
    "prefect.deployments.steps.pull",
    "prefect.client.orchestration",
    "prefect.logging.handlers",
    "prefect.runtime",
    "prefect.artifacts",
    "prefect.concurrency.sync",
    "prefect.input",
    "prefect_aws",
    "great_expectations",
    "pydantic",
    "pydantic_settings",
    "httpx",
    "anyio",
    "paramiko",
    "cryptography",
    "sqlalchemy",
    "sqlalchemy.dialects.postgresql",
    "sqlalchemy.dialects.sqlite",
    "psycopg",
    "numpy",
    "pandas",
    "pyarrow",
    "boto3",
    "botocore",
    "jinja2",
    "markupsafe",
    "yaml",
)

#: caretaker's top-level packages (pyproject's ``tool.setuptools.packages.find``): none is
#: imported in the server but this module's own, and a child drops them all.
CARETAKER_PACKAGES = frozenset(
    "core inventory blocks history reports tasks flows deployments sandbox".split()
)
#: Set in the server before its imports, so that the libraries start no thread of their
#: own (OpenBLAS's pool, with numpy; jemalloc's background thread, with pyarrow) and the
#: server can fork; the runs keep these libraries single-threaded (measured: with them
#: unset the server has 3 OS threads after its imports).
SINGLE_THREADED = {"OPENBLAS_NUM_THREADS": "1", "JE_ARROW_MALLOC_CONF": "background_thread:false"}
PR_SET_PDEATHSIG = 1
ENGINE = "prefect.engine"
#: How long a stopping server waits for its runs after passing SIGTERM on.
STOP_GRACE_S = 30.0


@dataclass
class Job:
    """What a forked child runs: the client's request and its streams."""

    argv: list[str]
    env: dict[str, str]
    cwd: str
    fds: list[int]
    server_pid: int
    module: str = ENGINE


def caretaker_modules(names: Iterable[str]) -> list[str]:
    """The modules among ``names`` that belong to caretaker's packages (pure)."""
    return sorted(n for n in names if n.split(".", 1)[0] in CARETAKER_PACKAGES)


def child_sys_path(cwd: str, env: Mapping[str, str], inherited: Sequence[str]) -> list[str]:
    """``sys.path`` of ``python -m`` started in ``cwd`` with ``env`` (pure): the folder,
    ``PYTHONPATH``'s entries (relative ones taken from ``cwd``), then the interpreter's own
    ``inherited`` entries (the server's, without its first: the server's own folder)."""
    path = [cwd]
    for entry in env.get("PYTHONPATH", "").split(os.pathsep):
        if entry:
            resolved = os.path.normpath(os.path.join(cwd, entry))
            if resolved not in path:
                path.append(resolved)
    path += [p for p in inherited if p and p not in path]
    return path


def fork_hazards(threads: int, tasks: int, loop_running: bool) -> list[str]:
    """Why forking now would be unsafe (pure): more than one Python thread or OS thread
    (``/proc/self/task``), or an asyncio event loop running."""
    hazards = []
    if threads != 1:
        hazards.append(f"{threads} Python threads")
    if tasks != 1:
        hazards.append(f"{tasks} OS threads")
    if loop_running:
        hazards.append("an event loop running")
    return hazards


def _current_hazards() -> list[str]:
    import asyncio

    try:
        asyncio.get_running_loop()
        loop = True
    except RuntimeError:
        loop = False
    tasks = len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else 1
    return fork_hazards(threading.active_count(), tasks, loop)


def shared_context_key(
    purpose: object, cafile: object, capath: object, cadata: object
) -> str | None:
    """The CA file whose verified SSL context the runs share, or None for a call that gets
    a context of its own (pure): only ``ssl.create_default_context(cafile=F)`` for
    servers, the call Prefect makes for every API client (and httpx for its default)."""
    if purpose is not ssl.Purpose.SERVER_AUTH or capath is not None or cadata is not None:
        return None
    if not isinstance(cafile, str | os.PathLike) or not str(cafile):
        return None
    return os.path.realpath(cafile)


def share_ssl_contexts(preload: Sequence[str] = ()) -> None:
    """One verified SSL context per CA file in this process and every process forked from
    it, instead of a new one per call, the CA bundle parsed once (``preload``: the files
    to load now, before the forks).

    Prefect opens an API client, and with it ``ssl.create_default_context(cafile=
    certifi.where())``, about a dozen times per flow run (loading the run, the pull step,
    the log and event workers, the engine, caretaker's limits, blocks and artifacts), and
    each parses certifi's bundle: 25 ms of CPU (measured), 27 % of the runs' sampled CPU in
    the fleet benchmark (py-spy), against an ``http://`` API that never uses it. A shared
    context trusts exactly what each of its callers asked for (the same file); a call with
    another purpose, ``capath`` or ``cadata``, or no CA file (Prefect's insecure mode,
    which then changes its context) gets a new one as before. Nothing caretaker runs
    changes a context it did not make (httpcore sets the same ALPN list before each TLS
    handshake of an HTTP/1.1 client; httpx's deprecated ``cert=`` is not used). Decision 88.
    """
    original = ssl.create_default_context
    if getattr(original, "caretaker_shared", False):
        return
    contexts: dict[str, ssl.SSLContext] = {}
    lock = threading.Lock()

    def create_default_context(
        purpose: ssl.Purpose = ssl.Purpose.SERVER_AUTH,
        *,
        cafile: Any = None,
        capath: Any = None,
        cadata: Any = None,
    ) -> ssl.SSLContext:
        key = shared_context_key(purpose, cafile, capath, cadata)
        if key is None:
            return original(purpose, cafile=cafile, capath=capath, cadata=cadata)
        with lock:
            context = contexts.get(key)
            if context is None:
                context = contexts[key] = original(purpose, cafile=cafile)
            return context

    create_default_context.caretaker_shared = True  # type: ignore[attr-defined]
    ssl.create_default_context = create_default_context
    for cafile in preload:
        create_default_context(cafile=cafile)


def _ca_bundles() -> list[str]:
    """certifi's bundle, when it is installed (Prefect's and httpx's default)."""
    try:
        import certifi
    except ImportError:
        return []
    return [certifi.where()]


def _say(message: str) -> None:
    print(f"caretaker fork server [{os.getpid()}]: {message}", file=sys.stderr, flush=True)


def _preload(modules: Sequence[str]) -> None:
    started = time.perf_counter()
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # a library missing here is imported by the run instead
            _say(f"not preloaded: {name} ({type(exc).__name__}: {exc})")
    ours = [m for m in caretaker_modules(sys.modules) if m.split(".", 1)[0] != "deployments"]
    if ours:
        raise RuntimeError(f"the fork server imported caretaker's modules: {ours}")
    # What the server holds is never freed: out of the collector's sight, a child's
    # collections do not walk (and copy, page by page) the server's objects.
    gc.collect()
    gc.freeze()
    _say(f"{len(sys.modules)} modules imported in {time.perf_counter() - started:.1f}s")


def _receive(conn: socket.socket) -> tuple[bytes, list[int]]:
    """A whole request and the descriptors sent with it."""
    conn.settimeout(10)
    data, fds, _flags, _addr = socket.recv_fds(conn, 65536, 3)

    def more(count: int) -> bytes:
        chunk = conn.recv(count)
        if not chunk:
            raise ValueError("the client closed before its request was whole")
        return chunk

    try:
        while len(data) < HEADER_SIZE:
            data += more(HEADER_SIZE - len(data))
        want = HEADER_SIZE + request_length(data[:HEADER_SIZE])
        while len(data) < want:
            data += more(want - len(data))
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    conn.settimeout(None)
    return data, fds


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


class _Server:
    def __init__(self, path: str, module: str) -> None:
        self.path = path
        self.module = module
        self.pid = os.getpid()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        self.listener.bind(path)
        os.chmod(path, 0o600)
        self.listener.listen(128)
        self.runs: dict[int, socket.socket] = {}  # child pid -> its client's connection
        self.stopping = False
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.selector = selectors.DefaultSelector()

    def start_signals(self) -> None:
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)

        def stop(*_: object) -> None:
            self.stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        self.selector.register(self.listener, selectors.EVENT_READ, "accept")
        self.selector.register(self.wake_r, selectors.EVENT_READ, "wake")

    def loop(self) -> Job | None:
        """Serve until SIGTERM; returns the job in a forked child, None in the server."""
        while not self.stopping:
            for key, _events in self.selector.select(timeout=5):
                if key.data == "accept":
                    job = self.accept()
                    if job is not None:
                        return job
                elif key.data == "wake":
                    with contextlib.suppress(BlockingIOError):
                        os.read(self.wake_r, 512)
                    self.reap()
                else:
                    self.client_event(key.fileobj, key.data)  # type: ignore[arg-type]
            self.reap()
        self.stop()
        return None

    def accept(self) -> Job | None:
        conn, _ = self.listener.accept()
        fds: list[int] = []
        try:
            if _peer_uid(conn) not in (os.getuid(), 0):
                raise ValueError("a client of another user")
            data, fds = _receive(conn)
            argv, env, cwd = decode_request(data)
            if len(fds) != 3:
                raise ValueError(f"{len(fds)} descriptors sent, 3 expected")
            hazards = _current_hazards()
            if hazards:
                raise RuntimeError(f"not forking with {', '.join(hazards)}")
        except (OSError, ValueError, RuntimeError) as exc:
            _say(f"refused a run: {exc}")
            with contextlib.suppress(OSError):
                conn.sendall(encode_reply(error=f"the fork server refused: {exc}"))
            conn.close()
            for fd in fds:
                os.close(fd)
            return None
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            self.leave(conn)
            return Job(argv, env, cwd, fds, server_pid=self.pid, module=self.module)
        for fd in fds:
            os.close(fd)
        self.runs[pid] = conn
        try:
            conn.sendall(encode_reply(pid=pid))
        except OSError:  # the client is gone already
            self.client_gone(pid)
            return None
        self.selector.register(conn, selectors.EVENT_READ, pid)
        return None

    def leave(self, conn: socket.socket) -> None:
        """In a forked child: close every descriptor of the server's (detached first, so
        no socket object closes a number the run reuses later), without touching the
        server's registrations (closing the selector never unregisters)."""
        for sock in (self.listener, conn, *self.runs.values()):
            os.close(sock.detach())
        self.selector.close()
        os.close(self.wake_r)
        os.close(self.wake_w)

    def client_event(self, conn: socket.socket, pid: int) -> None:
        try:
            data = conn.recv(64)
        except OSError:
            data = b""
        if not data:  # the client went away (killed): so does its run
            self.client_gone(pid)

    def client_gone(self, pid: int) -> None:
        _say(f"the client of run process {pid} went away: killing its process group")
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        conn = self.runs.pop(pid, None)
        if conn is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(conn)
            conn.close()

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = self.runs.pop(pid, None)
            if conn is None:
                continue
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(conn)
            with contextlib.suppress(OSError):
                conn.sendall(encode_reply(status=status))
            conn.close()

    def stop(self) -> None:
        """Stop taking runs, pass SIGTERM to the runs, wait for them (at most
        :data:`STOP_GRACE_S`); what is left dies with the server."""
        self.selector.unregister(self.listener)
        self.listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        for pid in list(self.runs):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while self.runs and time.monotonic() < deadline:
            self.selector.select(timeout=0.5)
            with contextlib.suppress(BlockingIOError):
                os.read(self.wake_r, 512)
            self.reap()


def serve(path: str, preload: Sequence[str] = PRELOAD, module: str = ENGINE) -> Job | None:
    """Listen on ``path`` (bound before the imports, so early clients wait), import
    ``preload``, and serve; returns the job in a forked child, None when stopped.
    ``module`` is what the children run as ``__main__`` (Prefect's engine)."""
    server = _Server(path, module)
    for name, value in SINGLE_THREADED.items():
        os.environ.setdefault(name, value)
    _preload(preload)
    share_ssl_contexts(_ca_bundles())
    server.start_signals()
    _say(f"serving on {path}")
    return server.loop()


def run_job(job: Job) -> NoReturn:
    """In the forked child: become the run's process, then run Prefect's engine."""
    os.setsid()
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != job.server_pid:  # the server died before prctl took effect
        os._exit(1)
    signal.set_wakeup_fd(-1)
    for signum in (signal.SIGCHLD, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for target, fd in enumerate(job.fds):
        os.dup2(fd, target)
    for fd in job.fds:
        if fd > 2:
            os.close(fd)
    os.environ.clear()
    os.environ.update(job.env)
    os.chdir(job.cwd)
    sys.path[:] = child_sys_path(job.cwd, job.env, sys.path[1:])
    for name in caretaker_modules(list(sys.modules)):
        del sys.modules[name]
    importlib.invalidate_caches()

    if "prefect" in sys.modules:  # the run's PREFECT_* settings, not the server's
        import prefect.context
        from prefect.logging.configuration import setup_logging

        prefect.context.refresh_global_settings_context()
        setup_logging(incremental=False)
    spec = importlib.util.find_spec(job.module)
    sys.argv = [spec.origin if spec and spec.origin else job.module, *job.argv]
    sys.modules.pop(job.module, None)  # run as __main__ only, as `python -m` does
    try:
        runpy.run_module(job.module, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        code = exit_status(exc.code)
    except BaseException:
        traceback.print_exc()
        code = 1
    _finish(code)


def exit_status(code: object) -> int:
    """The process exit status of ``sys.exit(code)`` (pure): None is 0, an int is itself
    (modulo 256), anything else is printed and is 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _finish(code: int) -> NoReturn:
    """End the run's process as the interpreter would (its non-daemon threads joined, its
    ``atexit`` callbacks run: Prefect flushes its logs and events there, the streams
    flushed) without tearing down the thousands of modules the server imported, which
    took 1.2 s of CPU per run (measured)."""
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m deployments.forkserver SOCKET [--module M --preload A,B]``: serve
    until SIGTERM (``--module``/``--preload``: another main module and imports, for
    tests of the process plumbing)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m deployments.forkserver")
    parser.add_argument("socket")
    parser.add_argument("--module", default=ENGINE)
    parser.add_argument("--preload", default=",".join(PRELOAD))
    args = parser.parse_args(argv)
    job = serve(args.socket, [m for m in args.preload.split(",") if m], args.module)
    if job is not None:
        run_job(job)
    return 0


def _parent_death_signal(signum: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)


FOLDER_PREFIX = "caretaker-forkserver-"


def stale_folder(name: str, owner_uid: int, my_uid: int, alive: Callable[[int], bool]) -> bool:
    """Whether a fork-server folder is a dead machine's (pure): this user's, named
    ``caretaker-forkserver-<pid>-...`` by a ``caretaker-worker`` whose process is gone."""
    if not name.startswith(FOLDER_PREFIX) or owner_uid != my_uid:
        return False
    pid, dash, _ = name[len(FOLDER_PREFIX) :].partition("-")
    return bool(dash) and pid.isdigit() and not alive(int(pid))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def remove_stale_folders(base: str, alive: Callable[[int], bool] = _alive) -> list[str]:
    """Remove the fork-server folders (their socket) of machines killed with SIGKILL,
    which could not clean up; a folder of a live worker, or of another user, is kept."""
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(base):
            with contextlib.suppress(OSError):
                if entry.is_dir(follow_symlinks=False) and stale_folder(
                    entry.name, entry.stat(follow_symlinks=False).st_uid, os.getuid(), alive
                ):
                    shutil.rmtree(entry.path)
                    removed.append(entry.path)
    return removed


def worker_main(argv: Sequence[str] | None = None) -> int:
    """``caretaker-worker [prefect worker start's options]``: this machine's fork server
    and ``prefect worker start`` beside it, in this process group; stops both when
    either the worker ends or a SIGTERM/SIGINT comes (a dead fork server is restarted;
    runs started meanwhile start Prefect's engine themselves)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] in (["-h"], ["--help"]):
        print("usage: caretaker-worker [prefect worker start's options, e.g. --pool P --limit N]")
        print(f"\n{worker_main.__doc__}")
        raise SystemExit(0)
    remove_stale_folders(tempfile.gettempdir())
    # 0700: this user's only; named by this process, so a later start can tell it is stale
    folder = tempfile.mkdtemp(prefix=f"{FOLDER_PREFIX}{os.getpid()}-")
    path = os.path.join(folder, "socket")
    bin_dir = Path(sys.executable).parent
    prefect = bin_dir / "prefect"
    env = {**os.environ, ENV_SOCKET: path}

    def start_server() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "deployments.forkserver", path],
            cwd=folder,  # not this checkout: nothing of it on the server's sys.path
            preexec_fn=lambda: _parent_death_signal(signal.SIGTERM),
        )

    server = start_server()
    worker = subprocess.Popen(
        [str(prefect) if prefect.exists() else "prefect", "worker", "start", *args],
        env=env,
        preexec_fn=lambda: _parent_death_signal(signal.SIGTERM),
    )
    stopping: list[int] = []

    def stop(signum: int, _frame: object) -> None:
        stopping.append(signum)
        for proc in (worker, server):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        while worker.poll() is None:
            if server.poll() is not None and not stopping:
                print(
                    f"caretaker-worker: the fork server ended ({server.returncode}); restarting it",
                    file=sys.stderr,
                    flush=True,
                )
                time.sleep(1)
                server = start_server()
            time.sleep(0.5)
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(STOP_GRACE_S + 5)
        if server.poll() is None:
            server.kill()
        with contextlib.suppress(OSError):
            os.rmdir(folder)
    return int(worker.returncode or 0)


if __name__ == "__main__":
    sys.exit(main())
