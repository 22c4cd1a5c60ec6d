"""Requests lost and latency while workers recycle, the server reloads, restarts its workers one by
one, stops, or loses a worker to SIGKILL, under 16 concurrent clients.

    python -m scripts.bench_reload [--clients 16] [--phase-seconds 10] [--json out.json]

Servers with the settings of `make serve` (gunicorn.conf.py) and the shipped model, on free
loopback ports:
- the sequence: a server whose workers recycle every --max-requests requests, under load for two
  phases, then TERM; a server with the defaults through phases of --phase-seconds each: steady, HUP,
  HUP, rolling restart (TERM each worker in turn, the next once its replacement is ready), and
  TERM of the master. The clients act as a load balancer would: a watcher polls /readyz every
  50 ms and, from its first 503, they send no new request.
- the kill: no recycling; one worker is killed with SIGKILL mid-load. Only the requests in flight on
  it may fail: their count is checked against its in-flight gauge, read from /metrics just before.
`--baseline` runs the sequence once more with gunicorn's stock gthread worker, reload and stop
(gunicorn.conf.py otherwise as it is), for comparison in the same run.

Prints one table row per phase (requests, failures, p50/p99/max latency) and the seconds from each
HUP to the old workers being gone. tests/test_reload.py runs the same scenarios and checks that
nothing failed. Loopback only.
"""

import argparse
import http.client
import json
import os
import re
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from scripts.nginx_front import NginxFront, nginx_binary
from scripts.serve_tools import (PROJECT_ROOT, Server, exit_on_sigterm, free_port, make_photos, multipart,
                                 new_connection, percentile, photo_file, request)

READY_POLL_S = 0.05
IN_FLIGHT = re.compile(r'^webapp_http_requests_in_flight\{pid="(\d+)"\} ([0-9.e+]+)$', re.M)
BASELINE_CONFIG = """# gunicorn's stock gthread worker, reload and stop; everything else as gunicorn.conf.py
import runpy
globals().update({{k: v for k, v in runpy.run_path({path!r}).items() if not k.startswith("__")}})
worker_class = "gthread"
del when_ready, on_reload
"""


class Load:
    """`clients` keep-alive clients posting one photo per request until `stop()` or, with `balancer`
    (acting as a load balancer would), until the watcher sees /readyz answer 503 or refuse the
    connection. Every outcome is kept with its time."""

    def __init__(self, base, photo, clients, balancer=True):
        self.base, self.clients = base, clients
        self.body, self.ctype = multipart([photo])
        self.lock = threading.Lock()
        self.results = []  # (start, seconds, outcome): outcome "ok", "status NNN" or an error
        self.stopped = threading.Event()
        self.first_503 = self.first_refused = None
        self.threads = [threading.Thread(target=self.client, daemon=True) for _ in range(clients)]
        if balancer:  # not when a real load balancer (nginx) is in front
            self.threads.append(threading.Thread(target=self.watch_readiness, daemon=True))

    def start(self):
        for thread in self.threads:
            thread.start()
        return self

    def stop(self):
        self.stopped.set()
        for thread in self.threads:
            thread.join(60)

    def client(self):
        connection = None
        while not self.stopped.is_set() and self.first_503 is None and self.first_refused is None:
            started = time.perf_counter()
            connection = connection or new_connection(self.base, timeout=60)
            try:
                status, _ = request(self.base, "POST", "/api/v1/predict", self.body, self.ctype,
                                    connection=connection)
                outcome = "ok" if status == 200 else f"status {status}"
            except (OSError, http.client.HTTPException) as error:
                outcome = f"{type(error).__name__}: {error}"
                connection.close()
                connection = None
            with self.lock:
                self.results.append((started, time.perf_counter() - started, outcome))

    def watch_readiness(self):
        while not self.stopped.is_set():
            try:
                status, _ = request(self.base, "GET", "/readyz", timeout=5)
                if status == 503 and self.first_503 is None:
                    self.first_503 = time.perf_counter()
            except ConnectionRefusedError:
                self.first_refused = self.first_refused or time.perf_counter()
                return
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(READY_POLL_S)

    def between(self, start, end) -> list:
        with self.lock:
            return [r for r in self.results if start <= r[0] < end]


def summarise(name, results) -> dict:
    latencies = [seconds * 1000 for _, seconds, outcome in results if outcome == "ok"]
    failures = [outcome for _, _, outcome in results if outcome != "ok"]
    return {"phase": name, "requests": len(results), "failures": len(failures), "failure_samples": failures[:5],
            "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99),
            "max_ms": max(latencies, default=float("nan"))}


def ready_markers(server) -> set:
    folder = server.instance / "run" / "ready"
    return {int(p.name) for p in folder.iterdir()} if folder.is_dir() else set()


def wait_until(condition, timeout_s, poll_s=0.05) -> bool:
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        if condition():
            return True
        time.sleep(poll_s)
    return False


