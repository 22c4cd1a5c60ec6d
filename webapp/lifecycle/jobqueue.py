"""The training queue (REDIS_URL set): RQ on Redis. `jobs.start` enqueues a job id here; a worker
(`python -m webapp.lifecycle.worker`, on any host) takes it and runs it. The database row stays the
truth about a job: the queue only carries "job <id> wants a worker".

No queue timeout cuts a long training: RQ's default is 180 s, every job here is enqueued with
job_timeout -1 (none).
"""

import redis
from rq import Queue

QUEUE = "training"
JOB_TIMEOUT = -1             # RQ: no timeout (training runs for hours on a CPU)
RESULT_TTL_S = 7 * 24 * 3600  # how long RQ keeps a finished job's entry (the database keeps the job)
TASK = "webapp.lifecycle.worker.run_job"
FOLLOW_TASK = "webapp.lifecycle.worker.follow_job"  # node r > 0 of a job over several workers


def connect(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url, socket_connect_timeout=5, socket_timeout=30)


def training_queue(redis_url: str) -> Queue:
    return Queue(QUEUE, connection=connect(redis_url))


def enqueue(redis_url: str, job_id: int) -> str:
    """Queue job `job_id` for a worker; returns RQ's id of the entry. Raises redis' errors."""
    entry = training_queue(redis_url).enqueue(TASK, job_id, job_timeout=JOB_TIMEOUT, result_ttl=RESULT_TTL_S,
                                              failure_ttl=RESULT_TTL_S, description=f"training job {job_id}")
    return entry.id


def enqueue_followers(redis_url: str, job_id: int, nodes: int) -> list:
    """One entry per node 1..nodes-1 of a job over several workers, for idle workers to take
    (the job's node 0 is busy running it, so it never takes its own); returns RQ's ids."""
    queue = training_queue(redis_url)
    return [queue.enqueue(FOLLOW_TASK, job_id, rank, job_timeout=JOB_TIMEOUT, result_ttl=RESULT_TTL_S,
                          failure_ttl=RESULT_TTL_S, description=f"training job {job_id}, node {rank}").id
            for rank in range(1, nodes)]


def withdraw(redis_url: str, entry_ids: list):
    """Take entries no worker has taken off the queue (a follower of a job that is over would
    only look at the row and leave, but a worker started later should not have to)."""
    queue = training_queue(redis_url)
    for entry_id in entry_ids:
        queue.remove(entry_id)
