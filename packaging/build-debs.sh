#!/usr/bin/env bash
# Build Keyline's Debian packages for the host architecture:
#   keyline-gateway, keyline-agent, keyline-directory, keyline-phone
#     ->  target/debian/*.deb
#
# Usage: packaging/build-debs.sh        (or: make deb)
#
# It installs the Debian tools it needs when they are missing (debhelper,
# dpkg-dev, and the libraries the programs link against), builds the release
# binaries with cargo, generates the man pages and shell completions from the
# CLI definitions (keyline-pkggen), stages a source tree under
# target/debian/build/ and runs `dpkg-buildpackage -b` on it (debhelper does
# the maintainer scripts, conffiles, shlibs Depends, stripping, compression).
#
# Environment:
#   KEYLINE_DEB_VERSION   Debian version, e.g. 0.1.1-1 (default: the workspace
#                         version from Cargo.toml, revision -1; a version
#                         without a revision gets -1 appended)
#   KEYLINE_DEB_OUT       output directory (default: <repo>/target/debian)
#   KEYLINE_DEB_NO_CARGO  1: do not run cargo; package the binaries (and run
#                         the keyline-pkggen) already built in the profile's
#                         folder
#   KEYLINE_DEB_PROFILE   cargo profile of the binaries (default: release;
#                         the packaging tests use `dev` with
#                         KEYLINE_DEB_NO_CARGO=1: the binaries `make test`
#                         has just built, packaged the same way)
#   CARGO, CARGO_TARGET_DIR  honoured as cargo does
set -euo pipefail

die() {
  echo "build-debs: error: $*" >&2
  exit 1
}
say() { echo "build-debs: $*"; }

# Run from inside `cargo test` (tests/tests/packaging.rs), the environment
# carries the test crate's CARGO_PKG_* and friends; some build scripts (ring)
# rerun when those change, which would rebuild every release crate. Build as
# from a plain shell.
while IFS= read -r var; do
  case "$var" in
    CARGO_PKG_* | CARGO_MANIFEST_* | CARGO_CRATE_NAME | CARGO_BIN_* | CARGO_PRIMARY_PACKAGE | \
      CARGO_TARGET_TMPDIR | CARGO_RUSTC_CURRENT_DIR | OUT_DIR | RUST_RECURSION_COUNT)
      unset "$var"
      ;;
  esac
done < <(compgen -e)

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
CARGO=${CARGO:-cargo}
out=${KEYLINE_DEB_OUT:-$repo/target/debian}
mkdir -p "$out"
out=$(cd "$out" && pwd)

# --- Debian tools -----------------------------------------------------------
# Build tools for the packages, and (through scripts/install-deps.sh) the
# -dev libraries cargo links against, which also pull in the runtime
# libraries dpkg-shlibdeps needs to see.
need=(debhelper dpkg-dev)
missing=()
for p in "${need[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  say "installing: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
scripts/install-deps.sh

# --- Which packages ---------------------------------------------------------
# package:crate-dir:binary:state-name
all=(
  "keyline-gateway:gatewayd:keyline-gatewayd:gatewayd"
  "keyline-agent:lan-agent:keyline-agent:agent"
  "keyline-directory:directory:keyline-directory:directory"
  "keyline-phone:softphone:keyline-phone:"
)
pkgs=()
for entry in "${all[@]}"; do
  IFS=: read -r pkg dir bin _state <<<"$entry"
  if [ -f "$dir/src/main.rs" ] && grep -q "name = \"$bin\"" "$dir/Cargo.toml"; then
    pkgs+=("$entry")
  else
    say "SKIPPING $pkg: the crate $dir/ has no binary $bin yet"
  fi
done
[ "${#pkgs[@]}" -gt 0 ] || die "no package to build"

# --- Versions ---------------------------------------------------------------
upstream=$(awk '
  /^\[workspace\.package\]/ { inpkg = 1; next }
  /^\[/ { inpkg = 0 }
  inpkg && $1 == "version" { gsub(/[" ]/, "", $3); print $3; exit }
' Cargo.toml)
[ -n "$upstream" ] || die "no version under [workspace.package] in Cargo.toml"
version=${KEYLINE_DEB_VERSION:-$upstream-1}
case "$version" in
  *-*) ;;
  *) version="$version-1" ;;
esac
[[ "$version" =~ ^[0-9][A-Za-z0-9.+~]*-[A-Za-z0-9.+~]+$ ]] ||
  die "KEYLINE_DEB_VERSION '$version' is not a Debian version like 0.1.0-1"

# The packages' date: the last commit's, so that rebuilds of one commit
# give the same files; the current time outside a git checkout. Exported
# only after cargo has run: C build scripts (ring, libsqlite3-sys) rerun when
# it changes, and every commit would then rebuild the release binaries.
date_epoch=${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct 2>/dev/null || date +%s)}

# --- Binaries, man pages, completions ---------------------------------------
target_dir=$("$CARGO" metadata --format-version 1 --no-deps 2>/dev/null |
  grep -o '"target_directory":"[^"]*"' | head -1 | cut -d'"' -f4) || true
[ -n "$target_dir" ] || target_dir=${CARGO_TARGET_DIR:-$repo/target}
profile=${KEYLINE_DEB_PROFILE:-release}
case "$profile" in
  *[!a-z0-9-]* | "") die "KEYLINE_DEB_PROFILE '$profile' is not a cargo profile name" ;;
esac
# cargo's folder for the profile: `dev` (and `test`) build into debug/.
case "$profile" in
  dev | test) release="$target_dir/debug" ;;
  *) release="$target_dir/$profile" ;;
