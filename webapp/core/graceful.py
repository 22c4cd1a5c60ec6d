"""Restarts, reloads and stops that lose no request (gunicorn.conf.py wires these in).

Imported by gunicorn's master, so it imports neither torch nor Flask.

Three gaps in gunicorn 23's gthread worker and master, each measured with 16 clients sending
photos (scripts/bench_reload.py, docs/operations.md):

1. A worker that stops (SIGTERM from a reload or a stop, or its `max_requests`) leaves its loop,
   closes its poller and exits. Connections it had accepted but not read yet, and keep-alive
   connections on which a client had just sent its next request, are closed with that request
   unread: the client gets "connection reset by peer" (gunicorn issue #3038).
   `DrainingThreadWorker` instead stops accepting, then keeps serving every request that reaches
   a connection it already holds, answering it with `Connection: close`, until no connection is
   left (or a keep-alive connection stayed idle for `keepalive` seconds, or the graceful timeout
   ran out).

2. On HUP the master starts new workers and stops the old ones at once, so for the seconds the new
   ones spend loading the model nobody answers (p99 2.5 s). `ReadyGate` keeps the old workers
   serving until every new one has marked itself ready (`mark_ready`, after its model is loaded
   and warmed), then lets the master stop them.

3. On TERM the master closes the listener at once. `drain_then_stop` first turns `/readyz` to 503
   in every worker (`draining()`, a byte of memory the master shares with the workers it forks)
   and keeps serving for WEB_DRAIN_S seconds, so a load balancer that checks `/readyz` stops
   sending before anything is refused; then the normal graceful stop lets in-flight requests finish.
"""

import mmap
import selectors
import sys
import time
from concurrent import futures
from functools import partial
from pathlib import Path

from gunicorn.workers.gthread import ThreadWorker

# Anonymous shared memory made when the master imports this module, before it forks any worker:
# a worker reads the byte the master writes. In a process that is not under gunicorn it is simply
# this process's own.
_DRAIN_FLAG = mmap.mmap(-1, 1)


def start_draining() -> None:
    _DRAIN_FLAG[0] = 1


def draining() -> bool:
    """True from the moment the server was asked to stop: /readyz answers 503."""
    return _DRAIN_FLAG[0] == 1


# ---- readiness of workers (for the reload gate) ----

def ready_folder(run_folder: str) -> Path:
    return Path(run_folder) / "ready"


def reset_ready_folder(run_folder: str) -> None:
    folder = ready_folder(run_folder)
    folder.mkdir(parents=True, exist_ok=True)
    for marker in folder.iterdir():
        marker.unlink(missing_ok=True)


def mark_ready(run_folder: str, pid: int) -> None:
    """Called by a worker once its model is loaded and warmed."""
    (ready_folder(run_folder) / str(pid)).touch()


def forget_worker(run_folder: str, pid: int) -> None:
    (ready_folder(run_folder) / str(pid)).unlink(missing_ok=True)


def is_ready(run_folder: str, pid: int) -> bool:
    return (ready_folder(run_folder) / str(pid)).exists()


# ---- the worker ----

