"""Real server processes for tests: a free loopback port, and a process that answers there."""

import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import IO

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def server_process(
    command: Sequence[str],
    port: int,
    *,
    env: Mapping[str, str] | None = None,
    stderr: IO[bytes] | None = None,
    start_timeout: float = 20.0,
) -> Iterator[str]:
    """Run `command` (a server on 127.0.0.1:`port`) until /openapi.json answers; its base URL.
    Terminated when the block ends."""
    process = subprocess.Popen(command, cwd=ROOT, env=env, stderr=stderr)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            try:
                httpx.get(base + "/openapi.json", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the server did not start") from None
                time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=10)
