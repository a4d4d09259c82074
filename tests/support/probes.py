"""Attacks from inside a workspace and the targets they aim at: addresses of this machine only.

A probe is an HTTP request written with busybox ``nc`` in the attacking container (``docker exec``): it
returns what came back, so "reached" means an HTTP server answered, not merely that a SYN was accepted.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import anyio
from anyio.abc import SocketAttribute, SocketStream

from app.services.runtime.base import ExecRequest
from app.services.runtime.docker import DockerRuntime

PROBE_SECONDS = 3


async def probe(runtime: DockerRuntime, attacker: str, host: str, port: int) -> str:
    """What an HTTP GET from ``attacker``'s container to ``host:port`` gets back ("" when nothing answers)."""
    request = ExecRequest(
        command=f"printf 'GET /healthz HTTP/1.0\\r\\nHost: probe\\r\\n\\r\\n' | nc -w {PROBE_SECONDS} {host} {port}",
        timeout_s=PROBE_SECONDS * 4,
    )
    return (await runtime.exec(attacker, request)).stdout


def reached(answer: str) -> bool:
    """True when a probe's answer is an HTTP response."""
    return answer.startswith("HTTP/1.")


async def container_info(runtime: DockerRuntime, container_id: str) -> dict[str, Any]:
    """The engine's inspect body of a container."""
    return await runtime.docker.containers.container(container_id).show()


def network_of(info: dict[str, Any]) -> dict[str, Any]:
    """The container's endpoint on its (only) network: ``IPAddress``, ``Gateway``, ``NetworkID``."""
    networks = info["NetworkSettings"]["Networks"]
    assert len(networks) == 1, f"a workspace joins exactly one network, not {sorted(networks)}"
    return dict(next(iter(networks.values())))


def host_address() -> str | None:
    """A non-loopback IPv4 address of this machine outside Docker's bridges (what a remote hub would dial)."""
    if not shutil.which("ip"):
        return None
    listed = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"], capture_output=True, text=True)
    for line in listed.stdout.splitlines():
        fields = line.split()
        if not fields[1].startswith(("docker", "br-", "veth")):
            return fields[3].split("/")[0]
    return None


def userland_proxy_serves(port: int) -> bool:
    """True when the engine's userland proxy (``docker-proxy``) listens on host port ``port``."""
    found = subprocess.run(["pgrep", "-f", f"docker-proxy .*-host-port {port} "], capture_output=True)
    return found.returncode == 0


@asynccontextmanager
async def http_listener(host: str) -> AsyncIterator[int]:
    """A one-line HTTP server on ``host`` (a port picked by the kernel) for as long as the block runs."""
    listener = await anyio.create_tcp_listener(local_host=host, local_port=0)

    async def answer(stream: SocketStream) -> None:
        async with stream:
            with anyio.move_on_after(PROBE_SECONDS):
                await stream.receive()
            await stream.send(b"HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\nhost")

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, answer)
        try:
            yield int(listener.extra(SocketAttribute.local_port))
        finally:
            tg.cancel_scope.cancel()


OUTSIDE_SERVER = """
import http.server, sys
class Answer(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"outside")
    def log_message(self, *args):
        pass
server = http.server.HTTPServer((sys.argv[1], int(sys.argv[2])), Answer)
print("ready", flush=True)
server.serve_forever()
"""


def can_build_outside() -> str | None:
    """Why this machine cannot host an "outside" network namespace (None when it can)."""
    if os.geteuid() != 0:
        return "making a network namespace needs root"
    if not shutil.which("ip"):
        return "iproute2 (`ip`) is missing"
    return None


@contextmanager
def outside_listener() -> Iterator[tuple[str, int]]:
    """An HTTP server in a network namespace of this machine, reached from the host over a veth pair.

    It stands for everything beyond the engine's host: a workspace reaches it only if the host forwards
    (routes) its traffic, as it would to the internet. Its /30 comes from the benchmarking range 198.18/15.
    """
    tag = secrets.token_hex(4)
    namespace, near, far = f"codehub-t-{tag}", f"cht{tag}a", f"cht{tag}b"
    third = secrets.randbelow(250) + 1
    near_ip, far_ip, port = f"198.18.{third}.1", f"198.18.{third}.2", 8000

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True)

    server: subprocess.Popen[str] | None = None
    ip("netns", "add", namespace)
    try:
        ip("link", "add", near, "type", "veth", "peer", "name", far)
        ip("link", "set", far, "netns", namespace)
        ip("addr", "add", f"{near_ip}/30", "dev", near)
        ip("link", "set", near, "up")
        ip("-n", namespace, "addr", "add", f"{far_ip}/30", "dev", far)
        ip("-n", namespace, "link", "set", far, "up")
        ip("-n", namespace, "link", "set", "lo", "up")
        server = subprocess.Popen(
            ["ip", "netns", "exec", namespace, sys.executable, "-c", OUTSIDE_SERVER, far_ip, str(port)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        yield far_ip, port
    finally:
        if server is not None:
            server.kill()
            server.wait()
        subprocess.run(["ip", "link", "del", near], capture_output=True)
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
