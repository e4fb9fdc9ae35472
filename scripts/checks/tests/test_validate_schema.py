"""The schema validator itself: each kind of error is caught, good config passes.

Without these a validator that silently checks nothing would look green.
"""

import pytest

import validate_schema
from conftest import FIXTURES

SCHEMA_FIXTURES = FIXTURES / "schema"


def run(capsys, name):
    """(exit status, problem lines) of the validator on one fixture."""
    status = validate_schema.main([str(SCHEMA_FIXTURES / name)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith("schema ("), lines
    return status, lines[:-1]


def test_good_config_passes(capsys):
    status, problems = run(capsys, "good.tf")
    assert (status, problems) == (0, [])


@pytest.mark.parametrize("fixture, expected", [
    ("unknown_type.tf", [
        ':1: google_pubsub_topicz.t: unknown resource type "google_pubsub_topicz"',
        ':4: data.google_projectz.p: unknown data source "google_projectz"',
    ]),
    ("unknown_argument.tf", [
        ':1: google_pubsub_topic.t: unknown argument "ack_deadline"',
        ':5: google_storage_bucket.b: unknown argument "versioning.disabled"',
    ]),
    ("unknown_block.tf", [
        ':1: google_cloud_run_v2_job.j: unknown block "template.template.containers[0].sidecar"',
    ]),
    ("missing_required.tf", [
        ':3: google_pubsub_subscription.s: missing required argument "expiration_policy.ttl"',
        ':3: google_pubsub_subscription.s: missing required argument "topic"',
        ':8: google_cloud_run_v2_job.j: missing required block "template.template"',
    ]),
    ("dynamic_bad.tf", [
        ':3: google_cloud_run_v2_job.j: unknown argument "template.template.containers[0].env[dynamic].colour"',
        ':3: google_cloud_run_v2_job.j: missing required argument "template.template.containers[0].env[dynamic].name"',
        ':3: google_cloud_run_v2_job.j: unknown block "template.template.containers[0].sidecars" (in a dynamic block)',
    ]),
    ("shape_bad.tf", [
        ':3: google_pubsub_subscription.s: "labels" is an argument, not a block: write labels = ...',
        ':3: google_pubsub_subscription.s: "retry_policy" is a block, not an argument: write retry_policy { ... }',
        ':3: google_pubsub_subscription.s: block "expiration_policy" may appear at most once, found 2',
    ]),
])
def test_each_kind_of_error_is_reported(capsys, fixture, expected):
    status, problems = run(capsys, fixture)
    assert status == 1
    assert [p.split(fixture, 1)[1] for p in problems] == expected


def test_nothing_to_check_is_an_error(tmp_path, capsys):
    assert validate_schema.main([str(tmp_path)]) == 2
    (tmp_path / "empty.tf").write_text('variable "x" {}\n')
    assert validate_schema.main([str(tmp_path)]) == 2


def test_unparsable_file_is_reported(tmp_path, capsys):
    (tmp_path / "bad.tf").write_text('resource "google_pubsub_topic" "t" {\n  name = \n')
    (tmp_path / "ok.tf").write_text('resource "google_pubsub_topic" "t" {\n  name = "t"\n}\n')
    assert validate_schema.main([str(tmp_path)]) == 1
    assert "cannot parse" in capsys.readouterr().out
