#!/bin/sh
# taskwire's container entrypoint: `api` (the default), `worker` or `sim`; anything else is
# run as given (`docker run IMAGE python -c ...`). exec, so the process gets the signals.
set -eu
role="${1:-api}"
[ "$#" -gt 0 ] && shift
case "$role" in
  api) exec python -m service "$@" ;;
  worker) exec python -m worker "$@" ;;
  sim) exec python -m sim --host "${HOST:-0.0.0.0}" --port "${SIM_PORT:-9100}" "$@" ;;
  *) exec "$role" "$@" ;;
esac
