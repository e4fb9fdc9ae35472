"""The module's variable validations, evaluated by Terraform itself.

`terraform validate` and `plan` need the Google provider, which cannot be
downloaded here; the variables alone need no provider, so a folder holding
only variables.tf can be initialised and planned offline, and a plan
evaluates every validation exactly as a user's apply would (RE2 regexes,
functions, cross-variable conditions). This caught a regex RE2 refuses
(a repetition bound above 1000) that made every dataset id invalid.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT
from tfconfig import load_tfvars

MODULE = Path(os.environ.get("CHECKS_TERRAFORM_DIR", ROOT / "terraform"))
TFVARS_EXAMPLE = MODULE / "examples" / "scheduled-export" / "terraform.tfvars.example"
REQUIRED = {
    "project_id": "my-project-123",
    "region": "europe-west1",
    "dataset_id": "analytics",
    "bucket_name": "my-project-123-exports",
}


@pytest.fixture(scope="module")
def variables_only(tmp_path_factory):
    terraform = shutil.which("terraform")
    assert terraform, "terraform is not on PATH (Terraform 1.11 is at /usr/local/bin/terraform)"
    folder = tmp_path_factory.mktemp("variables-only")
    shutil.copy(MODULE / "variables.tf", folder)
    # check blocks that read only variables: their warnings show in a plan.
    if (MODULE / "checks.tf").is_file():
        shutil.copy(MODULE / "checks.tf", folder)
    subprocess.run([terraform, "init", "-input=false", "-no-color"], cwd=folder, check=True, capture_output=True)
    return terraform, folder


def plan(variables_only, **values) -> subprocess.CompletedProcess:
    terraform, folder = variables_only
    (folder / "values.auto.tfvars.json").write_text(json.dumps(dict(REQUIRED, **values)))
    return subprocess.run(
        [terraform, "plan", "-input=false", "-no-color", "-lock=false"],
        cwd=folder, capture_output=True, text=True,
    )


def assert_accepted(variables_only, **values):
    run = plan(variables_only, **values)
    assert run.returncode == 0, f"{values} rejected:\n{run.stderr}"


def assert_warned(variables_only, check, **values):
    """The plan succeeds but the check block named `check` warns."""
    run = plan(variables_only, **values)
    assert run.returncode == 0, f"{values} rejected:\n{run.stderr}"
    out = run.stdout + run.stderr
    assert "Check block assertion failed" in out and f'check "{check}"' in out, (
        f"{values}: no warning from check {check}:\n{out}")


def assert_not_warned(variables_only, check, **values):
    run = plan(variables_only, **values)
    assert run.returncode == 0, f"{values} rejected:\n{run.stderr}"
    assert f'check "{check}"' not in run.stdout + run.stderr, f"{values}: check {check} warned"


def assert_rejected(variables_only, name, **values):
    run = plan(variables_only, **values)
    assert run.returncode != 0, f"{values} accepted"
    assert "Invalid value for variable" in run.stderr and f"var.{name}" in run.stderr, run.stderr


def test_defaults_are_accepted(variables_only):
    """Accepted, and the only warning is that no alert notifies anyone."""
    run = plan(variables_only)
    assert run.returncode == 0, run.stderr
    out = run.stdout + run.stderr
    assert out.count("Check block assertion failed") == 1 and 'check "alerts_reach_someone"' in out, out


def test_example_values_are_accepted(variables_only):
    assert_accepted(variables_only, **load_tfvars(TFVARS_EXAMPLE))


@pytest.mark.parametrize("name, low, high", [
    ("ack_deadline_seconds", 10, 600),
    ("max_delivery_attempts", 5, 100),
    ("minimum_backoff_seconds", 0, 600),
    ("maximum_backoff_seconds", 0, 600),
    ("message_retention_seconds", 600, 31 * 24 * 3600),
    ("max_tasks", 1, 10000),
])
def test_limits(variables_only, name, low, high):
    # The lowest minimum and highest maximum backoff, so that neither bound
    # is refused for crossing the other.
    others = {"minimum_backoff_seconds": 0, "maximum_backoff_seconds": 600}
    others.pop(name, None)
    if name == "message_retention_seconds":
        # The worker task timeout must fit in the retention.
        others.update(worker_task_timeout_seconds=low, longest_export_seconds=low - 300)
    assert_accepted(variables_only, **others, **{name: low})
    assert_accepted(variables_only, **others, **{name: high})
    assert_rejected(variables_only, name, **others, **{name: low - 1})
    assert_rejected(variables_only, name, **others, **{name: high + 1})


def test_minimum_backoff_at_most_maximum(variables_only):
    assert_accepted(variables_only, minimum_backoff_seconds=60, maximum_backoff_seconds=60)
    assert_rejected(variables_only, "minimum_backoff_seconds", minimum_backoff_seconds=120, maximum_backoff_seconds=60)


@pytest.mark.parametrize("name, good, bad", [
    ("schedule", "*/15 9-17 * * MON-FRI", "0 3 * *"),
    ("schedule", "0 0 1,15 * *", "0 3 * * * *"),
    ("worker_schedule", "10 3 * * *", "every day"),
    ("time_zone", "America/Argentina/Buenos_Aires", "Paris"),
    ("time_zone", "Etc/UTC", "Europe/"),
    ("dataset_id", "analytics_2026", "my-project:analytics"),
    ("bucket_name", "exports.example.com", "Exports"),
    ("export_prefix", "exports/daily/", "/exports"),
    ("worker_launch", "schedule", "cron"),
    ("worker_memory", "2Gi", "2GB"),
    ("extra_dataset_ids", ["sales", "hr_2026"], ["my-project:sales"]),
    ("extra_dataset_ids", ["sales"], ["sales", "sales"]),
    ("extra_dataset_ids", ["sales"], ["analytics"]),
    ("restore_datasets", ["analytics_restored"], ["my-project:restored"]),
    ("restore_datasets", ["restored"], ["restored", "restored"]),
    ("restore_datasets", ["restored"], ["analytics"]),
])
def test_values(variables_only, name, good, bad):
    # A schedule that skips days cannot have the missed-run alert.
    others = {"producer_missed_run_alert_seconds": None} if name == "schedule" else {}
    assert_accepted(variables_only, **others, **{name: good})
    assert_rejected(variables_only, name, **others, **{name: bad})


def test_compression_must_suit_the_format(variables_only):
    assert_accepted(variables_only, export_format="parquet", export_compression="zstd")
    assert_rejected(variables_only, "export_compression", export_format="csv", export_compression="snappy")


def test_views_settings_go_together(variables_only):
    assert_accepted(variables_only, export_views=True, max_bytes_billed=10**12)
    assert_rejected(variables_only, "max_bytes_billed", max_bytes_billed=10**12)
    assert_rejected(variables_only, "max_bytes_billed", export_views=True, max_bytes_billed=0)
    assert_rejected(variables_only, "export_compression", export_views=True,
                    export_format="parquet", export_compression="zstd")


@pytest.mark.parametrize("days, ok", [(0, True), (7, True), (30, True), (90, True),
                                      (1, False), (6, False), (91, False), (-1, False), (7.5, False)])
def test_soft_delete_retention_is_off_or_within_cloud_storage_limits(variables_only, days, ok):
    """0 turns soft delete off; otherwise Cloud Storage takes 7 to 90 days."""
    if ok:
        assert_accepted(variables_only, soft_delete_retention_days=days)
    else:
        assert_rejected(variables_only, "soft_delete_retention_days", soft_delete_retention_days=days)


# --- Cloud Run limits ----------------------------------------------------------------
# https://docs.cloud.google.com/run/docs/configuring/jobs/cpu, "vCPU and memory
# table": 1 vCPU 128 MiB-4 GiB, 2 vCPU 128 MiB-8 GiB, 4 vCPU 2-16 GiB, 6 vCPU
# 4-24 GiB, 8 vCPU 4-32 GiB; a job takes at least 512 MiB
# (https://docs.cloud.google.com/run/docs/configuring/jobs/memory-limits).
CPU_MEMORY_ACCEPTED = [("1", "512Mi"), ("1", "4Gi"), ("2", "512Mi"), ("2", "8Gi"), ("4", "2Gi"),
                       ("4", "16Gi"), ("6", "4Gi"), ("6", "24Gi"), ("8", "4Gi"), ("8", "32Gi")]
CPU_MEMORY_REJECTED = [("1", "256Mi"), ("1", "4097Mi"), ("2", "9Gi"), ("4", "512Mi"), ("4", "2047Mi"),
                       ("4", "17Gi"), ("6", "3Gi"), ("6", "25Gi"), ("8", "2Gi"), ("8", "33Gi")]


@pytest.mark.parametrize("job", ["worker", "producer"])
@pytest.mark.parametrize("cpu, memory", CPU_MEMORY_ACCEPTED)
def test_cpu_and_memory_cloud_run_accepts(variables_only, job, cpu, memory):
    assert_accepted(variables_only, **{f"{job}_cpu": cpu, f"{job}_memory": memory})


@pytest.mark.parametrize("job", ["worker", "producer"])
@pytest.mark.parametrize("cpu, memory", CPU_MEMORY_REJECTED)
def test_cpu_and_memory_cloud_run_rejects(variables_only, job, cpu, memory):
    assert_rejected(variables_only, f"{job}_memory", **{f"{job}_cpu": cpu, f"{job}_memory": memory})


@pytest.mark.parametrize("name", ["worker_task_timeout_seconds", "producer_task_timeout_seconds"])
def test_task_timeouts_up_to_cloud_run_jobs_limit(variables_only, name):
    """Cloud Run job tasks may run up to 168 hours
    (https://docs.cloud.google.com/run/docs/configuring/task-timeout)."""
    # A producer that may run longer than the missed-run window cannot have that alert.
    others = {"producer_missed_run_alert_seconds": None}
    assert_accepted(variables_only, **others, **{name: 86401})
    assert_accepted(variables_only, **others, **{name: 168 * 3600})
    assert_rejected(variables_only, name, **others, **{name: 168 * 3600 + 1})
    assert_rejected(variables_only, name, **others, **{name: 59})


def test_worker_task_timeout_leaves_room_for_the_longest_export(variables_only):
    """A task killed at its timeout gives its units back: each kill costs a
    delivery attempt, and after max_delivery_attempts the unit is dead-lettered
    while its BigQuery job goes on and succeeds. A timeout shorter than the
    longest export (plus 300 s to start, commit and stop) can never export it."""
    assert_accepted(variables_only, longest_export_seconds=3300, worker_task_timeout_seconds=3600)
    assert_rejected(variables_only, "worker_task_timeout_seconds",
                    longest_export_seconds=3600, worker_task_timeout_seconds=3600)
    assert_rejected(variables_only, "worker_task_timeout_seconds",
                    longest_export_seconds=4 * 3600, worker_task_timeout_seconds=3600)


def test_worker_task_timeout_warns_when_a_task_may_not_finish_its_share(variables_only):
    """With worker_launch = "producer" a task is given about units_per_task
    units, exported worker_concurrency at a time: ceil(units_per_task /
    worker_concurrency) rounds, each up to longest_export_seconds."""
    # 8 units, 4 at once: 2 rounds of 1800 s fit 3900 s; 3 rounds do not.
    assert_not_warned(variables_only, "worker_task_timeout_fits_a_share",
                      longest_export_seconds=1800, worker_task_timeout_seconds=3900)
    assert_warned(variables_only, "worker_task_timeout_fits_a_share",
                  longest_export_seconds=1800, worker_task_timeout_seconds=3900, units_per_task=12)


def test_messages_outlive_the_task_holding_them(variables_only):
    """Pub/Sub drops an unacknowledged message once it is older than the
    subscription's retention, lease or not."""
    assert_rejected(variables_only, "worker_task_timeout_seconds",
                    worker_task_timeout_seconds=7200, message_retention_seconds=3600)
    assert_accepted(variables_only, worker_task_timeout_seconds=3600, message_retention_seconds=3600)


# --- alerts ---------------------------------------------------------------------------
CHANNEL = "projects/my-project-123/notificationChannels/1234567890"


def test_no_notification_channel_is_warned_about(variables_only):
    assert_warned(variables_only, "alerts_reach_someone")
    assert_not_warned(variables_only, "alerts_reach_someone", alert_notification_channels=[CHANNEL])


def test_notification_channels_are_channel_ids(variables_only):
    assert_rejected(variables_only, "alert_notification_channels", alert_notification_channels=["1234567890"])
    assert_rejected(variables_only, "alert_notification_channels", alert_notification_channels=["oncall@example.com"])


@pytest.mark.parametrize("window, ok", [(None, True), (3600, True), (90000, True), (93600, True),
                                        (93660, False), (3599, False), (86430, False)])
def test_missed_run_window_within_cloud_monitoring_limits(variables_only, window, ok):
    """25 h of alignment period at most, plus a 1 h retest window."""
    if ok:
        assert_accepted(variables_only, producer_missed_run_alert_seconds=window)
    else:
        assert_rejected(variables_only, "producer_missed_run_alert_seconds", producer_missed_run_alert_seconds=window)


def test_missed_run_alert_needs_a_daily_schedule(variables_only):
    """A weekday or weekly schedule leaves gaps longer than the alert's window."""
    assert_rejected(variables_only, "producer_missed_run_alert_seconds", schedule="0 5 * * MON-FRI")
    assert_rejected(variables_only, "producer_missed_run_alert_seconds", schedule="0 5 1 * *")
    assert_accepted(variables_only, schedule="0 5 * * MON-FRI", producer_missed_run_alert_seconds=None)
    assert_accepted(variables_only, schedule="0 */6 * * *")


def test_missed_run_window_exceeds_the_producer_timeout(variables_only):
    assert_rejected(variables_only, "producer_missed_run_alert_seconds",
                    producer_missed_run_alert_seconds=3600, producer_task_timeout_seconds=3600)


def test_renotify_interval(variables_only):
    assert_accepted(variables_only, alert_renotify_seconds=None)
    assert_accepted(variables_only, alert_renotify_seconds=3600)
    assert_rejected(variables_only, "alert_renotify_seconds", alert_renotify_seconds=90)
    assert_rejected(variables_only, "alert_renotify_seconds", alert_renotify_seconds=0)


def test_a_schedule_in_the_daylight_saving_hours_is_warned_about(variables_only):
    """01:00-03:59 local is where daylight-saving changes skip or repeat an hour."""
    assert_warned(variables_only, "schedules_avoid_daylight_saving_changes",
                  schedule="30 2 * * *", time_zone="Europe/Paris")
    assert_warned(variables_only, "schedules_avoid_daylight_saving_changes",
                  worker_launch="schedule", worker_schedule="0 1,13 * * *", time_zone="America/New_York")
    assert_not_warned(variables_only, "schedules_avoid_daylight_saving_changes",
                      schedule="30 2 * * *", time_zone="Etc/UTC")
    assert_not_warned(variables_only, "schedules_avoid_daylight_saving_changes",
                      schedule="30 4 * * *", time_zone="Europe/Paris")


def test_image_keep_count_and_digest(variables_only):
    assert_accepted(variables_only, image_keep_count=1)
    assert_rejected(variables_only, "image_keep_count", image_keep_count=0)
    digest = "sha256:" + "0123456789abcdef" * 4
    assert_accepted(variables_only, image=f"europe-west1-docker.pkg.dev/p/bqdrain/bqdrain@{digest}")
    assert_rejected(variables_only, "image", image="europe-west1-docker.pkg.dev/p/bqdrain/bqdrain@sha256:abc")


def test_kms_key_name(variables_only):
    """A crypto key ID, in the bucket's location (the key ring must be where
    the data is: https://docs.cloud.google.com/storage/docs/encryption/using-customer-managed-keys)."""
    key = "projects/keys-project/locations/{}/keyRings/exports/cryptoKeys/bqdrain"
    assert_accepted(variables_only, kms_key_name=key.format("europe-west1"))
    assert_accepted(variables_only, kms_key_name=key.format("europe"), bucket_location="EU")
    assert_rejected(variables_only, "kms_key_name", kms_key_name=key.format("us-central1"))
    assert_rejected(variables_only, "kms_key_name", kms_key_name="bqdrain-key")
