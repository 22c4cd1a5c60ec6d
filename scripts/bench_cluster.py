"""Beyond one host, measured (issue #25, docs/deploy.md): promotion to every web host, a job start to
a worker running it, and photos/s on a web host while a retraining runs on it or on a worker host.

    python -m scripts.bench_cluster [--phase-seconds 20] [--repeats 5] [--clients 16] [--json out.json]

Root only (network namespaces; PostgreSQL, Redis, SeaweedFS and nginx as `make servers` installs
them). Every step runs one after the other, in one run, so the rows compare on the same machine:

1. One host as today (no URL set: `serve_tools.Server`, gunicorn.conf.py, the shipped model, its
   own instance folder): --clients clients post one photo each for --phase-seconds, alone, then
   while a local retraining (--preset, `best` by default) runs as its child, cancelled after.
2. A cluster in namespaces (scripts/cluster/topology.py): host `db` (PostgreSQL, Redis, S3), web
   hosts `web1` and `web2`, a worker on host `worker`, nginx in front. A small job makes a second
   version; then --repeats times it and the shipped one are activated alternately, each through
   the other web host, timed from the request to every web host's /api/v1/model reporting it
   (polled every 20 ms); --repeats jobs are started through `web1`, timed until their row says
   `running` with a host, and cancelled; then the load of step 1 on `web1`, alone and while the
   retraining runs on the worker host (queue mode).
3. and 4. Steps 1 and 2's loads again with the cores split: each web host on core 0 and the rest on
   core 1. Today's host is started under affinity {0} and its job runner and trainer (the web
   worker's children) are moved to core 1 as they appear; the cluster's `web1` namespace runs under
   `taskset -c 0` and its `worker` and `db` namespaces under `taskset -c 1`. Both trainers get
   TRAIN_THREADS=1 (one core); unpinned ones keep today's default (all cores). gunicorn plans
   one worker on a one-core host, so the pinned rows compare with each other, not with the others.

The clients run in this process, on both cores, in every phase. A retraining's phase begins once its
trainer has logged two progress records and lasts --phase-seconds, or longer (at most EXTRA_S more)
until the trainer has logged a record whose whole window lay under the load; "training img/s" is
the trainer's own rate before the load (its second record) and under it (those records' mean).
"""

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from scripts.bench_reload import Load, summarise
from scripts.serve_tools import Server, exit_on_sigterm, make_photos, photo_file, wait_for, worker_pids

DONE = ("succeeded", "failed", "cancelled")
VERSION_JOB = {"preset": "seed", "epochs": 1, "limit": 300, "batch_size": 50}  # a second version, quickly
IDLE_JOB = {"preset": "seed", "epochs": 300, "limit": 300, "batch_size": 50}  # started, then cancelled
SETTINGS = {"TRAIN_SUITE": "false", "WEB_DRAIN_S": "1"}
WEB_CORE, OTHER_CORE = 0, 1
POLL_S = 0.02
WARM_UP_S = 3
EXTRA_S = 180  # a phase with a retraining goes on until its trainer logged a record under the load


# ---- the admin API ----

def api(host, method, path, body=None, timeout=30):
    """(status, JSON) of an admin API call; `host` is (base URL, admin token)."""
    base, token = host
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + "/api/v1/admin" + path, data=data, method=method,
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def job(host, job_id) -> dict:
    status, answer = api(host, "GET", f"/jobs/{job_id}")
    if status != 200:
        raise RuntimeError(f"GET job {job_id}: {status} {answer}")
    return answer


def start_job(host, params) -> int:
    status, answer = api(host, "POST", "/jobs", params)
    if status != 202:
        raise RuntimeError(f"could not start a job: {status} {answer}")
    return answer["id"]


def wait_job(host, job_id, check, timeout, what, interval=0.2) -> dict:
    def state():
        current = job(host, job_id)
        if check(current):
            return current
        if current["status"] in DONE:
            raise RuntimeError(f"job {job_id} ended {current['status']} waiting for {what}: {current.get('error')}")
        return None
    return wait_for(state, timeout, what, interval)


def cancel_job(host, job_id):
    api(host, "POST", f"/jobs/{job_id}/cancel")
    wait_for(lambda: job(host, job_id)["status"] in DONE, 120, f"job {job_id} to stop")


def steps(j) -> list:
    return [m for m in j["metrics"] if m["type"] == "step"]


def served(base) -> str:
    with urllib.request.urlopen(base + "/api/v1/model", timeout=10) as response:
        return json.loads(response.read())["version"]


# ---- load phases ----

def load_phase(base, photo, clients, seconds, until=None) -> dict:
    """`clients` clients posting `photo` to `base` for `seconds`, and on while `until()` is false
    (at most EXTRA_S more): bench_reload's summary, the phase's seconds and photos/s."""
    load = Load(base, photo, clients, balancer=False).start()
    began = time.perf_counter()
    time.sleep(seconds)
    while until and not until() and time.perf_counter() - began < seconds + EXTRA_S:
        time.sleep(0.5)
    ended = time.perf_counter()
    load.stop()
    row = summarise("", load.between(began, ended))
    return dict(row, seconds=ended - began, photos_per_s=(row["requests"] - row["failures"]) / (ended - began))