esac
gen="$target_dir/keyline-pkggen"

if [ "${KEYLINE_DEB_NO_CARGO:-0}" != 1 ]; then
  cargo_args=(build --profile "$profile" -p keyline-pkggen)
  for entry in "${pkgs[@]}"; do
    IFS=: read -r _pkg dir _bin _state <<<"$entry"
    cargo_args+=(-p "$(awk -F'"' '/^name *=/ { print $2; exit }' "$dir/Cargo.toml")")
  done
  say "cargo ${cargo_args[*]}"
  "$CARGO" "${cargo_args[@]}"
fi
export SOURCE_DATE_EPOCH=$date_epoch
[ -x "$release/keyline-pkggen" ] || die "$release/keyline-pkggen is missing (build it, or unset KEYLINE_DEB_NO_CARGO)"
rm -rf "$gen"
"$release/keyline-pkggen" "$gen"
for entry in "${pkgs[@]}"; do
  IFS=: read -r _pkg _dir bin _state <<<"$entry"
  [ -x "$release/$bin" ] || die "$release/$bin is missing (build it, or unset KEYLINE_DEB_NO_CARGO)"
done

# --- Stage the source tree --------------------------------------------------
build="$out/build"
src="$build/keyline-${version%-*}"
rm -rf "$build"
mkdir -p "$src/bin"
cp -r packaging/debian "$src/debian"
cp -r packaging/conf "$src/conf"
cp -r "$gen" "$src/gen"
cp -r packaging/desktop "$src/desktop"

unit_for() { # package -> the unit files it ships: "source-file debhelper-name"
  case "$1" in
    keyline-gateway) echo "keyline-gatewayd.service keyline-gateway.keyline-gatewayd.service" ;;
    keyline-directory) echo "keyline-directory.service keyline-directory.keyline-directory.service" ;;
    keyline-agent)
      echo "keyline-agent-headless.service keyline-agent.keyline-agent-headless.service"
      echo "keyline-agent.service keyline-agent.keyline-agent.user.service"
      ;;
    keyline-phone) echo "keyline-phone.service keyline-phone.keyline-phone.user.service" ;;
  esac
}

built=()
for entry in "${pkgs[@]}"; do
  IFS=: read -r pkg _dir bin state <<<"$entry"
  cp "$release/$bin" "$src/bin/"
  while read -r unit dhname; do
    cp "systemd/$unit" "$src/debian/$dhname"
  done < <(unit_for "$pkg")
  # The window has no state or user of its own: debhelper's snippets only.
  if [ -n "$state" ]; then
    for s in postinst postrm; do
      sed -e "s/@PKG@/$pkg/g" -e "s/@STATE@/$state/g" "packaging/maintscripts/$s.in" >"$src/debian/$pkg.$s"
    done
  fi
  built+=("$pkg")
done

# Drop the stanzas of skipped packages from debian/control, and their files.
for entry in "${all[@]}"; do
  IFS=: read -r pkg _rest <<<"$entry"
  if ! printf '%s\n' "${built[@]}" | grep -qx "$pkg"; then
    awk -v pkg="$pkg" '
      BEGIN { RS = ""; ORS = "\n\n" }
      $0 !~ ("(^|\n)Package: " pkg "\n") { print }
    ' "$src/debian/control" >"$src/debian/control.new"
    mv "$src/debian/control.new" "$src/debian/control"
    rm -f "$src/debian/$pkg".*
  fi
done

maint=$(sed -n 's/^Maintainer: //p' packaging/debian/control)
{
  echo "keyline ($version) unstable; urgency=medium"
  echo
  echo "  * Package build of Keyline $upstream$(git -C "$repo" log -1 --format=' (commit %h)' 2>/dev/null || true)."
  echo
  echo " -- $maint  $(date -u -R -d "@$SOURCE_DATE_EPOCH")"
} >"$src/debian/changelog"

# --- Build ------------------------------------------------------------------
say "dpkg-buildpackage for ${built[*]} $version"
(cd "$src" && dpkg-buildpackage -us -uc -b) >"$build/dpkg-buildpackage.log" 2>&1 || {
  tail -n 40 "$build/dpkg-buildpackage.log" >&2
  die "dpkg-buildpackage failed; full log: $build/dpkg-buildpackage.log"
}

arch=$(dpkg --print-architecture)
for pkg in "${built[@]}"; do
  deb="$build/${pkg}_${version}_${arch}.deb"
  [ -f "$deb" ] || die "dpkg-buildpackage made no $deb"
  # One version per package in the output, so that
  # `apt install ./target/debian/keyline-gateway_*.deb` is unambiguous.
  rm -f "$out/${pkg}"_*.deb
  mv "$deb" "$out/"
  say "built $out/$(basename "$deb")"
done
