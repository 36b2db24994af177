#!/usr/bin/env bash
# Install the system packages Keyline needs to build and test, if missing.
# Idempotent: does nothing when everything is already there.
set -euo pipefail

build_pkgs=(pkg-config libopus-dev libasound2-dev)
test_pkgs=(iproute2 nftables sox opus-tools debhelper dpkg-dev lintian debootstrap systemd-container man-db systemd)
want=("${build_pkgs[@]}")
if [ "${1:-}" = "--test" ]; then
  want+=("${test_pkgs[@]}")
fi

missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi

echo "installing: ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
