#!/usr/bin/env bash
# The first of README's two commands: installs the one system library the build needs (libvpx,
# for camera video, with pkg-config to find it; idempotent, nothing happens when both are there)
# and runs `tether demo` from a release build. Arguments go to `tether demo` (e.g. --json).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if ! pkg-config --exists vpx 2>/dev/null; then
  SUDO=()
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "need libvpx-dev and pkg-config: not root and no sudo" >&2; exit 1; }
    SUDO=(sudo)
  fi
  echo "==> apt-get install libvpx-dev pkg-config (camera video encoding)" >&2
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libvpx-dev pkg-config
fi
exec cargo run --release -p tether -- demo "$@"
