#!/usr/bin/env bash
# _ensure_package.sh PACKAGE REASON PATH...
# Makes sure one of the PATHs exists (a glob is fine); otherwise installs Debian's PACKAGE with
# apt-get (as root, or with sudo without a password), quietly, and fails with a message that
# says what to do when it cannot. REASON says what needs it.
set -euo pipefail
package="$1" reason="$2"
shift 2
present() {
  local p
  for p in "$@"; do
    compgen -G "$p" >/dev/null && return 0
  done
  return 1
}
present "$@" && exit 0
if [ "$(id -u)" = 0 ]; then
  as_root=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  as_root=(sudo -n)
else
  echo "error: $reason need Debian's $package, and installing it needs root:" \
    "run 'apt-get update && apt-get install -y $package' as root, then try again" >&2
  exit 1
fi
echo "installing Debian's $package for $reason (apt-get)..." >&2
log="$(mktemp)"
if ! { "${as_root[@]}" apt-get update -qq &&
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package"; } >"$log" 2>&1; then
  tail -n 20 "$log" >&2
  rm -f "$log"
  echo "error: could not install $package with apt-get (output above)" >&2
  exit 1
fi
rm -f "$log"
if ! present "$@"; then
  echo "error: apt-get installed $package but none of $* exists" >&2
  exit 1
fi
