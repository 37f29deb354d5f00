# Sourced by scripts/serve, scripts/test and scripts/bench: make .venv, install the project.
# One stamp for all of them, $VENV/.apiarium-installed: "HASH-EXTRAS", the hash of setup.cfg
# and pyproject.toml and the extras installed so far (comma-separated, e.g. "test").  A run
# installs only when those files changed or it asks for an extra not installed yet, and then
# keeps the extras already there: scripts/serve after scripts/test installs nothing.  Two
# scripts started at once install one after the other (flock on $VENV/.apiarium-install.lock;
# the second then finds the venv ready).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${APIARIUM_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

ensure_venv() {   # ensure_venv [EXTRA]   e.g. ensure_venv test
  local want="${1:-}" lock hash stamp extras spec
  local -a have=()
  mkdir -p "$VENV"
  exec {lock}>>"$VENV/.apiarium-install.lock"
  if ! flock -n "$lock"; then
    echo "scripts: waiting for another script installing into $VENV" >&2
    flock "$lock"
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    echo "scripts: creating the virtualenv in $VENV" >&2
    "$PYTHON" -m venv "$VENV"
  fi
  hash="$(cat "$ROOT/setup.cfg" "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)"
  stamp="$(cat "$VENV/.apiarium-installed" 2>/dev/null || true)"
  # the extras installed so far and the one asked for, as a set
  [ -z "$stamp" ] || IFS=, read -ra have <<< "${stamp#*-}"
  extras="$(printf '%s\n' "${have[@]}" "$want" | sed '/^$/d' | sort -u | paste -sd, -)"
  if [ "$stamp" != "$hash-$extras" ]; then
    spec="$ROOT${extras:+[$extras]}"
    echo "scripts: installing apiarium${extras:+ with [$extras]} into $VENV" >&2
    # setuptools too: the one `python -m venv` brings (65.5 on 3.11) has published CVEs
    # (CVE-2022-40897, CVE-2024-6345, CVE-2025-47273) that pip-audit in scripts/test reports;
    # below 81, which dropped pkg_resources (pytest-tornado still imports it)
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip \
      "setuptools>=78.1.1,<81" >&2
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$spec" >&2
    echo "$hash-$extras" > "$VENV/.apiarium-installed"
  fi
  exec {lock}>&-    # not held by what runs next (scripts/serve execs the gateway)
}
