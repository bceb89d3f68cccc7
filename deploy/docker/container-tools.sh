#!/usr/bin/env bash
# Container tooling for tests/integration/test_compose.py (run by `make test`, so by CI too):
# podman + runc (crun fails here: "cgroups in hybrid mode not supported"), the dnsname CNI plugin
# (service names between containers), debootstrap (the base
# image is built locally: no registry), docker-compose (validates the compose file offline), from
# apt when missing (root, or sudo); and a containers.conf drop-in (the default ulimits exceed this
# sandbox's hard limits). Idempotent: a machine that has them installs nothing.
set -euo pipefail
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
t0=$(date +%s)
need=()
# golang-github-containernetworking-plugin-dnsname: with podman's CNI backend, containers find each
# other by service name only through it (a Recommends of nothing: without it, "redis" does not resolve).
for pkg in podman runc debootstrap docker-compose golang-github-containernetworking-plugin-dnsname; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# The default ulimits exceed this sandbox's hard limits; a drop-in leaves containers.conf alone.
$sudo mkdir -p /etc/containers/containers.conf.d
printf '[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = "runc"\n' \
    | $sudo tee /etc/containers/containers.conf.d/50-hfx-ci.conf >/dev/null
echo "container tooling ready in $(( $(date +%s) - t0 ))s (installed: ${need[*]:-nothing})"
