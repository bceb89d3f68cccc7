#!/bin/sh
# Entrypoint for a worker container that must register itself in Redis with an address other
# containers can reach, and a unique instance id, so that `docker compose up --scale worker=N`
# works with one service definition. Usage: hfx-worker [hfx worker flags...]
#
#   HFX_INSTANCE_ID   default: the container hostname (unique per container)
#   HFX_WORKER_HOST   address to bind AND register; default: this container's IP address
#
# `hfx worker` registers "<--host>:<port>", so binding 0.0.0.0 would register an unreachable
# address; until the worker has an --advertise-host flag, bind the container IP instead
# (deploy/compose/README.md, "Needed in services/").
set -eu
: "${HFX_INSTANCE_ID:=$(hostname)}"
if [ -z "${HFX_WORKER_HOST:-}" ]; then
    HFX_WORKER_HOST=$(python3 -c 'import socket; print(socket.gethostbyname(socket.gethostname()))')
fi
exec hfx worker --instance-id "$HFX_INSTANCE_ID" --host "$HFX_WORKER_HOST" "$@"
