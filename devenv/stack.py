"""A whole taskwire deployment on one machine: Redis, simulator, workers and API processes."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path

import redis

from devenv.procs import Process, child_env, free_port, http_ok, python_argv, wait_until
from devenv.redis import RedisServer


@dataclass
class StackConfig:
    root: Path
    api_keys: list[str]
    sim_api_key: str = "sim-secret-key"
    api_port: int | None = None
    sim_port: int | None = None
    redis_url: str | None = None  # use this Redis instead of starting one
    catalog_path: Path | None = None
    sim_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # extra TASKWIRE_* settings
    log_to_files: bool = True


class Stack:
    def __init__(self, config: StackConfig):
        self.config = config
        self.root = config.root
        self.root.mkdir(parents=True, exist_ok=True)
        self.log_dir: Path | None = self.root / "logs" if config.log_to_files else None
        if self.log_dir:
            self.log_dir.mkdir(exist_ok=True)
        self.redis_server: RedisServer | None = None
        self.redis_url = config.redis_url or ""
        self.sim_port = config.sim_port or free_port()
        self.api_port = config.api_port or free_port()
        self.sim: Process | None = None
        self.apis: list[Process] = []  # the first listens on api_port, the others on their own
        self.api_ports: list[int] = []
        self.workers: list[Process] = []
        self._worker_seq = 0

    # --- addresses

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def api_urls(self) -> list[str]:
        """Every running API process's address (the first is `api_url`)."""
        return [f"http://127.0.0.1:{port}" for port in self.api_ports]

    @property
    def api(self) -> Process | None:
        """The first API process (the one on `api_url`)."""
        return self.apis[0] if self.apis else None

    @property
    def sim_url(self) -> str:
        return f"http://127.0.0.1:{self.sim_port}"

    def env(self) -> dict[str, str]:
        settings = {
            "TASKWIRE_REDIS_URL": self.redis_url,
            "TASKWIRE_API_KEYS": ",".join(self.config.api_keys),
            "TASKWIRE_SIM_URL": f"{self.sim_url}/v1",
            "TASKWIRE_SIM_API_KEY": self.config.sim_api_key,
            "TASKWIRE_LOG_FORMAT": "json" if self.config.log_to_files else "auto",
        }
        if self.config.catalog_path is not None:
            settings["TASKWIRE_CATALOG_PATH"] = str(self.config.catalog_path)
        settings.update(self.config.env)
        return child_env(settings)

    def redis_client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url)

    # --- processes

    def start(self, workers: int = 1) -> Stack:
        if not self.config.redis_url:
            self.redis_server = RedisServer(self.root / "redis", log_file=self.root / "redis.log")
            self.redis_server.start()
            self.redis_url = self.redis_server.url
        self.start_sim()
        for _ in range(workers):
            self.start_worker()
        self.start_api()
        return self

    def start_sim(self) -> Process:
        self.sim = Process(
            "sim",
            python_argv(
                "-m",
                "sim",
                "--port",
                str(self.sim_port),
                # one argument, so a key that starts with "-" is not read as an option
                f"--api-key={self.config.sim_api_key}",
                *self.config.sim_args,
            ),
            self.env(),
            self.log_dir,
        ).start()
        wait_until(http_ok(f"{self.sim_url}/health"), 20, "the simulator", self.sim.check_alive)
        return self.sim

    def start_worker(
        self, extra_env: dict[str, str] | None = None, name: str | None = None
    ) -> Process:
        if name is None:
            self._worker_seq += 1
            name = f"worker{self._worker_seq}"
        env = self.env()
        env.update(extra_env or {})
        worker = Process(name, python_argv("-m", "worker"), env, self.log_dir).start()
        self.workers.append(worker)
        key = f"tw:workers:{socket.gethostname()}:{worker.pid}"
        client = self.redis_client()
        try:
            wait_until(
                lambda: bool(client.exists(key)),
                30,
                f"{worker.name} to register",
                worker.check_alive,
            )
        finally:
            client.close()
        return worker

    def start_api(self) -> Process:
        """Start an API process: the first on `api_port`, each further one (another replica
        on the same Redis) on a free port of its own, listed in `api_urls`."""
        port = self.api_port if not self.apis else free_port()
        name = "api" if not self.apis else f"api{len(self.apis) + 1}"
        api = self._run_api(name, port)
        self.apis.append(api)
        self.api_ports.append(port)
        return api

    def _run_api(self, name: str, port: int) -> Process:
        env = self.env()
        env["PORT"] = str(port)
        api = Process(name, python_argv("-m", "service"), env, self.log_dir).start()
        # /livez, which only the API serves: were the port taken by another server (the
        # API then exits), the wait must not take that server for the API
        wait_until(http_ok(f"http://127.0.0.1:{port}/livez"), 30, f"the {name}", api.check_alive)
        return api

    def restart_crashed(self) -> list[str]:
        """Start again any process that has exited (Redis first: the others need it).
        Returns the names of those restarted, for the caller to report."""
        restarted = []
        if self.redis_server is not None and not self.redis_server.running():
            self.redis_server.start()
            restarted.append("redis")
        if self.sim is not None and not self.sim.running():
            self.start_sim()
            restarted.append("sim")
        for index, worker in enumerate(list(self.workers)):
            if not worker.running():
                self.workers.remove(worker)
                replacement = self.start_worker(name=worker.name)
                self.workers.insert(index, replacement)
                restarted.append(worker.name)
        for index, api in enumerate(list(self.apis)):
            if not api.running():
                self.apis[index] = self._run_api(api.name, self.api_ports[index])
                restarted.append(api.name)
        return restarted

    def stop(self) -> None:
        for proc in [*self.apis, *self.workers, self.sim]:
            if proc is not None:
                proc.stop()
        if self.redis_server is not None:
            self.redis_server.stop()
