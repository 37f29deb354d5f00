# Sourced by scripts/serve, scripts/test and scripts/bench: make .venv, install the project.
# Reinstalls only when setup.cfg changed (or the extras asked for are new).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${APIARIUM_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

ensure_venv() {   # ensure_venv [EXTRAS]   e.g. ensure_venv test
  local extras="${1:-}" spec="$ROOT" stamp
  [ -n "$extras" ] && spec="$ROOT[$extras]"
  if [ ! -x "$VENV/bin/python" ]; then
    echo "scripts: creating the virtualenv in $VENV" >&2
    "$PYTHON" -m venv "$VENV"
  fi
  stamp="$(cat "$ROOT/setup.cfg" "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)-$extras"
  if [ "$(cat "$VENV/.apiarium-installed" 2>/dev/null)" != "$stamp" ]; then
    echo "scripts: installing apiarium${extras:+ with [$extras]} into $VENV" >&2
    # setuptools too: the one `python -m venv` brings (65.5 on 3.11) has published CVEs
    # (CVE-2022-40897, CVE-2024-6345, CVE-2025-47273) that pip-audit in scripts/test reports;
    # below 81, which dropped pkg_resources (pytest-tornado still imports it)
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip \
      "setuptools>=78.1.1,<81" >&2
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$spec" >&2
    echo "$stamp" > "$VENV/.apiarium-installed"
  fi
}
