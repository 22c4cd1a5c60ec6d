"""nginx in front of web hosts, with the project's configuration (deploy/nginx.conf).

    python -m scripts.nginx_front --listen 127.0.0.1:8080 --web 127.0.0.1:8000 --web 127.0.0.1:8001

runs it in the foreground until Ctrl-C; tests and benchmarks use `NginxFront`. Everything it writes
(rendered configuration, pid, logs, temporary bodies) goes into its own folder. nginx comes from the
system's packages (`make servers` installs it as root).
"""

import argparse
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SITE_TEMPLATE = PROJECT_ROOT / "deploy" / "nginx.conf"
MAIN_CONF = """daemon off;
{user}worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    include {prefix}/site.conf;
}}
"""


def nginx_binary():
    """nginx on PATH, else Debian's (root's PATH has /usr/sbin, a user's may not); None without it."""
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")


def render_site(listen: str, web_hosts: list, fail_timeout_s: int = 5) -> str:
    servers = "\n    ".join(f"server {host} max_fails=1 fail_timeout={fail_timeout_s}s;" for host in web_hosts)
    return SITE_TEMPLATE.read_text().replace("@LISTEN@", listen).replace("@WEB_HOSTS@", servers)


class NginxFront:
    """nginx listening on `listen` (host:port) in front of `web_hosts` (host:port each)."""

    def __init__(self, folder, listen: str, web_hosts: list):
        self.folder, self.listen = Path(folder), listen
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "site.conf").write_text(render_site(listen, web_hosts))
        # as root, nginx's worker would run as nobody, which cannot enter a private temporary folder
        user = "user root;\n" if os.geteuid() == 0 else ""
        (self.folder / "nginx.conf").write_text(MAIN_CONF.format(prefix=self.folder, user=user))
        binary = nginx_binary()
        if binary is None:
            raise FileNotFoundError("nginx is not installed (make servers installs it as root)")
        check = subprocess.run([binary, "-t", "-p", str(self.folder), "-c", str(self.folder / "nginx.conf")],
                               capture_output=True, text=True)
        if check.returncode:
            raise RuntimeError(f"nginx refused its configuration: {check.stderr}")
        self.process = subprocess.Popen([binary, "-p", str(self.folder), "-c", str(self.folder / "nginx.conf")],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
        self.base = f"http://{listen}"
        self._wait_listening()

    def _wait_listening(self, timeout_s=15):
        host, port = self.listen.rsplit(":", 1)
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited: {self.error_log()}")
            try:
                socket.create_connection((host, int(port)), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"nginx did not listen on {self.listen}")

    def error_log(self) -> str:
        path = self.folder / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)  # graceful: finish what is in flight
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:8080")
    parser.add_argument("--web", action="append", required=True, help="a web host's host:port (repeat)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="nginx-front-") as folder:
        front = NginxFront(folder, args.listen, args.web)
        print(f"nginx on http://{args.listen} in front of {', '.join(args.web)}; Ctrl-C stops it")
        try:
            front.process.wait()
        except KeyboardInterrupt:
            pass
        finally:
            front.stop()


if __name__ == "__main__":
    main()