class DrainingThreadWorker(ThreadWorker):
    """gunicorn's gthread worker, with a stop that answers every request it has already received,
    and the in-flight gauge: requests it has started to receive and not yet answered, queued for a
    request thread included (Flask sees at most `threads` of them)."""

    def init_process(self):
        from webapp.core.metrics import IN_FLIGHT  # after fork: prometheus_client in multiprocess mode
        self.in_flight = IN_FLIGHT
        super().init_process()

    def enqueue_req(self, conn):
        self.in_flight.inc()
        super().enqueue_req(conn)

    def run(self):
        for listener in self.sockets:
            listener.setblocking(False)
            # captured once: during shutdown the listener's name may no longer be readable
            self.poller.register(listener, selectors.EVENT_READ, partial(self.accept, listener.getsockname()))
        while self.alive:
            self.serve_once()
        self.drain()

    def serve_once(self, wait_s: float = 1.0):
        """One turn of gthread's loop: accept, start requests that arrived, collect finished ones."""
        self.notify()
        if draining():
            # No recycling while the server drains: the master replaces a recycled worker only after
            # its drain, so two workers reaching max_requests then left nobody to accept, and the
            # connections queued in the listener were reset when it closed (CI, 16 resets).
            self.max_requests = sys.maxsize
        if self.nr_conns < self.worker_connections:
            for key, _ in self.poller.select(wait_s):
                key.data(key.fileobj)
            result = futures.wait(self.futures, timeout=0, return_when=futures.FIRST_COMPLETED)
        else:
            result = futures.wait(self.futures, timeout=wait_s, return_when=futures.FIRST_COMPLETED)
        for done in result.done:
            self.futures.remove(done)
        if not self.is_parent_alive():
            self.alive = False
        self.murder_keepalived()

    def drain(self):
        """Accept nothing more; serve what comes in on open connections (answers close them, since
        `alive` is false) until none is left. A keep-alive connection idle for `keepalive` seconds
        is closed as it would be anyway; one accepted but silent that long is closed too."""
        for listener in self.sockets:
            self.poller.unregister(listener)
            self.take_queued(listener)
            listener.close()  # this worker's copy: the master and the other workers keep listening
        deadline = time.monotonic() + self.cfg.graceful_timeout
        silent_limit = time.monotonic() + max(self.cfg.keepalive, 1)
        while self.nr_conns > 0 and time.monotonic() < deadline:
            if not self.futures and not self._keep and time.monotonic() > silent_limit:
                break  # only connections that never sent a request are left
            self.serve_once(wait_s=0.05)
        self.tpool.shutdown(False)
        self.poller.close()
        futures.wait(self.futures, timeout=max(0.0, deadline - time.monotonic()))

    def take_queued(self, listener, most=1000):
        """Accept what already waits in the listener's queue, to serve it below: when the last copy
        of the listener closes, the kernel resets every connection still queued in it."""
        server = listener.getsockname()
        for _ in range(most):
            before = self.nr_conns
            self.accept(server, listener)  # returns quietly when nothing waits (EAGAIN)
            if self.nr_conns == before:
                return

    def finish_request(self, fs):
        """gthread's, but a connection whose answer promised keep-alive stays open even when the
        worker began to stop meanwhile: gthread closed it, and the client's next request on it met
        a reset (most of the resets measured). `drain` serves that request and then closes."""
        self.in_flight.dec()
        if fs.cancelled():
            self.nr_conns -= 1
            fs.conn.close()
            return
        try:
            keepalive, conn = fs.result()
            if keepalive:
                conn.sock.setblocking(False)
                conn.set_timeout()
                with self._lock:
                    self._keep.append(conn)
                    self.poller.register(conn.sock, selectors.EVENT_READ,
                                         partial(self.on_client_socket_readable, conn))
            else:
                self.nr_conns -= 1
                conn.close()
        except Exception:  # noqa: BLE001 - as gthread: whatever happened, the socket is closed
            self.nr_conns -= 1
            fs.conn.close()


# ---- the master ----
# gunicorn executes gunicorn.conf.py again at every reload (HUP), so the master's state lives here,
# in a module imported once, not in the config file.

_master = {}  # "gate": ReadyGate, "prometheus": prometheus_client.multiprocess, "run_folder": str


