"""A training worker: `python -m webapp.lifecycle.worker` (`make worker`), on any host.

It reads the same settings as the web app (webapp.settings.settings_for: the instance folder's
config.py, then the environment), takes training jobs from the RQ queue on REDIS_URL one at a time
and runs each with the job runner (webapp.lifecycle.jobrunner.Runner) in this process: RQ's
SimpleWorker, no fork per job, so the worker, its runner and (through PR_SET_PDEATHSIG) its
trainer live and die together, and a killed worker stops heartbeating at once. The job's folder,
command and data come from this host's settings and instance folder; where it runs (host:
WORKER_NAME or the host name, TRAIN_DEVICE, TRAIN_NPROC) goes into the job's row.

Several workers may run on one host or many; each takes one job at a time (the database admits
one queued or running job anyway). A job asked for `nodes: K` is run by K of them: the one that
takes it is node 0 and queues K-1 follower entries that idle workers take (webapp.lifecycle.nodes).
Pin one to a GPU with CUDA_VISIBLE_DEVICES and TRAIN_DEVICE=cuda
(docs/operations.md). SIGTERM (or Ctrl-C): RQ's warm shutdown, after the current job; twice: now.
"""

import logging
import os
import sys
from pathlib import Path

from rq import SimpleWorker

from webapp.lifecycle import jobqueue
from webapp.lifecycle.jobrunner import Runner, host_name
from webapp.lifecycle.nodes import Follower
from webapp.lifecycle.site import Site
from webapp.settings import SettingsError, instance_path, settings_for


def worker_site() -> Site:
    """This worker's site: INSTANCE_PATH (default ./instance) and the settings read there."""
    instance = Path(instance_path())
    instance.mkdir(parents=True, exist_ok=True)
    return Site(instance, settings_for(instance))


def check_worker(settings):
    """SettingsError when this worker could not take anyone's jobs: no REDIS_URL. A worker serves
    no pages and checks no tokens, so the cluster's SECRET_KEY and admin credentials are not needed
    here; what it shares with the web hosts is the database, the queue and the store."""
    if not settings.get("REDIS_URL"):
        raise SettingsError("REDIS_URL is not set: a training worker takes jobs from that queue "
                            "(without it the web app runs each job itself)")


def run_job(job_id: int) -> int:
    """What the queue runs for one job (jobqueue.TASK): the runner on this host's site."""
    return Runner(worker_site(), int(job_id)).run()


def follow_job(job_id: int, node_rank: int) -> int:
    """What the queue runs for node `node_rank` > 0 of a job over several workers
    (jobqueue.FOLLOW_TASK): webapp.lifecycle.nodes.Follower on this host's site."""
    return Follower(worker_site(), int(job_id), int(node_rank)).run()


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv:
        sys.exit("usage: python -m webapp.lifecycle.worker   (settings from the environment and "
                 "<INSTANCE_PATH>/config.py: REDIS_URL, DATABASE_URL, MODEL_STORE_URL, TRAIN_DEVICE, ...)")
    site = worker_site()
    try:
        check_worker(site.settings)
    except SettingsError as error:
        sys.exit(f"webapp.lifecycle.worker: {error}")
    if not site.settings.get("DATABASE_URL"):
        print("warning: DATABASE_URL is not set: this worker uses the SQLite file of its own instance folder "
              f"({site.instance}), which only web apps of the same folder see", file=sys.stderr, flush=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    redis = jobqueue.connect(site.settings["REDIS_URL"])
    name = f"{host_name(site.settings)}-{os.getpid()}"
    worker = SimpleWorker([jobqueue.QUEUE], connection=redis, name=name)
    print(f"training worker {name}: queue {jobqueue.QUEUE!r}, device {site.settings['TRAIN_DEVICE']}, "
          f"{site.settings['TRAIN_NPROC']} process(es), instance {site.instance}", flush=True)
    worker.work(with_scheduler=False)


if __name__ == "__main__":
    main()
