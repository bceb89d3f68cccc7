#!/bin/sh
# Write the secrets a compose or Kubernetes deploy of HFX needs, so that it does not run open:
#   DIR/internal-token   the token every HFX process presents to the others (x-hfx-internal)
#   DIR/api-keys         the router's API keys, one per line (clients: Bearer <key>)
#   DIR/redis-password   Redis's password (HFX_REDIS_PASSWORD_FILE for every HFX process)
# Usage: deploy/make-secrets.sh [DIR]   (default: deploy/compose/secrets). Existing files are kept,
# so running it again changes nothing; delete a file to make a new one.
# The directory is 0700 (only its owner reaches the files on the host); the files are 0644
# because they are bind-mounted into containers that run as a non-root user (uid 10001).
set -eu
DIR=${1:-$(dirname "$0")/compose/secrets}
mkdir -p "$DIR"
chmod 0700 "$DIR"
umask 022
new_secret() { od -An -N32 -tx1 /dev/urandom | tr -d ' \n'; }
if [ ! -s "$DIR/internal-token" ]; then
    new_secret > "$DIR/internal-token"; echo >> "$DIR/internal-token"
fi
if [ ! -s "$DIR/redis-password" ]; then
    new_secret > "$DIR/redis-password"; echo >> "$DIR/redis-password"
fi
if [ ! -s "$DIR/api-keys" ]; then
    { echo "# HFX router API keys, one per line"; echo "hfx-$(new_secret)"; } > "$DIR/api-keys"
fi
chmod 0644 "$DIR/internal-token" "$DIR/api-keys" "$DIR/redis-password"
echo "$DIR: internal-token, redis-password, api-keys (first key: $(grep -v '^#' "$DIR/api-keys" | head -n1 | cut -c1-12)...)"
