#!/usr/bin/env bash
# Install the system packages Keyline needs to build (and with --test, to
# test), if missing. Idempotent: does nothing when everything is there.
#
# The package lists live in scripts/deps/: `*.build` files are always
# installed, `*.test` files with --test. One package per line; `#` starts a
# comment. Each area of the project keeps its own file.
set -euo pipefail
cd "$(dirname "$0")/deps"

lists=(*.build)
if [ "${1:-}" = "--test" ]; then
  lists+=(*.test)
fi

want=()
for f in "${lists[@]}"; do
  [ -f "$f" ] || continue
  while read -r line; do
    line="${line%%#*}"
    for p in $line; do want+=("$p"); done
  done <"$f"
done

missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
  fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Browser tests drive Debian's Chromium from Node (playwright-core, axe-core),
# pinned by tests/browser/package-lock.json; nothing is downloaded at run time.
if [ "${1:-}" = "--test" ] && [ -f ../../tests/browser/package.json ]; then
  browser_dir=../../tests/browser
  if [ ! -d "$browser_dir/node_modules" ] || [ "$browser_dir/package-lock.json" -nt "$browser_dir/node_modules" ]; then
    (cd "$browser_dir" && npm ci --no-audit --no-fund --silent && touch node_modules)
  fi
fi

# The hostile-client test (tests/tests/hostile.rs) runs a Python client on
# another QUIC stack: aioquic and cbor2 from PyPI, in a venv of its own.
if [ "${1:-}" = "--test" ] && [ -f ../../tests/hostile/requirements.txt ]; then
  hostile_dir=../../tests/hostile
  if ! "$hostile_dir/.venv/bin/python" -c "import aioquic, cbor2" 2>/dev/null; then
    python3 -m venv "$hostile_dir/.venv"
    "$hostile_dir/.venv/bin/pip" install --quiet --disable-pip-version-check -r "$hostile_dir/requirements.txt"
  fi
fi
