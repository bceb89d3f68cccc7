#!/bin/sh
# Entrypoint for a scaler container whose workers are its own child processes (`hfx scaler
# --autoscale`, compose profile `autoscale`): each worker must bind and register an address the
# router's container can dial, so this passes the container's IP to every worker.
# Usage: hfx-scaler [hfx scaler flags...]
#
#   HFX_WORKER_HOST   address the workers bind and register; default: this container's IP address
set -eu
if [ -z "${HFX_WORKER_HOST:-}" ]; then
    HFX_WORKER_HOST=$(python3 -c 'import socket; print(socket.gethostbyname(socket.gethostname()))')
fi
exec hfx scaler --worker-arg="--host=$HFX_WORKER_HOST" "$@"
