"""`python -m service`: run the API with uvicorn on $HOST:$PORT (default 127.0.0.1:8000).

uvicorn's own proxy-header handling is off (it would believe X-Forwarded-* from 127.0.0.1):
the app decides whom to believe, from TASKWIRE_TRUSTED_PROXIES (service/origin.py)."""

from __future__ import annotations

import os

import uvicorn


def main() -> None:
    uvicorn.run(
        "service.app:create_app_from_env",
        factory=True,
        host=os.environ.get("HOST", "127.0.0.1"),
        port=int(os.environ.get("PORT", "8000")),
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=10,
        proxy_headers=False,
    )


if __name__ == "__main__":
    main()
