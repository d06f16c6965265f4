"""The long-lived objects of an API process, built in the lifespan and handed to routes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from redis.asyncio import Redis

from core.catalog import Catalog
from core.deliveries import DeliveryStore
from core.events import EventHub
from core.limits import ReadBucket
from core.outbound import OutboundPolicy
from core.settings import Settings
from core.store import TaskStore
from core.tokens import StreamTokens
from core.webhooks import WebhookSecrets
from service.auth import KeyRing
from service.images import Images
from service.shedding import LoadShedder


@dataclass(slots=True)
class AppState:
    settings: Settings
    catalog: Catalog
    keyring: KeyRing
    redis: Redis
    store: TaskStore
    hub: EventHub
    tokens: StreamTokens
    outbound: OutboundPolicy
    webhook_secrets: WebhookSecrets
    deliveries: DeliveryStore
    images: Images
    read_bucket: ReadBucket  # getResponse / imageUpload rate per key (service/limits.py)
    shedder: LoadShedder | None = None  # 503 serverBusy for interactive work (shedding.py)


async def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.taskwire
    return state


# The FastAPI dependency routes declare to receive the process's state.
State = Annotated[AppState, Depends(get_state)]
