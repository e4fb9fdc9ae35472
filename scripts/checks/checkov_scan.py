#!/usr/bin/env python3
"""Run checkov over terraform/ and the Dockerfile; print one line per finding.

Why not plain `checkov ...`: checkov exits 0 on things that should fail a
CI check, and does so silently:
* an external check that fails to import is logged and dropped, so a broken
  CKV_BQD_* policy would simply never run: here every id in --require must
  have produced a result;
* a file it cannot parse is reported under parsing_errors, not as a failure:
  here it is one;
* a skipped check must carry a reason: the skip list is read from
  checkov-skips.txt, one `CHECK_ID  reason` per line, and a line without a
  reason is an error.

Usage (stdlib only, any python3):
    checkov_scan.py --checkov .venv/checkov/bin/checkov --skips scripts/checks/checkov-skips.txt \
        --policies scripts/checks/checkov_policies --require CKV_BQD_1,... -d terraform/ -f Dockerfile
Exit status: 0 clean, 1 findings or a policy that did not run, 2 bad setup.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

SKIP_LINE = re.compile(r"^(?P<id>CKV\d?_[A-Z0-9_]+)\s+(?P<reason>\S.*)$")


def read_skips(path: Path) -> dict[str, str]:
    """{check id: reason} from the skip file; exits 2 on a line without a reason."""
    skips = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = SKIP_LINE.match(line)
        if not match:
            sys.exit(f"{path}:{number}: want `CHECK_ID  reason why it does not apply`, got {line!r}")
        skips[match["id"]] = match["reason"]
    return skips


def run_checkov(opts, skips: dict[str, str]) -> list[dict]:
    """checkov's JSON reports (one per framework that found something).

    One checkov process per target, run side by side: given both -d and -f,
    checkov 3.3.30 scans the folder and silently ignores the file.
    """
    targets = [["-d", d] for d in opts.directory] + [["-f", f] for f in opts.file]
    with tempfile.TemporaryDirectory() as out:
        procs = []
        for index, target in enumerate(targets):
            folder = Path(out) / str(index)
            cmd = [opts.checkov, "--framework", "terraform", "dockerfile", "--skip-download",
                   "--external-checks-dir", opts.policies, "-o", "json", "--output-file-path", str(folder)]
            if skips:
                cmd += ["--skip-check", ",".join(sorted(skips))]
            procs.append((cmd + target, folder, subprocess.Popen(
                cmd + target, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
        reports = []
        for cmd, folder, proc in procs:
            stdout, stderr = proc.communicate()
            report = folder / "results_json.json"
            if proc.returncode not in (0, 1) or not report.exists():
                sys.stderr.write(stdout[-3000:] + stderr[-3000:])
                sys.exit(f"checkov failed (exit {proc.returncode}) without a report: {' '.join(cmd)}")
            data = json.loads(report.read_text(encoding="utf-8"))
            reports += data if isinstance(data, list) else [data]
    return [r for r in reports if isinstance(r, dict) and "results" in r]


def finding_line(item: dict) -> str:
    """`CKV_ID  resource  file:lines  message [details]` for one failed check."""
    lines = item.get("file_line_range") or [0, 0]
    where = f"{item.get('repo_file_path') or item.get('file_path')}:{lines[0]}-{lines[1]}"
    details = "; ".join(item.get("details") or [])
    return (f"{item['check_id']}  {item['resource']}  {where}  {item['check_name']}"
            + (f"  [{details}]" if details else ""))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkov", required=True)
    parser.add_argument("--policies", required=True)
    parser.add_argument("--skips", type=Path, required=True)
    parser.add_argument("--require", default="", help="comma-separated check ids that must produce a result")
    parser.add_argument("-d", "--directory", action="append", default=[])
    parser.add_argument("-f", "--file", action="append", default=[])
    opts = parser.parse_args()

    skips = read_skips(opts.skips)
    for check_id, reason in sorted(skips.items()):
        print(f"skipped {check_id}: {reason}")
    reports = run_checkov(opts, skips)

    ran, failed, errors, passed = set(), [], [], 0
    for report in reports:
        results = report["results"]
        passed += len(results.get("passed_checks", []))
        for item in results.get("passed_checks", []) + results.get("failed_checks", []):
            ran.add(item["check_id"])
        failed += results.get("failed_checks", [])
        errors += [f"{report.get('check_type')}: cannot parse {e}" for e in results.get("parsing_errors", [])]
    missing = [c for c in opts.require.split(",") if c and c not in ran]

    for item in sorted(failed, key=lambda i: (i["check_id"], i["resource"])):
        print("FAILED " + finding_line(item))
    for error in errors:
        print("ERROR " + error)
    for check_id in missing:
        print(f"ERROR custom policy {check_id} produced no result: did it fail to load?"
              f" (try: {opts.checkov} -c {check_id} --external-checks-dir {opts.policies} -d terraform/)")
    frameworks = ", ".join(sorted(str(r.get("check_type")) for r in reports))
    print(f"checkov ({frameworks}): {passed} passed, {len(failed)} failed, {len(skips)} check ids skipped, "
          f"{len(errors)} parsing errors, custom policies run: {len(ran & set(opts.require.split(',')))}")
    return 1 if failed or errors or missing else 0


if __name__ == "__main__":
    sys.exit(main())
