# Sourced by the scripts in this folder: makes ./.venv match requirements.lock.
# Re-installs only when the lock file or pyproject.toml changed since the last install.
# A script that sets NEEDS_TEST_SYSTEM=1 first also gets the system programs the tests drive:
# Debian's chromium (the console's browser tests) and PostgreSQL's server programs.
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
if [ "${NEEDS_TEST_SYSTEM:-0}" = 1 ]; then
  "$ROOT/scripts/_ensure_package.sh" chromium "the web console's browser tests" /usr/bin/chromium
  "$ROOT/scripts/_ensure_package.sh" postgresql "the PostgreSQL storage tests" \
    /usr/local/bin/initdb "/usr/lib/postgresql/*/bin/initdb"
fi
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
