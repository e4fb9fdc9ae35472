"""trivy and hadolint, offline, find what they must on known-bad fixtures.

scripts/checks/run trusts a clean trivy/hadolint report; these prove the
report could have been dirty: trivy's embedded checks are there and load
without the network (its checks bundle is never downloaded), and hadolint
fails on a bad Dockerfile.
"""

import json
import shutil
import subprocess

import pytest

from conftest import FIXTURES, ROOT

BIN = ROOT / ".venv" / "checks" / "bin"
SCANNERS = FIXTURES / "scanners"
TRIVY_OFFLINE = ["--skip-check-update", "--skip-version-check", "--disable-telemetry",
                 "--cache-dir", str(ROOT / ".tools" / "trivy-cache")]


def offline(cmd: list[str]) -> list[str]:
    """cmd in a network namespace of its own where one can be made (root)."""
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-n", "true"], capture_output=True).returncode == 0:
        return [unshare, "-n", *cmd]
    return cmd


def trivy_findings(target) -> tuple[int, set[str]]:
    proc = subprocess.run(
        offline([str(BIN / "trivy"), "config", "--quiet", *TRIVY_OFFLINE, "--exit-code", "1",
                 "--severity", "HIGH,CRITICAL", "--format", "json", str(target)]),
        capture_output=True, text=True, timeout=300)
    assert proc.stdout, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    ids = {m["ID"] for r in report.get("Results") or [] for m in r.get("Misconfigurations") or []}
    return proc.returncode, ids


@pytest.mark.parametrize("target, expected", [
    ("terraform", {"GCP-0001"}),               # bucket readable by allUsers
    ("Dockerfile.bad", {"DS-0002", "DS-0029"}),  # runs as root; apt-get without --no-install-recommends
])
def test_trivy_embedded_checks_find_known_problems_offline(target, expected):
    status, ids = trivy_findings(SCANNERS / target)
    assert status == 1
    assert expected <= ids, ids


def test_hadolint_fails_on_a_bad_dockerfile():
    proc = subprocess.run([str(BIN / "hadolint"), "--no-color", str(SCANNERS / "Dockerfile.bad")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert {"DL3007", "DL3002"} <= set(proc.stdout.split()), proc.stdout
