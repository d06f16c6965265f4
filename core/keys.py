"""Redis key names, arq's included: the one place that spells them."""

from __future__ import annotations

from dataclasses import dataclass

# arq's own key layout (arq.constants): taskwire writes jobs in arq's format and settles them
# itself, so it must name arq's keys exactly as arq does.
ARQ_JOB_PREFIX = "arq:job:"
ARQ_IN_PROGRESS_PREFIX = "arq:in-progress:"
ARQ_RETRY_PREFIX = "arq:retry:"
RUN_RESULT_JOB = "run_result"
DELIVER_WEBHOOK_JOB = "deliver_webhook"


@dataclass(frozen=True, slots=True)
class TaskRef:
    """A task is named by its owner (API key id) and the client's taskUUID."""

    owner: str
    uuid: str


class Keys:
    """Key names. A task's keys share a hash tag (`{owner:uuid}`) so one script may use them."""

    def __init__(self, prefix: str, queue_name: str):
        self.prefix = prefix
        self.queue = queue_name
        self.wake = f"{queue_name}:wake"
        self.workers = f"{prefix}:workers"
        # A task key is TASK_HEAD + "<owner>:<uuid>" + "}"; Lua scripts that start from a job
        # id build it from these two parts.
        self.task_head = f"{prefix}:task:{{"
        # The scheduler's keys (core/scheduler.py) all start with this; its Lua scripts
        # build the rest: ready:<class>:<owner>, tenants:<class>, delayed, leases, running,
        # blocked:<kind>, depth, queued, vt, tag:<class>, sched, started.
        self.queue_prefix = f"{prefix}:q:"
        # Per-tenant settings the scheduler and limits read (weight, max_r, max_h, ...).
        self.tenant_prefix = f"{prefix}:tenant:"
        # Per-key limits (core/limits.py): token buckets rate:<owner> (new work) and
        # rate:<owner>:read (getResponse, imageUpload); upstream tokens per clock minute
        # tpm:<owner>:<epoch minute>. The submit script builds the first and the last.
        self.rate_prefix = f"{prefix}:rate:"
        self.usage_prefix = f"{prefix}:tpm:"

    def tenant(self, owner: str) -> str:
        return self.tenant_prefix + owner

    def rate_bucket(self, owner: str, bucket: str | None = None) -> str:
        """A key's token bucket: new work (no name), or a named one ("read")."""
        return f"{self.rate_prefix}{owner}" + (f":{bucket}" if bucket else "")

    def token_usage(self, owner: str, minute: int) -> str:
        """A key's upstream tokens in one clock minute (epoch seconds // 60)."""
        return f"{self.usage_prefix}{owner}:{minute}"

    def task(self, ref: TaskRef) -> str:
        return f"{self.task_head}{ref.owner}:{ref.uuid}}}"

    def task_index(self, owner: str) -> str:
        """ZSET of a key's tasks (members: canonical taskUUIDs, scored by creation time in
        epoch ms), written by the submit script and read by `GET /v1/tasks`."""
        return f"{self.prefix}:tasks:{owner}"

    def events(self, ref: TaskRef) -> str:
        return f"{self.prefix}:ev:{{{ref.owner}:{ref.uuid}}}"

    @staticmethod
    def job_id(ref: TaskRef, index: int) -> str:
        """arq job id of result `index`: "<owner>:<uuid>:<index>"."""
        return f"{ref.owner}:{ref.uuid}:{index}"

    @staticmethod
    def delivery_job_id(ref: TaskRef, index: int) -> str:
        """arq job id of result `index`'s webhook delivery (claims skip its prefetch)."""
        return f"{ref.owner}:{ref.uuid}:{index}:webhook"

    def ws_session(self, session: str) -> str:
        """Hash of a WebSocket session (core/sessions.py): its owner and outstanding tasks,
        kept for the resume window after the socket closes."""
        return f"{self.prefix}:wss:{session}"

    def image(self, image_uuid: str) -> str:
        return f"{self.prefix}:img:{image_uuid}"

    def route_health(self, model: str) -> str:
        """One hash per model: each route's consecutive failures and cool-down end."""
        return f"{self.prefix}:routes:{model}"

    def webhook_secret(self, owner: str) -> str:
        return f"{self.prefix}:whsec:{owner}"

    # API keys managed at run time (core/apikeys.py): one hash per key, by its SHA-256 digest
    # (hex), an index of them all, one record per owner (and the set of its keys), a version
    # bumped by every change and a channel announcing each change to the API processes.
    def apikey(self, digest_hex: str) -> str:
        return f"{self.prefix}:apikey:{digest_hex}"

    @property
    def apikey_index(self) -> str:
        return f"{self.prefix}:apikeys"

    @property
    def apikey_version(self) -> str:
        return f"{self.prefix}:apikeys:version"

    @property
    def apikey_changes(self) -> str:
        return f"{self.prefix}:apikeys:changed"

    def owner(self, owner: str) -> str:
        return f"{self.prefix}:owner:{owner}"

    def owner_keys(self, owner: str) -> str:
        return f"{self.prefix}:owner:{owner}:keys"

    @property
    def pending_deliveries(self) -> str:
        """ZSET of pending webhook delivery job ids, scored by when each is due (epoch ms)."""
        return f"{self.prefix}:webhooks:pending"

    @property
    def cancels(self) -> str:
        """Channel on which job ids of running results to stop are published (cancel)."""
        return f"{self.prefix}:cancel"

    @property
    def delivery_sweep_lock(self) -> str:
        """Held by the one worker sweeping overdue deliveries this interval."""
        return f"{self.prefix}:webhooks:sweep"

    def webhook_host(self, host: str) -> str:
        """ZSET of the delivery attempts in flight to one receiver host (job ids, scored by
        when each one's hold lapses, epoch ms)."""
        return f"{self.prefix}:webhooks:host:{host}"

    # What the operator console (service/console.py) reads that nothing else records:
    # webhook deliveries failing by receiver host, and failed results by error code.
    @property
    def failing_hosts(self) -> str:
        """ZSET of receiver hosts with failing deliveries, scored by the latest failure (ms)."""
        return f"{self.prefix}:webhooks:failing"

    def failing_deliveries(self, host: str) -> str:
        """ZSET of one host's failing delivery job ids, scored by each one's latest failed
        attempt (epoch ms); a delivered one leaves it (core/deliveries.py)."""
        return f"{self.prefix}:webhooks:failing:{host}"

    @property
    def recent_failures(self) -> str:
        """LIST of the latest failed results, newest first, capped (core/failures.py)."""
        return f"{self.prefix}:failures:recent"

    def failure_counts(self, minute: int) -> str:
        """Hash of failed results by error code in one clock minute (epoch s // 60)."""
        return f"{self.prefix}:failures:m:{minute}"

    @staticmethod
    def job(job_id: str) -> str:
        return ARQ_JOB_PREFIX + job_id

    @staticmethod
    def in_progress(job_id: str) -> str:
        return ARQ_IN_PROGRESS_PREFIX + job_id

    @staticmethod
    def retry(job_id: str) -> str:
        return ARQ_RETRY_PREFIX + job_id
