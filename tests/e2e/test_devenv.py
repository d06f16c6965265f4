"""`make run` (python -m devenv) as a developer uses it: it starts, serves, and restarts a
process that dies instead of stopping everything."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devenv.procs import free_port, wait_until
from tests.conftest import text_task

DEV_KEY = "tw-devenv-test-key-0123456789"


def _children_running(parent: int, marker: str) -> list[int]:
    """Pids of live processes started (directly or not) by `parent` whose command line
    contains `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and marker in cmdline:
            found.append(int(entry.name))
    return found


class DevRun:
    def __init__(self, root: Path):
        self.root = root
        self.api_port = free_port()
        self.out = root / "make-run.out"
        env = {k: v for k, v in os.environ.items() if not k.startswith("TASKWIRE_")}
        env.update(
            {
                "DEVENV_RUN_DIR": str(root / "run"),
                "PORT": str(self.api_port),
                "SIM_PORT": str(free_port()),
                "TASKWIRE_DEV_API_KEY": DEV_KEY,
                # a simulator key that looks like an option (1 start in 64 generated one)
                "TASKWIRE_SIM_API_KEY": "-starts-with-a-dash",
                "PYTHONUNBUFFERED": "1",
            }
        )
        (root / "run").mkdir()
        with self.out.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "devenv"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    def alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"make run exited with {self.proc.returncode}:\n{self.output()}")

    def sync_ok(self) -> bool:
        try:
            response = httpx.post(
                f"http://127.0.0.1:{self.api_port}/v1",
                json=[text_task("hello")],
                headers={"Authorization": f"Bearer {DEV_KEY}"},
                timeout=20,
            )
        except httpx.HTTPError:
            return False
        return response.status_code == 200 and response.json()["data"][0]["status"] == "success"


@pytest.fixture
def dev_run(tmp_path: Path) -> Iterator[DevRun]:
    run = DevRun(tmp_path)
    yield run
    if run.proc.poll() is None:
        run.proc.send_signal(signal.SIGINT)
        try:
            run.proc.wait(30)
        except subprocess.TimeoutExpired:
            run.proc.kill()
            run.proc.wait()


@pytest.mark.timeout(180)
def test_make_run_serves_and_restarts_a_killed_worker(dev_run: DevRun) -> None:
    wait_until(lambda: "taskwire is running" in dev_run.output(), 90, "make run", dev_run.alive)
    assert dev_run.sync_ok(), dev_run.output()

    workers = _children_running(dev_run.proc.pid, "-m worker")
    assert len(workers) == 1
    os.kill(workers[0], signal.SIGKILL)
    wait_until(
        lambda: "worker1 restarted" in dev_run.output(), 60, "the worker restart", dev_run.alive
    )
    assert "worker1 exited" in dev_run.output()
    replacement = _children_running(dev_run.proc.pid, "-m worker")
    assert len(replacement) == 1 and replacement != workers
    wait_until(dev_run.sync_ok, 30, "a task served by the new worker", dev_run.alive)

    dev_run.proc.send_signal(signal.SIGINT)
    assert dev_run.proc.wait(30) == 0
    assert "taskwire: stopped." in dev_run.output()
