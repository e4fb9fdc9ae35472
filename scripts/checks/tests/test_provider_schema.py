"""The schema cache, against resources whose Terraform schema we know.

If cdktf changed how it encodes names, optionality or blocks, these fail
before the validator starts passing everything (or nothing).
"""

import pytest

import provider_schema


@pytest.fixture(scope="module")
def schema():
    return provider_schema.load()


def required(node):
    return {a for a, r in node["a"].items() if r} | {b for b, s in node.get("b", {}).items() if s["r"]}


def block(node, *path):
    for name in path:
        node = node["b"][name]["s"]
    return node


def test_whole_provider_is_there(schema):
    assert schema["provider_version"] == "6.50.0"
    assert len(schema["resource"]) > 1000
    assert len(schema["data"]) > 300
    assert "project" in schema["provider"]["a"]


def test_pubsub_subscription(schema):
    sub = schema["resource"]["google_pubsub_subscription"]
    assert required(sub) == {"name", "topic"}
    assert {"dead_letter_policy", "retry_policy", "expiration_policy", "push_config"} <= set(sub["b"])
    assert set(block(sub, "dead_letter_policy")["a"]) == {"dead_letter_topic", "max_delivery_attempts"}
    assert set(block(sub, "retry_policy")["a"]) == {"minimum_backoff", "maximum_backoff"}
    assert required(block(sub, "expiration_policy")) == {"ttl"}
    assert {"ack_deadline_seconds", "message_retention_duration", "labels"} <= set(sub["a"])
    assert sub["b"]["dead_letter_policy"]["m"] == 0


def test_cloud_run_v2_job(schema):
    job = schema["resource"]["google_cloud_run_v2_job"]
    assert required(job) == {"name", "location", "template"}
    inner = block(job, "template", "template")
    assert {"service_account", "timeout", "max_retries"} <= set(inner["a"])
    containers = block(job, "template", "template", "containers")
    assert job["b"]["template"]["s"]["b"]["template"]["s"]["b"]["containers"]["m"] == 1
    assert required(containers) == {"image"}
    assert required(block(job, "template", "template", "containers", "env")) == {"name"}
    assert "limits" in block(job, "template", "template", "containers", "resources")["a"]


def test_cloud_scheduler_job(schema):
    job = schema["resource"]["google_cloud_scheduler_job"]
    assert required(job) == {"name"}
    assert {"schedule", "time_zone", "region", "attempt_deadline"} <= set(job["a"])
    assert required(block(job, "http_target")) == {"uri"}
    assert required(block(job, "http_target", "oauth_token")) == {"service_account_email"}


def test_storage_bucket_and_iam_member(schema):
    assert required(schema["resource"]["google_storage_bucket"]) == {"name", "location"}
    rule = block(schema["resource"]["google_storage_bucket"], "lifecycle_rule")
    assert required(rule) == {"action", "condition"}
    member = schema["resource"]["google_storage_bucket_iam_member"]
    assert required(member) == {"bucket", "role", "member"}
    assert required(block(member, "condition")) == {"title", "expression"}


def test_monitoring_alert_policy(schema):
    policy = schema["resource"]["google_monitoring_alert_policy"]
    assert required(policy) == {"combiner", "conditions", "display_name"}
    assert policy["b"]["conditions"]["m"] == 1
    threshold = block(policy, "conditions", "condition_threshold")
    assert required(threshold) == {"comparison", "duration"}


def test_renamed_properties_use_terraform_names(schema):
    # cdktf calls these buildAttribute / detectMd5Hash; Terraform does not.
    assert "build" in schema["resource"]["google_cloudbuild_trigger"]["b"]
    assert "detect_md5hash" in schema["resource"]["google_storage_bucket_object"]["a"]


def test_data_sources(schema):
    assert schema["data"]["google_project"]["a"].keys() >= {"project_id"}
    assert "google_service_account" in schema["data"]
