#!/usr/bin/env bash
# Makes sure Debian's chromium is at /usr/bin/chromium: the web console's browser tests drive
# it with Playwright (which may not download browsers of its own). Does nothing when it is
# there; otherwise installs the `chromium` package with apt-get (root, or sudo without a
# password), quietly, and fails with a message saying what to do when it cannot.
set -euo pipefail
CHROMIUM=/usr/bin/chromium
[ -x "$CHROMIUM" ] && exit 0
if [ "$(id -u)" = 0 ]; then
  as_root=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  as_root=(sudo -n)
else
  echo "error: $CHROMIUM is missing and installing it needs root:" \
    "run 'apt-get update && apt-get install -y chromium' as root, then try again" >&2
  exit 1
fi
echo "installing Debian's chromium for the browser tests (apt-get)..." >&2
log="$(mktemp)"
if ! { "${as_root[@]}" apt-get update -qq &&
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >"$log" 2>&1; then
  tail -n 20 "$log" >&2
  rm -f "$log"
  echo "error: could not install chromium with apt-get (output above);" \
    "install Debian's chromium package so that $CHROMIUM exists" >&2
  exit 1
fi
rm -f "$log"
if [ ! -x "$CHROMIUM" ]; then
  echo "error: apt-get installed chromium but $CHROMIUM is still missing" >&2
  exit 1
fi