class ReadyGate:
    """Holds a reload's old workers until the new ones are ready, then lets the master stop them.

    gunicorn's reload spawns `workers` new workers and calls `manage_workers`, which stops the
    oldest ones while the count is above `num_workers`. The gate raises that count to old + new at
    the reload (`on_reload` runs just before the spawn), and `manage_workers`, which the master's
    loop calls about once a second, puts it back once every new worker is ready or `timeout_s`
    passed (a release that cannot load its model must not hang the reload: its workers then
    meet gunicorn's own boot-error handling).
    """

    def __init__(self, run_folder: str, timeout_s: float):
        self.run_folder, self.timeout_s = run_folder, timeout_s
        self.old = set()
        self.deadline = None

    def on_reload(self, arbiter) -> None:
        self.old = set(arbiter.WORKERS)
        self.deadline = time.monotonic() + self.timeout_s
        arbiter._num_workers = len(self.old) + arbiter.cfg.workers  # not a resize: no nworkers_changed hook

    def release_when_ready(self, arbiter) -> None:
        if self.deadline is None:
            return
        new = set(arbiter.WORKERS) - self.old
        spawned = len(new) >= arbiter.cfg.workers
        if (spawned and all(is_ready(self.run_folder, pid) for pid in new)) or time.monotonic() > self.deadline:
            arbiter.log.info("reload: %d new workers ready, stopping the %d old ones", len(new), len(self.old))
            arbiter._num_workers = arbiter.cfg.workers
            self.old, self.deadline = set(), None


def start_master(run_folder: str) -> None:
    """gunicorn's on_starting, before any worker: imports what child_exit needs, clears markers.
    PROMETHEUS_MULTIPROC_DIR must be set by then (workers inherit the mode chosen at import)."""
    from prometheus_client import multiprocess  # here, not at the top: after the folder is set
    _master.update(prometheus=multiprocess, run_folder=run_folder)
    reset_ready_folder(run_folder)


def install_master(arbiter, drain_s: float, reload_timeout_s: float) -> None:
    """gunicorn's when_ready: the reload gate and the draining stop."""
    gate = _master["gate"] = ReadyGate(_master["run_folder"], reload_timeout_s)
    manage_workers = arbiter.manage_workers

    def manage_workers_after_ready():
        gate.release_when_ready(arbiter)
        manage_workers()
    arbiter.manage_workers = manage_workers_after_ready
    arbiter.handle_term = lambda: drain_then_stop(arbiter, drain_s)


def on_reload(arbiter) -> None:
    if "gate" in _master:
        _master["gate"].on_reload(arbiter)


def worker_gone(arbiter, pid: int) -> None:
    """gunicorn's child_exit. It runs inside the master's SIGCHLD handler, and a second worker
    exiting re-enters it: it only removes files, with modules imported long before, and logs an
    error rather than raising it, since an exception here ends the master and the whole server."""
    try:
        forget_worker(_master["run_folder"], pid)
        _master["prometheus"].mark_process_dead(pid)  # its live gauges (the version it served) stop counting
    except Exception:  # noqa: BLE001 - nothing may escape into the master's signal handler
        arbiter.log.exception("cleaning up after worker %s failed", pid)


def drain_then_stop(arbiter, seconds: float) -> None:
    """The master's SIGTERM handler: /readyz 503 everywhere, keep serving `seconds`, then stop."""
    start_draining()
    arbiter.log.info("draining: /readyz answers 503; stopping in %.1f s", seconds)
    started = time.monotonic()
    deadline, give_up = started + seconds, started + seconds + arbiter.cfg.graceful_timeout
    while time.monotonic() < min(deadline, give_up):  # workers go on serving; SIGCHLD is still handled
        arbiter.manage_workers()  # a worker that exited meanwhile is replaced, as in the master's loop
        if not all_workers_ready(arbiter):
            # Seen under load with recycling on: both workers were loading their model when TERM
            # came, nobody answered /readyz 503 during the drain, and what clients sent meanwhile was
            # reset when the listener closed. The drain lasts `seconds` from when every worker serves.
            deadline = time.monotonic() + seconds
        time.sleep(0.1)
    raise StopIteration  # gunicorn's own graceful stop: close the listener, TERM the workers


def all_workers_ready(arbiter) -> bool:
    run_folder = _master.get("run_folder")
    return run_folder is None or all(is_ready(run_folder, pid) for pid in arbiter.WORKERS)