def hup(server) -> float:
    """HUP the master; seconds until every old worker is gone and as many new ones are ready."""
    old, sent = set(server.workers()), time.perf_counter()
    server.process.send_signal(signal.SIGHUP)
    replaced = wait_until(lambda: not old & set(server.workers()) and
                          len(set(server.workers()) & ready_markers(server)) >= len(old), 120)
    return time.perf_counter() - sent if replaced else float("nan")


def rolling_restart(server) -> float:
    """TERM each worker in turn; the next only once the master's replacement is ready. Seconds."""
    sent = time.perf_counter()
    for pid in server.workers():
        before = set(server.workers())
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: (set(server.workers()) - before) & ready_markers(server), 120)  # noqa: B023 - waited on here
    return time.perf_counter() - sent


def started_server(tmp, model, photo, env, config="gunicorn.conf.py", port=None) -> Server:
    """A server with every worker's model loaded (ready markers for all of them)."""
    server = Server(Path(tmp) / "instance", model_dir=model, env=env, config=config, port=port)
    server.first_prediction(photo)
    wait_until(lambda: len(ready_markers(server)) >= len(server.workers()), 120)
    return server


def run_phases(server, photo, clients, phase_s, events, drain_s) -> dict:
    """Load through `events` ([(name, action(server) -> seconds or None)], each followed by
    `phase_s` of load), then TERM the master; one summary per phase."""
    load = Load(server.base, photo, clients).start()
    marks, event_s = [], {}
    for name, action in events:
        marks.append((name, time.perf_counter()))
        seconds = action(server)
        if seconds is not None:
            event_s[name] = seconds
        time.sleep(phase_s)
    marks.append(("TERM", time.perf_counter()))
    server.process.send_signal(signal.SIGTERM)
    server.process.wait(drain_s + 60)
    load.stop()
    marks.append(("end", time.perf_counter()))
    return {"phases": [summarise(name, load.between(start, end)) for (name, start), (_, end) in zip(marks, marks[1:])],
            "event_seconds": event_s, "workers_recycled": server.log_text().count("Autorestarting worker"),
            "readyz_503_before_refused": load.first_503 is not None and (
                load.first_refused is None or load.first_503 < load.first_refused),
            "exit_code": server.process.returncode}


def run_sequence(model, photo, clients, phase_s, max_requests, config="gunicorn.conf.py", drain_s=3) -> dict:
    """Two servers: one recycling its workers every `max_requests` requests, then TERM; one with the
    defaults through steady load, two HUPs, a rolling restart and TERM. See the module's doc."""
    with tempfile.TemporaryDirectory(prefix="reload-") as tmp:
        env = {"WEB_MAX_REQUESTS": str(max_requests), "WEB_DRAIN_S": str(drain_s)}
        server = started_server(Path(tmp) / "recycling", model, photo, env, config)
        try:
            recycling = run_phases(server, photo, clients, 2 * phase_s, [("recycling", lambda _: None)], drain_s)
        finally:
            server.stop()
        server = started_server(Path(tmp) / "reloads", model, photo, {"WEB_DRAIN_S": str(drain_s)}, config)
        try:
            events = [("steady", lambda _: None), ("HUP 1", hup), ("HUP 2", hup), ("rolling restart", rolling_restart)]
            reloads = run_phases(server, photo, clients, phase_s, events, drain_s)
        finally:
            server.stop()
    return {"phases": [dict(row, phase=f"{row['phase']} (recycling)" if row["phase"] == "TERM" else row["phase"])
                       for row in recycling["phases"]] + reloads["phases"],
            "event_seconds": reloads["event_seconds"], "workers_recycled": recycling["workers_recycled"],
            "readyz_503_before_refused": all(run["readyz_503_before_refused"] for run in (recycling, reloads)),
            "exit_codes": [recycling["exit_code"], reloads["exit_code"]]}


def run_through_nginx(model, photo, clients, phase_s, drain_s=2) -> dict:
    """Two web hosts behind nginx (deploy/nginx.conf): steady, HUP of A, HUP of B, TERM of B, B
    started again, SIGKILL of every process of A; one summary per phase, through nginx."""
    with tempfile.TemporaryDirectory(prefix="nginx-") as tmp:
        env = {"WEB_DRAIN_S": str(drain_s)}
        hosts = {name: started_server(Path(tmp) / name, model, photo, env) for name in ("A", "B")}
        front = None
        try:
            front = NginxFront(Path(tmp) / "nginx", f"127.0.0.1:{free_port()}",
                               [f"127.0.0.1:{host.port}" for host in hosts.values()])
            load = Load(front.base, photo, clients, balancer=False).start()

            def stop_b(_):
                hosts["B"].process.send_signal(signal.SIGTERM)
                hosts["B"].process.wait(drain_s + 60)

            def restart_b(_):
                hosts["B"] = started_server(Path(tmp) / "B2", model, photo, env, port=hosts["B"].port)

            def kill_a(_):
                os.killpg(hosts["A"].process.pid, signal.SIGKILL)
            events = [("steady", lambda _: None), ("HUP host A", lambda _: hup(hosts["A"])),
                      ("HUP host B", lambda _: hup(hosts["B"])), ("TERM host B", stop_b),
                      ("host B started again", restart_b), ("SIGKILL host A", kill_a)]
            marks = []
            for name, action in events:
                marks.append((name, time.perf_counter()))
                action(None)
                time.sleep(phase_s)
            load.stop()
            marks.append(("end", time.perf_counter()))
            return {"phases": [summarise(name, load.between(start, end))
                               for (name, start), (_, end) in zip(marks, marks[1:])],
                    "nginx_errors": front.error_log()[-2000:]}
        finally:
            if front:
                front.stop()
            for host in hosts.values():
                host.stop()


