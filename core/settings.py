"""Settings for every taskwire process, read once from TASKWIRE_* environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class KeyLimits(BaseModel):
    """One key's overrides of the `key_*` defaults; fields left out keep the default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    weight: float | None = Field(default=None, gt=0)
    max_running: int | None = Field(default=None, ge=1)
    max_deliveries: int | None = Field(default=None, ge=1)
    max_queued: int | None = Field(default=None, ge=1)
    rps: float | None = Field(default=None, ge=0)
    burst: float | None = Field(default=None, ge=0)
    read_rps: float | None = Field(default=None, ge=0)
    read_burst: float | None = Field(default=None, ge=0)
    tokens_per_minute: int | None = Field(default=None, ge=0)


class Settings(BaseSettings):
    """All knobs of the API and the worker. Construct once per process and pass it down."""

    model_config = SettingsConfigDict(env_prefix="TASKWIRE_", extra="ignore", frozen=True)

    # --- Redis and key layout
    redis_url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = Field(default="tw", pattern=r"^[A-Za-z0-9_.-]{1,32}$")
    queue_name: str = "tw:queue"

    # --- API keys: comma-separated; the dev key is added to them when set.
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    dev_api_key: SecretStr | None = None

    # --- API behaviour
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    sync_timeout_s: float = Field(default=60.0, gt=0)
    # A cancel answers once its running results have stopped, or after this long (then
    # saying `cancelling` for those whose worker has not confirmed yet).
    cancel_wait_s: float = Field(default=2.0, ge=0)
    task_retention_s: int = Field(default=24 * 3600, ge=60)
    max_queue_depth: int = Field(default=200_000, ge=1)
    # Load shedding: a new interactive (sync, stream) task whose estimated wait to start is
    # over this gets 503 serverBusy at once (0 turns shedding off). The estimate: the work
    # ahead of it (its key's own queued interactive work times the keys taking turns) over
    # the rate at which workers start interactive work, read every shed_refresh_s.
    interactive_wait_budget_s: float = Field(default=1.0, ge=0)
    shed_refresh_s: float = Field(default=0.1, gt=0)
    catalog_path: Path = PROJECT_ROOT / "deploy" / "models.toml"
    # The absolute base URL clients reach the API at (e.g. https://api.example.com): links in
    # responses (stream links, imageURL) are built on it, and workers hand upstreams signed
    # image URLs on it. Unset: the API's own listening address, or the X-Forwarded-Host /
    # -Proto of a trusted proxy (never a client's Host header alone).
    public_base_url: str | None = None
    # CIDRs of reverse proxies whose X-Forwarded-Proto / -Host / -For are believed.
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # On SIGTERM the API answers /readyz with 503 at once and keeps serving for the delay
    # (so a load balancer takes it out of rotation), then stops accepting connections and
    # lets requests in flight finish within the grace period (`python -m service`).
    api_shutdown_delay_s: float = Field(default=0.0, ge=0)
    api_shutdown_grace_s: int = Field(default=10, ge=0)

    # --- the WebSocket (GET /v1 upgraded; service/ws.py)
    # A socket must authenticate within this; a client that reconnects within the window
    # with its connectionSessionUUID gets the results it missed (core/sessions.py).
    ws_auth_timeout_s: float = Field(default=5.0, gt=0)
    ws_session_window_s: int = Field(default=120, ge=1)
    # Frames waiting to be written to one socket; a client that lets more pile up is closed
    # (1008), its results kept for getResponse and resume.
    ws_send_queue: int = Field(default=256, ge=1)
    # Frames of one socket being answered at once; past it the socket is read no further.
    ws_frames_in_flight: int = Field(default=64, ge=1)

    # --- event streams and server-sent events
    # Deltas are appended when this much text has gathered or when the oldest unsent one has
    # waited the flush interval, which starts at the first value and grows by half after each
    # timed append up to the second (the first delta of a streamed result goes at once).
    stream_flush_interval_s: float = Field(default=0.05, ge=0)
    stream_flush_max_interval_s: float = Field(default=0.5, ge=0)
    stream_flush_chars: int = Field(default=1024, ge=1)
    event_stream_maxlen: int = Field(default=10_000, ge=100)
    sse_keepalive_s: float = Field(default=15.0, gt=0)
    # A re-attached (GET) event stream is closed after this long; EventSource clients
    # reconnect with Last-Event-ID and resume where they were.
    sse_max_lifetime_s: float = Field(default=300.0, gt=0)
    stream_token_ttl_s: int = Field(default=3600, ge=1)
    # Signs stream links and imageURLs. Unset: a random secret kept in Redis, shared by every
    # API and worker process.
    stream_token_secret: SecretStr | None = None

    # --- webhooks and the outbound guard
    # Delay before each delivery attempt (Svix's schedule); jitter is a fraction of each.
    webhook_schedule_s: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0]
    )
    webhook_jitter: float = Field(default=0.1, ge=0, le=1)
    webhook_timeout_s: float = Field(default=15.0, gt=0)
    webhook_max_response_bytes: int = Field(default=4096, ge=0)
    webhook_rotation_window_s: float = Field(default=24 * 3600, ge=0)
    # How often one worker looks for pending deliveries overdue by more than this whose job
    # was lost (neither queued nor leased), and enqueues them again.
    webhook_sweep_interval_s: float = Field(default=30.0, gt=0)
    # At most this many delivery attempts in flight to one receiver host, across all workers
    # (leases in Redis that lapse after the attempt's deadline). A delivery whose host is at
    # the limit goes back to the queue for about the busy delay (jittered), without counting
    # an attempt, holding a worker slot or a connection while it waits.
    webhook_max_per_host: int = Field(default=50, ge=1)
    webhook_host_busy_delay_s: float = Field(default=1.0, gt=0)
    # CIDRs user URLs may reach although not public (development and tests only).
    outbound_allow_cidrs: Annotated[list[str], NoDecode] = Field(default_factory=list)
    outbound_resolve_timeout_s: float = Field(default=2.0, gt=0)

    # --- images and routes
    image_max_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    # A fetch's deadline, waiting for its turn included.
    image_fetch_timeout_s: float = Field(default=15.0, gt=0)
    # Image URL fetches in flight at once per API key and per host, in each API and worker
    # process; one waiting for its turn waits on the limit, not on a pooled connection.
    image_fetch_per_key: int = Field(default=8, ge=1)
    image_fetch_per_host: int = Field(default=16, ge=1)
    # Connections of each process's image-fetch pool (API; a worker's is at least
    # worker_max_jobs, one per running job).
    image_fetch_max_connections: int = Field(default=200, ge=1)
    # A route that fails this many results in a row (each after its retries) rests for the
    # cool-down, for all workers.
    route_failure_threshold: int = Field(default=5, ge=1)
    route_cooldown_s: float = Field(default=30.0, ge=0)

    # --- tenants: how the shared queue divides turns, and what one API key may use
    # While interactive work (sync, stream) waits, batch work (async results and webhook
    # deliveries) still gets this share of turns, so neither side starves.
    batch_min_share: float = Field(default=0.1, ge=0, le=1)
    # Defaults for every API key; a key's own record (tw:tenant:<owner>) may override them.
    key_weight: float = Field(default=1.0, gt=0)
    key_max_running: int = Field(default=1000, ge=1)  # results running at once
    key_max_deliveries: int = Field(default=50, ge=1)  # webhook deliveries at once
    key_max_queued: int = Field(default=50_000, ge=1)  # results waiting to run
    # Request rate (token buckets, 0 = unlimited): each new textInference task takes one
    # token; the bucket refills at key_rps a second and holds key_burst (0: one second's
    # worth). getResponse and imageUpload tasks draw on a bucket of their own.
    key_rps: float = Field(default=0.0, ge=0)
    key_burst: float = Field(default=0.0, ge=0)
    key_read_rps: float = Field(default=0.0, ge=0)
    key_read_burst: float = Field(default=0.0, ge=0)
    # Upstream tokens (prompt + completion) a key's results may use per clock minute before
    # its new textInference tasks are refused until the minute ends (0 = unlimited).
    key_tokens_per_minute: int = Field(default=0, ge=0)
    # Per-key overrides of the key_* defaults, as JSON keyed by the key's owner id (see
    # service/auth.py) or by one of the API keys itself (hashed at startup, never stored):
    # {"<owner id>": {"rps": 5, "burst": 10, "tokens_per_minute": 20000, "max_running": 4}}.
    # The API writes them into each key's tenant hash (tw:tenant:<owner>) at startup.
    key_limits: dict[str, KeyLimits] = Field(default_factory=dict)

    # --- API keys managed at run time (python -m service.keys; core/apikeys.py)
    # Each API process holds them in memory: a change is announced on a channel and the
    # version polled this often as a safety net (a missed notice is caught within this).
    key_ring_poll_s: float = Field(default=1.0, gt=0)
    # Turns on /admin/keys (list, create, revoke, rotate, limits) for `Authorization: Bearer
    # <token>`; unset, those routes answer 404.
    admin_token: SecretStr | None = None

    # --- worker
    # A worker whose event loop lags more than the first takes no new batch work, more than
    # the second no new work at all: the rest stays queued (worker/admission.py).
    worker_batch_lag_s: float = Field(default=0.010, gt=0)
    worker_interactive_lag_s: float = Field(default=0.050, gt=0)
    # The job classes this worker takes: i interactive (sync, stream), b batch (async), h
    # webhook deliveries. An "i" lane beside "bh" workers keeps interactive work off the
    # processes a batch flood keeps busy; worker_nice lowers a process's CPU priority (e.g.
    # batch workers sharing a host with an interactive lane).
    worker_classes: str = Field(default="ibh", pattern=r"^[ibh]{1,3}$")
    worker_nice: int = Field(default=0, ge=0, le=19)
    worker_max_jobs: int = Field(default=500, ge=1)
    job_timeout_s: float = Field(default=600.0, gt=0)
    # The in-progress key of a running job is a lease renewed by its worker; a killed worker's
    # jobs become visible again once the lease runs out, whatever the job timeout.
    job_lease_s: float = Field(default=10.0, ge=1)
    worker_poll_fallback_s: float = Field(default=2.0, gt=0)
    worker_shutdown_grace_s: int = Field(default=25, ge=0)
    # Each worker serves GET /livez and /readyz on this port (0: off; the deploy files set
    # 9200, one worker per container). Liveness fails once the worker's event loop has not
    # ticked for worker_liveness_timeout_s; readiness while Redis is unreachable or the
    # worker drains after SIGTERM (worker/probes.py).
    worker_http_port: int = Field(default=0, ge=0, le=65535)
    worker_http_host: str = "127.0.0.1"
    worker_liveness_timeout_s: float = Field(default=30.0, gt=0)
    job_max_tries: int = Field(default=5, ge=1)

    # --- upstream calls
    upstream_max_attempts: int = Field(default=4, ge=1)
    upstream_backoff_base_s: float = Field(default=0.25, ge=0)
    upstream_backoff_cap_s: float = Field(default=8.0, ge=0)
    upstream_retry_after_cap_s: float = Field(default=30.0, ge=0)
    upstream_connect_timeout_s: float = Field(default=5.0, gt=0)
    upstream_max_connections: int = Field(default=1000, ge=1)

    # --- metrics (Prometheus: the API's GET /metrics, each worker's probe port)
    # The queue's depth (taskwire_queue_*) is exported by one API process at a time: the
    # holder of a Redis lock of this TTL (renewed every third of it), once it has held it for
    # the handover (set it to at least Prometheus's scrape interval, so the previous holder's
    # samples are stale before the new one's appear and a sum() never counts them twice).
    metrics_queue_lock_ttl_s: float = Field(default=15.0, ge=1)
    metrics_queue_handover_s: float = Field(default=30.0, ge=0)
    # Opt-in: taskwire_api_key_requests_total{key=<owner id>}, one series per API key owner
    # (a key's non-secret owner id, never the key). Off by default: keys are unbounded.
    metrics_key_labels: bool = False
    # When set, GET /metrics (the API's and each worker's probe port) answers only a scrape
    # with `Authorization: Bearer <token>` (Prometheus: `authorization: {credentials: …}`),
    # else 401; unset, /metrics is open (keep it then on the cluster's network only).
    metrics_token: SecretStr | None = None

    # --- logging
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    # --- tracing: OpenTelemetry, off unless the standard OTEL_* variables turn it on
    # (OTEL_TRACES_EXPORTER, OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_TRACES_SAMPLER/_ARG: see
    # core/tracing.py). For tests and debugging, finished spans can also go to this file as
    # JSON lines (this alone turns tracing on).
    trace_file: Path | None = None

    @field_validator(
        "api_keys", "webhook_schedule_s", "outbound_allow_cidrs", "trusted_proxies", mode="before"
    )
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("worker_classes")
    @classmethod
    def _classes(cls, value: str) -> str:
        if len(set(value)) != len(value):
            raise ValueError("name each job class once")
        return value

    @field_validator("webhook_schedule_s")
    @classmethod
    def _schedule(cls, value: list[float]) -> list[float]:
        if not value or any(delay < 0 for delay in value):
            raise ValueError("the webhook schedule needs at least one delay, none negative")
        return value

    @field_validator("outbound_allow_cidrs", "trusted_proxies")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        import ipaddress

        for cidr in value:
            ipaddress.ip_network(cidr, strict=False)
        return value

    @field_validator("public_base_url")
    @classmethod
    def _public_base(cls, value: str | None) -> str | None:
        from urllib.parse import urlsplit

        if value is None or not value.strip():
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"public_base_url must be an absolute http(s) URL, got {value!r}")
        if parts.query or parts.fragment or "@" in parts.netloc:
            raise ValueError("public_base_url takes no credentials, query or fragment")
        return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"

    def all_api_keys(self) -> list[str]:
        """Every accepted API key in clear (only the key ring may hold them)."""
        keys = [key.get_secret_value() for key in self.api_keys]
        if self.dev_api_key is not None:
            keys.append(self.dev_api_key.get_secret_value())
        return keys
