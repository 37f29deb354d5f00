"""systemd/apiarium.service and scripts/install-systemd: the unit is valid for systemd
(``systemd-analyze verify``), carries the directives the deployment relies on, points at what
the install script installs, and the script's dry run shows every step and changes nothing."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / "apiarium.service"
INSTALL = REPO / "scripts" / "install-systemd"
NO_ANALYZE = ("systemd-analyze not installed: apt-get install systemd (scripts/test does it "
              "when run as root) to check systemd/apiarium.service")


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """{section: {key: [values, in order]}}; keys may repeat, as systemd allows."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"directive outside a section: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"not a directive: {line}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    return parse_unit(UNIT.read_text())


@pytest.fixture(scope="module")
def dry_run() -> str:
    out = subprocess.run(["bash", str(INSTALL), "--dry-run"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def one(unit, section: str, key: str) -> str:
    values = unit[section].get(key)
    assert values, f"[{section}] has no {key}="
    return values[-1]


# ---------------------------------------------------------------------------- the unit
def test_unit_runs_the_gateway_as_a_dedicated_user(unit):
    svc = unit["Service"]
    assert one(unit, "Service", "User") == "apiarium"
    assert one(unit, "Service", "Group") == "apiarium"
    assert one(unit, "Service", "Type") in ("exec", "simple")
    argv = shlex.split(one(unit, "Service", "ExecStart"))
    assert argv[0].endswith("/bin/apiarium") and argv[1] == "serve"
    assert argv[2:] == ["--config", "/etc/apiarium/apiarium.yaml"]
    assert one(unit, "Service", "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one(unit, "Service", "Restart") == "on-failure"
    assert "-/etc/apiarium/env" in svc["EnvironmentFile"]      # '-': optional
    assert "APIARIUM_DATA=/var/lib/apiarium" in svc["Environment"]
    assert one(unit, "Service", "StateDirectory") == "apiarium"
    assert one(unit, "Install", "WantedBy") == "multi-user.target"


def test_unit_stops_after_the_gateway_grace(unit):
    """SIGTERM starts the gateway's graceful stop (30 s by default); systemd must not SIGKILL
    before that grace is over."""
    assert one(unit, "Service", "KillSignal") == "SIGTERM"
    stop = one(unit, "Service", "TimeoutStopSec")
    assert stop.isdigit() and int(stop) > 30, stop
    settings = (REPO / "config" / "apiarium.yaml").read_text()
    grace = int(re.search(r"shutdown_grace_s:\s*(\d+)", settings).group(1))
    assert int(stop) > grace
    assert one(unit, "Service", "LimitNOFILE") == "65536"


def size_of(value: str) -> int:
    """A systemd memory size (``1536M``, ``2G``; 1024-based) in bytes."""
    m = re.fullmatch(r"(\d+)([KMGT]?)", value)
    assert m, f"not a size in bytes: {value!r}"
    return int(m.group(1)) * 1024 ** " KMGT".index(m.group(2) or " ")


def test_unit_bounds_its_memory(unit):
    """Issue 22, item 12: a request that blows up the gateway's memory takes the service's
    processes down one at a time, not the host: MemoryMax bounds them all, MemoryHigh makes the
    kernel reclaim and slow them first, and an OOM kill of one worker leaves the others
    serving (the supervisor replaces it)."""
    high, top = size_of(one(unit, "Service", "MemoryHigh")), size_of(one(unit, "Service",
                                                                          "MemoryMax"))
    assert top >= 1024 ** 3, "room for 4 workers and a few 25 MB bodies in flight"
    assert top // 2 <= high < top
    assert one(unit, "Service", "OOMPolicy") == "continue"
    operations = (REPO / "docs" / "operations.md").read_text()     # how to size it
    sizing = [p for p in operations.split("\n\n") if "MemoryMax" in p]
    assert sizing and "max_body_mb" in sizing[0] and "MemoryHigh" in sizing[0], sizing


def test_unit_is_hardened(unit):
    expected = {
        "NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes",
        "ProtectHome": "yes", "PrivateDevices": "yes", "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes", "ProtectControlGroups": "yes", "LockPersonality": "yes",
        "RestrictRealtime": "yes", "SystemCallArchitectures": "native",
        "ReadWritePaths": "/var/lib/apiarium",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    }
    for key, value in expected.items():
        assert one(unit, "Service", key) == value, key
    # files 0600 whatever the code forgets; no /proc of other processes; no cloud metadata
    for key, value in {"UMask": "0077", "ProtectProc": "invisible", "ProcSubset": "pid",
                       "PrivateMounts": "yes", "RemoveIPC": "yes",
                       "IPAddressDeny": "169.254.0.0/16 fe80::/10"}.items():
        assert one(unit, "Service", key) == value, key
    assert "~@privileged @resources" in unit["Service"]["SystemCallFilter"]
    # no capabilities at all: the default port 8080 needs none (the unit's comment tells how
    # to add CAP_NET_BIND_SERVICE for a port below 1024)
    assert one(unit, "Service", "CapabilityBoundingSet") == ""
    assert "AmbientCapabilities" not in unit["Service"]
    assert "CAP_NET_BIND_SERVICE" in UNIT.read_text()


def test_unit_paths_are_what_install_systemd_installs(unit, dry_run):
    exec_start = shlex.split(one(unit, "Service", "ExecStart"))
    pip = re.search(r"(\S+)/bin/python -m pip install .*--upgrade (/\S+)$", dry_run, re.M)
    assert pip, dry_run
    venv, project = pip.groups()
    assert exec_start[0] == f"{venv}/bin/apiarium"
    assert venv.startswith(project + "/")
    config = exec_start[exec_start.index("--config") + 1]
    assert re.search(rf"(config/apiarium\.yaml {re.escape(config)}$|{re.escape(config)} exists)",
                     dry_run, re.M), dry_run
    assert re.search(r"systemd/apiarium\.service /etc/systemd/system/apiarium\.service$",
                     dry_run, re.M)
    state = one(unit, "Service", "ReadWritePaths")
    assert re.search(rf"install -d .*-o apiarium -g apiarium {re.escape(state)}$", dry_run, re.M)
    assert f"Documentation=file://{project}/README.md" in UNIT.read_text()


# ---------------------------------------------------------------------------- systemd-analyze
def _verify(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True,
                          text=True, timeout=60)


def _about_the_unit(output: str) -> list[str]:
    return [line for line in output.splitlines() if "apiarium" in line]


@pytest.fixture
def analyze():
    if shutil.which("systemd-analyze") is None:
        pytest.skip(NO_ANALYZE)


@pytest.fixture
def verifiable(tmp_path) -> Path:
    """A copy of the unit whose ExecStart binary exists (verify checks that it does): a stub
    in place of /opt/apiarium/.venv/bin/apiarium, which only install-systemd creates."""
    stub = tmp_path / "bin" / "apiarium"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    text = UNIT.read_text()
    binary = shlex.split(one(parse_unit(text), "Service", "ExecStart"))[0]
    copy = tmp_path / "apiarium.service"
    copy.write_text(text.replace(f"ExecStart={binary} ", f"ExecStart={stub} "))
    assert str(stub) in copy.read_text()
    return copy


def test_systemd_analyze_verify_is_clean(analyze, verifiable):
    out = _verify(verifiable)
    assert _about_the_unit(out.stderr + out.stdout) == [], out.stderr
    assert out.returncode == 0, out.stderr


def test_systemd_analyze_verify_catches_a_broken_unit(analyze, verifiable):
    """The check above is not vacuous: a typo in the unit is reported."""
    broken = verifiable.with_name("broken-apiarium.service")
    broken.write_text(verifiable.read_text().replace("Type=exec", "Type=exce")
                      .replace("ProtectSystem=strict", "ProtectSystem=strikt")
                      .replace("MemoryMax=2G", "MemoryMax=2Q"))
    out = _verify(broken)
    assert len(_about_the_unit(out.stderr)) >= 3, out.stderr
    assert "Invalid memory limit '2Q'" in out.stderr


def test_installed_unit_verifies_where_installed(analyze):
    binary = shlex.split(one(parse_unit(UNIT.read_text()), "Service", "ExecStart"))[0]
    if not os.access(binary, os.X_OK):
        pytest.skip(f"{binary} is not installed here (scripts/install-systemd installs it); "
                    f"the stub copy above is verified instead")
    out = _verify(UNIT)
    assert _about_the_unit(out.stderr) == [] and out.returncode == 0, out.stderr


def test_security_exposure_is_low(analyze):
    out = subprocess.run(["systemd-analyze", "security", "--offline=true", str(UNIT)],
                         capture_output=True, text=True, timeout=60)
    if "offline" in out.stderr and "unrecognized" in out.stderr:
        pytest.skip("this systemd-analyze has no `security --offline` (systemd < 250)")
    m = re.search(r"Overall exposure level for apiarium\.service: ([0-9.]+)", out.stdout)
    assert m, out.stdout + out.stderr
    assert float(m.group(1)) <= 1.5, out.stdout


# ---------------------------------------------------------------------------- install-systemd
def test_install_script_dry_run_shows_every_step(dry_run):
    steps = [
        r"(useradd --system .*apiarium$|user apiarium exists)",           # the user
        r"cp -R \S+/apiarium /opt/apiarium/apiarium$",                    # the code
        r"(-m venv /opt/apiarium/\.venv$|/opt/apiarium/\.venv exists)",   # the venv
        r"-m pip install .* /opt/apiarium$",                              # the package
        r"/etc/apiarium/apiarium\.yaml",                                  # the settings
        r"/etc/apiarium/models\.yaml",                                    # the catalog
        r"(would write: /etc/apiarium/env \(mode 0600, root:root\)|/etc/apiarium/env exists)",
        r"/etc/systemd/system/apiarium\.service$",                        # the unit
        r"systemctl daemon-reload$",
        r"check-config --config /etc/apiarium/apiarium\.yaml",
        r"systemctl enable --now apiarium",                               # next steps
        r"journalctl -u apiarium -f",
        r"systemctl reload apiarium",
    ]
    for step in steps:
        assert re.search(step, dry_run, re.M), f"dry run does not show {step!r}:\n{dry_run}"
    # never an unconditional overwrite of the operator's files
    for f in ("apiarium.yaml", "models.yaml", "env"):
        assert not re.search(rf"(rm|cp)\b.*/etc/apiarium/{f}\b", dry_run), f


def test_install_script_dry_run_changes_nothing(tmp_path):
    watched = [Path("/opt/apiarium"), Path("/etc/apiarium"), Path("/var/lib/apiarium"),
               Path("/etc/systemd/system/apiarium.service"), Path("/usr/local/bin/apiarium")]
    before = {p: p.exists() and p.stat().st_mtime_ns for p in watched}
    env = {k: v for k, v in os.environ.items() if k != "PYTHON"}
    out = subprocess.run(["bash", str(INSTALL), "--dry-run"], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    assert "dry run" in out.stdout
    assert {p: p.exists() and p.stat().st_mtime_ns for p in watched} == before
    assert list(tmp_path.iterdir()) == []


def test_install_script_refuses_unknown_arguments():
    out = subprocess.run(["bash", str(INSTALL), "--frobnicate"], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 2 and "unknown argument" in out.stderr
    assert os.access(INSTALL, os.X_OK), "scripts/install-systemd must be executable"
