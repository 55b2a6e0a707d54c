#!/bin/sh
# Install the Debian packages stashfs needs, only those that are missing.
# pyfuse3 has no wheel: it builds against libfuse3 (headers via pkg-config) and Python's headers.
# rsync and git: the real-tools tests run them through the mount (tests/test_mount_tools.py).
set -eu
PKGS="${STASHFS_DEB_PACKAGES:-fuse3 libfuse3-dev pkg-config gcc python3-venv python3-dev rsync git}"  # override: tests
missing=""
for p in $PKGS; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done
[ -z "$missing" ] && exit 0
echo "stashfs: installing Debian packages:$missing"
SUDO=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO=sudo; else
        echo "stashfs: missing packages:$missing (run as root or install them)" >&2; exit 1
    fi
fi
export DEBIAN_FRONTEND=noninteractive
# Another apt (unattended-upgrades on a fresh machine, a second `make`) may hold the dpkg lock:
# apt waits for it up to APT_LOCK_TIMEOUT seconds (default 600) instead of failing at once.
LOCK_WAIT="-o DPkg::Lock::Timeout=${APT_LOCK_TIMEOUT:-600}"
# shellcheck disable=SC2086
$SUDO apt-get $LOCK_WAIT update -qq
# shellcheck disable=SC2086
$SUDO apt-get $LOCK_WAIT install -y -qq --no-install-recommends $missing