def phases(host, photo, args, label, pinner=None) -> list:
    """Two rows on one web host (`host`: base, token): alone, then while a retraining runs (started
    through it, cancelled after). `pinner(stop_event)`, when given, runs meanwhile (a thread)."""
    base = host[0]
    load_phase(base, photo, args.clients, WARM_UP_S)  # not counted
    alone = dict(load_phase(base, photo, args.clients, args.phase_seconds), setup=label[0], training="none")
    stop = threading.Event()
    if pinner:
        threading.Thread(target=pinner, args=(stop,), daemon=True).start()
    job_id = start_job(host, {"preset": args.preset})
    try:
        ready = wait_job(host, job_id, lambda j: j["status"] == "running" and len(steps(j)) >= 2, 900,
                         "the retraining's second progress record", interval=1)
        before, since = steps(ready)[-1]["images_per_s"], ready["metrics"][-1]["seq"]

        def under_load():  # the trainer's records since the load began; the first's window began before
            return [m["images_per_s"] for m in steps(job(host, job_id)) if m["seq"] > since][1:]
        row = load_phase(base, photo, args.clients, args.phase_seconds, until=under_load)
        during = under_load()
        busy = dict(row, setup=label[0], training=label[1], train_before=before,
                    train_during=statistics.mean(during) if during else float("nan"), host=ready.get("host"))
    finally:
        cancel_job(host, job_id)
        stop.set()
    return [alone, busy]


# ---- pinning ----

