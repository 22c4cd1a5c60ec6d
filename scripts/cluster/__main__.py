"""`make cluster`: a small cluster on this machine, until Ctrl-C (docs/deploy.md).

    python -m scripts.cluster [--web 2] [--workers 1] [--port 8080] [--folder DIR] [--keep]

PostgreSQL, Redis and SeaweedFS's S3 gateway, two web hosts (gunicorn, each with its own instance
folder), one training worker and nginx in front, all on 127.0.0.1 at free ports (nginx on --port
when given). Prints nginx's URL, the admin token and password (random, made for this cluster only)
and where the logs are; Ctrl-C (or SIGTERM) stops everything it started, the last started first,
and removes its folder unless --keep.
"""

import argparse
import shutil
import signal
import sys
import tempfile
import threading

from scripts.cluster.servers import ServerError, availability
from scripts.cluster.topology import Cluster, Layout


def parse(argv):
    parser = argparse.ArgumentParser(prog="python -m scripts.cluster", description=__doc__.splitlines()[0])
    parser.add_argument("--web", type=int, default=2, help="web hosts behind nginx (2)")
    parser.add_argument("--workers", type=int, default=1, help="training workers (1)")
    parser.add_argument("--port", type=int, default=None, help="nginx's port (default: a free one)")
    parser.add_argument("--folder", default=None, help="where data, instance folders and logs go (default: a "
                                                       "new folder under /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the folder after stopping")
    return parser.parse_args(argv)


def missing_servers() -> str:
    from scripts.nginx_front import nginx_binary
    why = {name: reason for name, reason in availability().items() if reason}
    if nginx_binary() is None:
        why["nginx"] = "nginx is not installed"
    return "\n".join(f"  {name}: {reason}" for name, reason in why.items())


def print_banner(cluster):
    token, password = cluster.secrets["ADMIN_TOKEN"], cluster.secrets["ADMIN_PASSWORD"]
    print(f"\nThe cluster is up (its folder: {cluster.folder}):\n{cluster.describe()}\n")
    print(f"Open            {cluster.url}/   (admin: {cluster.url}/admin)")
    print(f"Admin password  {password}")
    print(f"Admin token     {token}")
    print(f"  curl -H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' \\\n"
          f"       -d '{{\"preset\": \"fast\", \"epochs\": 1}}' {cluster.url}/api/v1/admin/jobs")
    print("These secrets were made for this cluster only and are kept nowhere else.")
    print("Ctrl-C stops everything (the last started first).", flush=True)


def main(argv=None) -> int:
    args = parse(argv)
    missing = missing_servers()
    if missing:
        print(f"the cluster needs servers that cannot run here (make servers installs them):\n{missing}",
              file=sys.stderr)
        return 2
    folder = args.folder or tempfile.mkdtemp(prefix="photo-cluster-")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    cluster = Cluster(folder, Layout.loopback(args.web, args.workers, args.port))
    print(f"starting PostgreSQL, Redis, SeaweedFS, {args.web} web hosts, {args.workers} worker(s) and nginx "
          f"in {folder} ...", flush=True)
    try:
        cluster.start()
        print_banner(cluster)
        stop.wait()
    except KeyboardInterrupt:
        pass
    except ServerError as error:
        print(f"the cluster did not start: {error}", file=sys.stderr)
        args.keep = True  # its logs say why
        return 1
    finally:
        print("stopping ...", flush=True)
        cluster.stop()
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
        print("stopped" + (f"; its folder (logs) kept: {folder}" if args.keep else ""), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
