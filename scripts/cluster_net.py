"""Hosts for a local cluster: Linux network namespaces on a bridge of their own (root only).

    with Hosts("pc", ["a", "b", "c"]) as hosts:
        hosts.run("a", ["redis-server", ...])     # a process inside host a
        hosts.address("a")                        # its address, reachable from here over the bridge

Each host is a namespace with loopback and one veth end on the bridge `<prefix>-br`, addressed
10.<N>.0.<i>/24 (N from the prefix, so two runs with different prefixes do not meet). Namespaces get
no default route: a packet can only reach the bridge's subnet. Here, the bridge's own address is
the route to that subnet (`check_route` asserts it with `ip route get`), so nothing for these
addresses leaves through this machine's default route. `close()` removes exactly what was made.
"""

import os
import subprocess
import zlib


class NetError(RuntimeError):
    pass


def ip(*args, namespace=None, check=True) -> str:
    command = (["ip", "netns", "exec", namespace] if namespace else []) + ["ip", *args]
    done = subprocess.run(command, capture_output=True, text=True)
    if check and done.returncode:
        raise NetError(f"{' '.join(command)}: {done.stderr.strip()}")
    return done.stdout


def can_make_namespaces() -> tuple:
    """(True, "") where this process may create namespaces, else (False, why)."""
    if os.geteuid() != 0:
        return False, "network namespaces need root (CI runs as root)"
    probe = f"pc-probe-{os.getpid()}"
    try:
        ip("netns", "add", probe)
        ip("netns", "del", probe)
    except (NetError, FileNotFoundError) as error:
        return False, f"cannot create a network namespace here: {error}"
    return True, ""


class Hosts:
    def __init__(self, prefix: str, names: list):
        self.prefix, self.names = prefix, list(names)
        self.subnet = f"10.{100 + zlib.crc32(prefix.encode()) % 100}.0"
        self.bridge = f"{prefix}-br"
        self.made = []  # ("netns", name) / ("link", name), undone in reverse order
        try:
            self._make()
        except Exception:
            self.close()
            raise

    def namespace(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def address(self, name: str) -> str:
        return f"{self.subnet}.{self.names.index(name) + 2}"

    def _make(self):
        ip("link", "add", self.bridge, "type", "bridge")
        self.made.append(("link", self.bridge))
        ip("addr", "add", f"{self.subnet}.1/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        for name in self.names:
            ns, outside = self.namespace(name), f"{self.prefix}-{name}-v"
            ip("netns", "add", ns)
            self.made.append(("netns", ns))
            ip("link", "add", outside, "type", "veth", "peer", "name", "eth0", "netns", ns)
            self.made.append(("link", outside))
            ip("link", "set", outside, "master", self.bridge, "up")
            ip("addr", "add", f"{self.address(name)}/24", "dev", "eth0", namespace=ns)
            ip("link", "set", "eth0", "up", namespace=ns)
            ip("link", "set", "lo", "up", namespace=ns)
        for name in self.names:
            self.check_route(self.address(name))

    def check_route(self, address: str) -> None:
        """The route from here to `address` goes over this cluster's bridge, not the default route."""
        route = ip("route", "get", address)
        if f"dev {self.bridge}" not in route:
            raise NetError(f"the route to {address} does not use {self.bridge}: {route.strip()}")

    def command(self, name: str, argv: list) -> list:
        """`argv` run inside host `name`."""
        return ["ip", "netns", "exec", self.namespace(name), *argv]

    def run(self, name: str, argv: list, **popen) -> subprocess.Popen:
        return subprocess.Popen(self.command(name, argv), start_new_session=True, **popen)

    def close(self):
        for kind, thing in reversed(self.made):
            if kind == "netns":
                for pid in ip("netns", "pids", thing, check=False).split():
                    try:
                        os.kill(int(pid), 9)
                    except ProcessLookupError:
                        pass
                ip("netns", "del", thing, check=False)
            else:
                ip("link", "del", thing, check=False)
        self.made = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