def tasks_on(pid: int, cores: set):
    """Every thread of `pid` onto `cores` (a thread it makes later inherits its maker's)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return
    for tid in tids:
        try:
            os.sched_setaffinity(int(tid), cores)
        except OSError:
            pass


def descendants(pid: int) -> list:
    children = worker_pids(pid)
    return children + [d for child in children for d in descendants(child)]


def trainer_pinner(master_pid: int):
    """What moves every child of a gunicorn worker (a local job's runner and its trainer) to
    OTHER_CORE until its event is set."""
    def run(stop):
        while not stop.is_set():
            for worker in worker_pids(master_pid):
                for pid in descendants(worker):
                    tasks_on(pid, {OTHER_CORE})
            stop.wait(0.1)
    return run


# ---- one host as today ----

def today_host(folder, photo, token, pinned) -> Server:
    """gunicorn as `make serve` starts it, no URL set; under affinity {WEB_CORE} when `pinned`."""
    env = {**SETTINGS, "ADMIN_TOKEN": token, **({"TRAIN_THREADS": "1"} if pinned else {})}
    for name in ("DATABASE_URL", "REDIS_URL", "MODEL_STORE_URL", "TRAIN_THREADS"):
        os.environ.pop(name, None)
    mine = os.sched_getaffinity(0)
    if pinned:
        os.sched_setaffinity(0, {WEB_CORE})  # this thread only; gunicorn, forked from it, inherits it
    try:
        server = Server(Path(folder) / "instance", env=env)
    finally:
        os.sched_setaffinity(0, mine)
    server.first_prediction(photo)
    return server


def run_today(photo, args, pinned) -> list:
    cores = "web core 0, trainer core 1" if pinned else "shared"
    label = ("one host, no URL set", "local job on the same host")
    with tempfile.TemporaryDirectory(prefix="bench-today-") as folder:
        token = "bench-" + os.urandom(12).hex()
        server = today_host(folder, photo, token, pinned)
        try:
            rows = phases((server.base, token), photo, args, label,
                          trainer_pinner(server.process.pid) if pinned else None)
        finally:
            server.stop()
    return [dict(row, cores=cores) for row in rows]


# ---- the cluster ----

def on_core(place, core: int):
    return dataclasses.replace(place, prefix=(*place.prefix, "taskset", "-c", str(core)))


def cluster_layout(hosts, pinned: bool):
    from scripts.cluster.servers import free_ports
    from scripts.cluster.topology import Layout
    web = ["web1"] if pinned else ["web1", "web2"]
    layout = Layout.namespaces(hosts, db="db", web=web, workers=["worker"], front_port=free_ports(1)[0])
    if pinned:
        layout.db = on_core(layout.db, OTHER_CORE)
        layout.web = [on_core(p, WEB_CORE) for p in layout.web]
        layout.workers = [on_core(p, OTHER_CORE) for p in layout.workers]
    return layout


def run_cluster(photo, args, pinned) -> dict:
    from scripts.cluster.topology import Cluster
    from scripts.cluster_net import Hosts
    folder = tempfile.mkdtemp(prefix="pc-bench-")  # under /tmp: the user postgres reaches it
    settings = dict(SETTINGS, **({"TRAIN_THREADS": "1"} if pinned else {}))
    try:
        with Hosts("pcb", ["db", "web1", "web2", "worker"]) as hosts:
            with Cluster(folder, cluster_layout(hosts, pinned), settings=settings) as cluster:
                if cluster.no_workers:
                    raise RuntimeError(cluster.no_workers)
                return measure_cluster(cluster, photo, args, pinned)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def measure_cluster(cluster, photo, args, pinned) -> dict:
    token = cluster.admin_token
    hosts = [(web.base, token) for web in cluster.web.values()]
    result = {}
    if not pinned:
        result["promotion_s"] = promotion_times(hosts, args.repeats)
        result["job_start_s"] = job_start_times(hosts[0], args.repeats)
    label = ("cluster web host", "on the worker host (queue)")
    rows = phases(hosts[0], photo, args, label)
    cores = "web core 0, worker + db core 1" if pinned else "shared"
    result["rows"] = [dict(row, cores=cores) for row in rows]
    return result


def promotion_times(hosts, repeats) -> list:
    """Seconds from an activate request (alternately a trained version and the shipped one, each
    through the next web host) to every web host serving it; 2 x `repeats` of them."""
    shipped = served(hosts[0][0])
    version_job = start_job(hosts[-1], VERSION_JOB)
    made = wait_job(hosts[0], version_job, lambda j: j["status"] == "succeeded", 900, "a second version")
    times = []
    for i in range(2 * repeats):
        target, expected = (made["version"], made["version"]) if i % 2 == 0 else ("shipped", shipped)
        via = hosts[i % len(hosts)]
        began = time.perf_counter()
        status, answer = api(via, "POST", f"/versions/{target}/activate")
        if status != 200:
            raise RuntimeError(f"activate {target}: {status} {answer}")
        wait_for(lambda e=expected: all(served(base) == e for base, _ in hosts), 60,
                 f"every web host to serve {expected}", interval=POLL_S)
        times.append(time.perf_counter() - began)
        time.sleep(1)
    return times


def job_start_times(host, repeats) -> list:
    """Seconds from POST /jobs to the job's row saying `running` with the worker's host; each
    cancelled after."""
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        job_id = start_job(host, IDLE_JOB)
        wait_job(host, job_id, lambda j: j["status"] == "running" and j["host"], 120, "a worker to take the job",
                 interval=POLL_S)
        times.append(time.perf_counter() - began)
        cancel_job(host, job_id)
    return times


# ---- the report ----

def timing_line(what, seconds) -> str:
    return (f"{what}: {len(seconds)} times, median {statistics.median(seconds):.2f} s, "
            f"max {max(seconds):.2f} s")


def print_report(results):
    cluster = results["cluster"]
    print("\n" + timing_line("promotion -> every web host serving it", cluster["promotion_s"]))
    print(timing_line("job start -> a worker running it", cluster["job_start_s"]))
    print(f"\n{'web host':<22}{'retraining':<28}{'cores':<32}{'photos/s':>9}{'p50 ms':>8}{'p99 ms':>8}"
          f"{'failed':>7}{'training img/s':>20}")
    for row in results["rows"]:
        training = (f"{row['train_before']:.0f} -> {row['train_during']:.0f}" if "train_before" in row else "")
        print(f"{row['setup']:<22}{row['training']:<28}{row['cores']:<32}{row['photos_per_s']:>9.1f}"
              f"{row['p50_ms']:>8.0f}{row['p99_ms']:>8.0f}{row['failures']:>7}{training:>20}")


def check_can_run():
    from scripts.cluster.servers import availability
    from scripts.cluster_net import can_make_namespaces
    from scripts.nginx_front import nginx_binary
    can, why = can_make_namespaces()
    missing = [why] if not can else []
    missing += [] if nginx_binary() else ["nginx is not installed (make servers, as root)"]
    missing += [f"{name}: {reason}" for name, reason in availability().items() if reason]
    if len(os.sched_getaffinity(0)) < 2 or not {WEB_CORE, OTHER_CORE} <= os.sched_getaffinity(0):
        missing.append(f"cores {WEB_CORE} and {OTHER_CORE} are needed")
    if missing:
        sys.exit("bench_cluster cannot run here: " + "; ".join(missing))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phase-seconds", type=float, default=20, help="seconds of load per phase (20)")
    parser.add_argument("--repeats", type=int, default=5, help="promotions (and as many rollbacks) and job starts")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--preset", default="best", help="the retraining that runs during a load phase")
    parser.add_argument("--no-pinned", action="store_true", help="skip the pinned rows")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    check_can_run()
    exit_on_sigterm()
    photo = photo_file(*make_photos(1, kinds="client")[4])
    results = {"rows": run_today(photo, args, pinned=False)}
    results["cluster"] = run_cluster(photo, args, pinned=False)
    results["rows"] += results["cluster"].pop("rows")
    if not args.no_pinned:
        results["rows"] += run_today(photo, args, pinned=True)
        results["rows"] += run_cluster(photo, args, pinned=True)["rows"]
    print_report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    sys.exit(main())
