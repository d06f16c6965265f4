"""Run the upstream simulator: `python -m sim --port 9100`."""

from __future__ import annotations

import argparse
import os

import uvicorn

from sim.app import create_app
from sim.scenario import Scenario


def main() -> None:
    parser = argparse.ArgumentParser(description="taskwire's simulated upstream providers")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument(
        "--api-key",
        default=os.environ.get("TASKWIRE_SIM_API_KEY"),
        help="bearer key clients must send (default: $TASKWIRE_SIM_API_KEY; unset = any key)",
    )
    parser.add_argument("--ttft-ms", type=float, default=0.0, help="time to first token")
    parser.add_argument("--tps", type=float, default=0.0, help="tokens/s (0 = unthrottled)")
    parser.add_argument("--tokens", type=int, default=24, help="default answer length")
    args = parser.parse_args()
    app = create_app(
        api_key=args.api_key or None,
        defaults=Scenario(tokens=args.tokens, ttft_ms=args.ttft_ms, tps=args.tps),
    )
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        loop="uvloop",
        http="httptools",
        timeout_keep_alive=75,
        timeout_graceful_shutdown=2,
    )


if __name__ == "__main__":
    main()
