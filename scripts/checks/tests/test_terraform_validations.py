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


def assert_rejected(variables_only, name, **values):
    run = plan(variables_only, **values)
    assert run.returncode != 0, f"{values} accepted"
    assert "Invalid value for variable" in run.stderr and f"var.{name}" in run.stderr, run.stderr


def test_defaults_are_accepted(variables_only):
    assert_accepted(variables_only)


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
])
def test_values(variables_only, name, good, bad):
    assert_accepted(variables_only, **{name: good})
    assert_rejected(variables_only, name, **{name: bad})


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
