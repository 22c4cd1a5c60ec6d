"""Hosts for the multi-host tests: namespaces on a bridge of their own reach each other and this
process, only over that bridge, and leave nothing behind. Root only (CI runs as root)."""

import subprocess
import sys
import time

import pytest

from scripts.cluster_net import Hosts, can_make_namespaces, ip

POSSIBLE, WHY = can_make_namespaces()
pytestmark = pytest.mark.skipif(not POSSIBLE, reason=WHY)


def fetch(argv) -> str:
    return subprocess.run(argv, capture_output=True, text=True, timeout=20).stdout


def test_hosts_reach_each_other_over_their_bridge_and_leave_nothing(tmp_path):
    (tmp_path / "hello.txt").write_text("hello from a")
    with Hosts("pctest", ["a", "b"]) as hosts:
        server = hosts.run("a", [sys.executable, "-m", "http.server", "8000", "--bind", hosts.address("a"),
                                 "--directory", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://{hosts.address('a')}:8000/hello.txt"
            get = [sys.executable, "-c", f"import urllib.request as u; print(u.urlopen({url!r}).read().decode())"]
            for _ in range(50):
                if "hello" in fetch(hosts.command("b", get)):
                    break
                time.sleep(0.1)
            assert "hello from a" in fetch(hosts.command("b", get))  # host b -> host a
            assert "hello from a" in fetch(get)                       # this process -> host a, over the bridge
            assert f"dev {hosts.bridge}" in ip("route", "get", hosts.address("a"))
            assert "default" not in ip("route", namespace=hosts.namespace("b"))  # nothing leaves the subnet
        finally:
            server.kill()
            server.wait()
    assert "pctest-" not in ip("netns", "list")
    assert ip("link", "show", "pctest-br", check=False) == ""