def in_flight(server) -> dict:
    """{worker pid: requests in flight} from /metrics."""
    _, text = request(server.base, "GET", "/metrics", timeout=10)
    return {int(pid): float(value) for pid, value in IN_FLIGHT.findall(text.decode())}


def run_kill(model, photo, clients, phase_s) -> dict:
    """SIGKILL one worker mid-load: failures against its in-flight gauge, replacement, and after."""
    with tempfile.TemporaryDirectory(prefix="kill-") as tmp:
        server = started_server(tmp, model, photo, {"WEB_DRAIN_S": "0"})
        try:
            load = Load(server.base, photo, clients).start()
            time.sleep(phase_s)
            count, victim = len(server.workers()), server.workers()[0]
            gauge = max(in_flight(server).get(victim, 0) for _ in range(5))  # its peak just before
            killed = time.perf_counter()
            os.kill(victim, signal.SIGKILL)
            replaced = wait_until(lambda: victim not in server.workers() and
                                  len(set(server.workers()) & ready_markers(server)) >= count, 120)
            replaced_s = time.perf_counter() - killed
            time.sleep(phase_s)
            load.stop()
            return {"in_flight_on_victim": gauge, "replaced": replaced, "replaced_s": replaced_s,
                    "all": summarise("the whole load", load.between(0, time.perf_counter())),
                    "after": summarise("after the replacement", load.between(killed + replaced_s, time.perf_counter())),
                    "master_alive": server.process.poll() is None}
        finally:
            server.stop()


def print_table(title, result):
    print(f"\n{title}")
    print(f"{'phase':<18}{'requests':>9}{'failed':>8}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    for row in result["phases"]:
        print(f"{row['phase']:<18}{row['requests']:>9}{row['failures']:>8}{row['p50_ms']:>9.0f}"
              f"{row['p99_ms']:>9.0f}{row['max_ms']:>9.0f}")
    if "event_seconds" not in result:
        return
    print("seconds until the old workers were gone: "
          + ", ".join(f"{name} {s:.1f}" for name, s in result["event_seconds"].items())
          + f"; workers recycled: {result['workers_recycled']}; /readyz 503 before the listener closed: "
          + str(result["readyz_503_before_refused"]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--phase-seconds", type=float, default=10)
    parser.add_argument("--max-requests", type=int, default=300, help="recycling during the sequence")
    parser.add_argument("--model", default=str(PROJECT_ROOT / "models" / "default"))
    parser.add_argument("--baseline", action="store_true", help="also run gunicorn's stock worker, reload, stop")
    parser.add_argument("--nginx", action="store_true", help="also two web hosts behind nginx (deploy/nginx.conf)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    exit_on_sigterm()
    photo = photo_file(*make_photos(1, kinds="client")[4])
    results = {"sequence": run_sequence(args.model, photo, args.clients, args.phase_seconds, args.max_requests)}
    print_table("this project's worker, reload and stop (gunicorn.conf.py)", results["sequence"])
    if args.baseline:
        with tempfile.NamedTemporaryFile("w", suffix=".py", prefix="stock-gunicorn-", delete=False) as config:
            config.write(BASELINE_CONFIG.format(path=str(PROJECT_ROOT / "gunicorn.conf.py")))
        try:
            results["baseline"] = run_sequence(args.model, photo, args.clients, args.phase_seconds,
                                               args.max_requests, config=config.name)
        finally:
            os.unlink(config.name)
        print_table("gunicorn's stock gthread worker, reload and stop", results["baseline"])
    results["kill"] = kill = run_kill(args.model, photo, args.clients, args.phase_seconds)
    print(f"\nSIGKILL of one worker: {kill['all']['failures']} of {kill['all']['requests']} failed (in flight on it: "
          f"{kill['in_flight_on_victim']:.0f}), replaced in {kill['replaced_s']:.1f} s, "
          f"{kill['after']['failures']} of {kill['after']['requests']} failed after")
    if args.nginx and nginx_binary():
        results["nginx"] = run_through_nginx(args.model, photo, args.clients, args.phase_seconds)
        print_table("two web hosts behind nginx (deploy/nginx.conf)", results["nginx"])
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    sys.exit(main())
