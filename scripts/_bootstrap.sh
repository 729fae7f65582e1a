# Sourced by the scripts in this folder: makes ./.venv match requirements.lock.
# Re-installs only when the lock file or pyproject.toml changed since the last install.
# A script that sets NEEDS_CHROMIUM=1 first also gets Debian's chromium (scripts/_chromium.sh).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
STAMP="$VENV/.installed"
want="$(cat "$ROOT/requirements.lock" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  echo "setting up $VENV (first run or dependencies changed)..." >&2
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$ROOT/requirements.lock"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation --config-settings editable_mode=compat -e "$ROOT"
  echo "$want" > "$STAMP"
fi
if [ "${NEEDS_CHROMIUM:-0}" = 1 ]; then
  "$ROOT/scripts/_chromium.sh"
fi
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
