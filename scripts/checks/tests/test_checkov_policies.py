"""The CKV_BQD_* checkov policies fail on bad config and pass on good.

checkov logs and skips an external check that fails to import, so a broken
policy would otherwise vanish silently: this runs checkov (its own venv) on
tests/fixtures/checkov/ and compares every result with the table below.
"""

import json
import subprocess

import pytest

from conftest import CHECKS, FIXTURES, ROOT

CHECKOV = ROOT / ".venv" / "checkov" / "bin" / "checkov"
POLICIES = CHECKS / "checkov_policies"
IDS = [f"CKV_BQD_{n}" for n in range(1, 7)]

P, F = "PASSED", "FAILED"
SUB = "google_pubsub_subscription"
EXPECTED = {
    # check        resource                                       result
    ("CKV_BQD_1", f"{SUB}.good_pull"): P,
    ("CKV_BQD_2", f"{SUB}.good_pull"): P,
    ("CKV_BQD_3", f"{SUB}.good_pull"): P,
    ("CKV_BQD_1", f"{SUB}.good_dead_letter"): P,
    ("CKV_BQD_2", f"{SUB}.good_dead_letter"): P,
    ("CKV_BQD_3", f"{SUB}.good_dead_letter"): P,
    ("CKV_BQD_1", f"{SUB}.good_push"): P,
    ("CKV_BQD_2", f"{SUB}.good_push"): P,
    ("CKV_BQD_3", f"{SUB}.good_push"): P,
    ("CKV_BQD_1", f"{SUB}.bad_bare"): F,
    ("CKV_BQD_2", f"{SUB}.bad_bare"): F,
    ("CKV_BQD_3", f"{SUB}.bad_bare"): F,
    ("CKV_BQD_1", f"{SUB}.bad_partial"): F,
    ("CKV_BQD_2", f"{SUB}.bad_partial"): P,
    ("CKV_BQD_3", f"{SUB}.bad_partial"): F,
    ("CKV_BQD_1", f"{SUB}.bad_attempts"): F,
    ("CKV_BQD_2", f"{SUB}.bad_attempts"): P,
    ("CKV_BQD_3", f"{SUB}.bad_attempts"): P,
    ("CKV_BQD_1", f"{SUB}.bad_dead_letter_loop"): F,
    ("CKV_BQD_2", f"{SUB}.bad_dead_letter_loop"): F,
    ("CKV_BQD_3", f"{SUB}.bad_dead_letter_loop"): F,
    ("CKV_BQD_4", "google_cloud_run_v2_job.good_own_account"): P,
    ("CKV_BQD_4", "google_cloud_run_v2_job.bad_no_account"): F,
    ("CKV_BQD_4", "google_cloud_run_v2_job.bad_default_account"): F,
    ("CKV_BQD_5", "google_project_iam_member.good_job_user"): P,
    ("CKV_BQD_5", "google_cloud_run_v2_job_iam_member.good_executor"): P,
    ("CKV_BQD_5", "google_pubsub_topic_iam_policy.good_topic_policy"): P,
    ("CKV_BQD_5", "google_project_iam_member.bad_editor"): F,
    ("CKV_BQD_5", "google_storage_bucket_iam_member.bad_storage_admin"): F,
    ("CKV_BQD_5", "google_bigquery_dataset_iam_binding.bad_bigquery_admin"): F,
    ("CKV_BQD_5", "google_service_account_iam_member.bad_sa_admin"): F,
    ("CKV_BQD_5", "google_project_iam_binding.bad_owner"): F,
    ("CKV_BQD_6", "google_iam_policy.good_policy"): P,
    ("CKV_BQD_6", "google_iam_policy.bad_policy"): F,
}


@pytest.fixture(scope="module")
def results():
    """{(check id, resource): PASSED/FAILED} from one checkov run on the fixtures."""
    assert CHECKOV.exists(), f"{CHECKOV} missing: run scripts/checks/install.sh"
    proc = subprocess.run(
        [str(CHECKOV), "--framework", "terraform", "--skip-download", "-o", "json",
         "--external-checks-dir", str(POLICIES), "--check", ",".join(IDS),
         "-d", str(FIXTURES / "checkov")],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    found = {}
    for outcome, key in ((P, "passed_checks"), (F, "failed_checks")):
        for item in report["results"][key]:
            found[(item["check_id"], item["resource"])] = outcome
    return found


def test_every_policy_loaded_and_ran(results):
    assert {check for check, _ in results} == set(IDS)


@pytest.mark.parametrize("check, resource", sorted(EXPECTED))
def test_policy_result(results, check, resource):
    assert results.get((check, resource)) == EXPECTED[(check, resource)]


def test_no_unexpected_results(results):
    assert set(results) == set(EXPECTED)
