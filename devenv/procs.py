"""Start, watch and stop the taskwire processes (API, worker, simulator) as real subprocesses."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import httpx

_handed_out: set[int] = set()


def free_port() -> int:
    """A port nothing listens on now, and never one this process handed out before: ports
    are bound by the processes started later, so two calls before either binds (the
    simulator's port, then the API's) must not return the same port."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def wait_until(
    check: Callable[[], bool], timeout: float, what: str, alive: Callable[[], None] | None = None
) -> None:
    """Poll `check` until it holds; raise TimeoutError naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        if alive is not None:
            alive()
        if check():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


def http_ok(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return httpx.get(url, timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    return check


class Process:
    """One child process, its output in a log file (or inherited)."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: Mapping[str, str],
        log_dir: Path | None,
        cwd: Path | None = None,
    ):
        self.name = name
        self.argv = argv
        self.env = dict(env)
        self.log_path = log_dir / f"{name}.log" if log_dir else None
        self.cwd = cwd
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        out = open(self.log_path, "ab") if self.log_path else None  # noqa: SIM115
        self.popen = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            start_new_session=out is not None,
        )
        if out is not None:
            out.close()
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def check_alive(self) -> None:
        if self.popen is not None and self.popen.poll() is not None:
            tail = ""
            if self.log_path and self.log_path.exists():
                tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.name} exited with {self.popen.returncode}\n{tail}")

    def signal(self, sig: int) -> None:
        if self.running():
            assert self.popen is not None
            self.popen.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode

    def kill(self) -> None:
        if self.running():
            assert self.popen is not None
            self.popen.kill()
            self.popen.wait()

    def log_text(self) -> str:
        if self.log_path and self.log_path.exists():
            return self.log_path.read_text(errors="replace")
        return ""


def python_argv(*args: str) -> list[str]:
    return [sys.executable, *args]


def child_env(extra: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKWIRE_")}
    env.update(extra)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env
