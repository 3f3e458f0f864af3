#!/usr/bin/env bash
# Podman for the image tests, set up the way it works on this project's machines (no Docker engine,
# no registry but Debian's and PyPI):
#
#   bash tests/container/podman.sh setup    # packages, containers.conf, the Debian 12 base image
#   source <(bash tests/container/podman.sh env)   # CONTAINERS_CONF and OXTUNE_BASE_IMAGE
#
# - Debian's podman, runc, mmdebstrap and uidmap packages (installed with apt when missing and this is
#   root; otherwise the message names the command to run);
# - a containers.conf that uses runc (crun refuses here), the cgroupfs cgroup manager and no default
#   ulimits, in tests/container/.podman/ (git-ignored), passed to podman through CONTAINERS_CONF;
# - the base image `localhost/oxtune-debian:bookworm`: `mmdebstrap --variant=minbase bookworm`, from
#   Debian's own packages, imported with `podman import` (made once; kept in podman's storage).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
dir="$root/tests/container/.podman"
conf="$dir/containers.conf"
base="localhost/oxtune-debian:bookworm"

say() { echo "podman.sh: $*" >&2; }
die() {
  say "FAILED: $*"
  exit 1
}

packages() {
  local missing=() cmd pkg
  for pair in podman:podman runc:runc mmdebstrap:mmdebstrap newuidmap:uidmap; do
    cmd="${pair%%:*}" pkg="${pair##*:}"
    command -v "$cmd" > /dev/null || missing+=("$pkg")
  done
  [ "${#missing[@]}" = 0 ] && return 0
  local install="apt-get install -y --no-install-recommends ${missing[*]}"
  [ "$(id -u)" = 0 ] || die "missing ${missing[*]}: run \`sudo $install\` (Debian 12 packages)"
  say "installing ${missing[*]} from Debian's packages"
  if ! DEBIAN_FRONTEND=noninteractive $install > "$dir/apt.log" 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get update > "$dir/apt.log" 2>&1 || true
    DEBIAN_FRONTEND=noninteractive $install >> "$dir/apt.log" 2>&1 || die "\`$install\` failed; see $dir/apt.log"
  fi
}

write_conf() {
  cat > "$conf" << 'CONF'
# podman settings for this project's machines (tests/container/podman.sh): runc, since crun refuses
# here; cgroupfs, since there is no systemd; no default ulimits, which the sandbox does not allow.
[containers]
default_ulimits = []

[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
CONF
}

base_image() {
  if CONTAINERS_CONF="$conf" podman image exists "$base"; then
    return 0
  fi
  say "making $base with mmdebstrap (Debian 12 minbase, Debian's packages)"
  local tar="$dir/bookworm-minbase.tar"
  mmdebstrap --variant=minbase bookworm "$tar" > "$dir/mmdebstrap.log" 2>&1 ||
    die "\`mmdebstrap --variant=minbase bookworm $tar\` failed; see $dir/mmdebstrap.log"
  CONTAINERS_CONF="$conf" podman import "$tar" "$base" > /dev/null || die "\`podman import $tar $base\` failed"
  rm -f "$tar"
}

case "${1:-}" in
  setup)
    mkdir -p "$dir"
    packages
    write_conf
    base_image
    say "ready: $(podman --version), base image $base"
    ;;
  env)
    echo "export CONTAINERS_CONF=\"$conf\""
    echo "export OXTUNE_BASE_IMAGE=\"$base\""
    ;;
  *)
    echo "usage: $0 setup | env" >&2
    exit 2
    ;;
esac
