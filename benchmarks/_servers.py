"""Start an HTTP server as a subprocess, wait for its /health, and always stop it (whole process group).

Used by the benchmarks that put coserve beside another server: each server gets its own session, so
stopping it also stops whatever it forked (uvicorn workers, tokenizer threads), and its output goes to a
log file rather than into the benchmark's own output.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"


class ServerStartError(RuntimeError):
    """The server exited, or did not answer /health in time; the message names it and quotes its log."""


def free_port(host: str = HOST) -> int:
    """A port the OS considers free now. Servers that print no bound port (transformers serve) need one
    chosen for them; the short race until they bind it is harmless on loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@dataclass
class ServerProcess:
    name: str
    argv: Sequence[str]
    port: int
    log_path: Path
    env: Mapping[str, str] | None = None  # added to this process's environment
    host: str = HOST
    process: subprocess.Popen | None = field(default=None, init=False, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                list(self.argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, **(self.env or {})},
                start_new_session=True)  # its own process group, so stop() reaches its children too

    def wait_healthy(self, timeout_s: float, poll_s: float = 0.5) -> float:
        """Seconds until GET /health answered 200; raises ServerStartError on exit or timeout."""
        started = time.perf_counter()
        deadline = started + timeout_s
        while time.perf_counter() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ServerStartError(f"{self.name} exited with status {self.process.returncode} before "
                                       f"answering /health; its log ({self.log_path}) ends:\n{self.log_tail()}")
            if self._health_ok():
                return time.perf_counter() - started
            time.sleep(poll_s)
        raise ServerStartError(f"{self.name} did not answer GET {self.base_url}/health with 200 within "
                               f"{timeout_s:.0f} s; its log ({self.log_path}) ends:\n{self.log_tail()}")

    def _health_ok(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base_url}/health", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False  # not listening yet, or still loading

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM the process group, then SIGKILL whatever is left after `grace_s`."""
        if self.process is None:
            return
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)  # pgid == pid: start_new_session made it the leader
            try:
                self.process.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
        # The leader may be gone while a child lingers in the group; make sure none survives.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process = None

    def log_tail(self, max_chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-max_chars:]
        except OSError:
            return "(no log)"


@contextlib.contextmanager
def running_server(server: ServerProcess, startup_timeout_s: float) -> Iterator[ServerProcess]:
    """Start `server`, wait until it is healthy, yield it, and stop it however the block ends."""
    try:
        server.start()
        seconds = server.wait_healthy(startup_timeout_s)
        print(f"{server.name} is up at {server.base_url} after {seconds:.1f} s (log: {server.log_path})",
              flush=True)
        yield server
    finally:
        server.stop()
