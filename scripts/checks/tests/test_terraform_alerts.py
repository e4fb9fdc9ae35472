"""What the on-call is told: the module's alert policies (monitoring.tf).

Each failure that bqdrain cannot fix by itself must reach someone:

* a table dead-lettered, on the day it happens, even while earlier dead
  letters still wait;
* a failed Cloud Run execution (the worker exits 0 when the units left are
  held by other live tasks, so a failed execution is a real failure);
* a producer that did not complete a run within its schedule's window;
* work waiting on the work subscription longer than workers should need;
* a Cloud Scheduler attempt that failed to start a job;

every policy notifies var.alert_notification_channels, incidents that stay
open are notified again (renotify_interval) where the API allows it, and a
module without channels says so at plan time and in an output. Read with
python-hcl2 (tests/tfconfig.py); the windows are checked against the
schedules with croniter.
"""

from __future__ import annotations

import math
import os
import re
import zoneinfo
from datetime import datetime, timezone
from pathlib import Path

import croniter
import pytest

from conftest import ROOT
from tfconfig import Config, Evaluator, load_tfvars

MODULE = Path(os.environ.get("CHECKS_TERRAFORM_DIR", ROOT / "terraform"))
EXAMPLE = MODULE / "examples" / "scheduled-export"
TFVARS_EXAMPLE = EXAMPLE / "terraform.tfvars.example"

POLICY = "google_monitoring_alert_policy"


@pytest.fixture(scope="module")
def module():
    return Config.load(MODULE)


def blocks(body: dict, name: str) -> list[dict]:
    """The `name` blocks of body, written out or as `dynamic "name"` content."""
    found = list(body.get(name, []))
    for dynamic in body.get("dynamic", []):
        if name in dynamic:
            found += dynamic[name].get("content", [])
    return found


def policies(config: Config) -> dict[str, dict]:
    return {a: b for a, b in config.resources.items() if a.startswith(POLICY + ".")}


def conditions(config: Config) -> list[tuple[str, str, dict]]:
    """(policy address, condition kind, condition body) of every policy."""
    found = []
    for address, body in policies(config).items():
        for condition in blocks(body, "conditions"):
            for kind in ("condition_threshold", "condition_absent", "condition_matched_log",
                         "condition_monitoring_query_language", "condition_prometheus_query_language"):
                for inner in condition.get(kind, []):
                    found.append((address, kind, inner))
    return found


def filter_text(config: Config, condition: dict) -> str:
    """A condition's filter with locals and a dynamic block's iterator expanded."""
    text = config.expand(condition.get("filter", ""))
    # `filter = conditions.value` inside `dynamic "conditions"` over a local map.
    if re.search(r"\bconditions\.value\b", text):
        text = " ".join(config.expand(v) for v in _dynamic_maps(config))
    # Quotes come escaped or not, depending on where the string was written.
    return text.replace('\\"', '"')


def _dynamic_maps(config: Config):
    for body in policies(config).values():
        for dynamic in body.get("dynamic", []):
            if "conditions" in dynamic:
                yield dynamic["conditions"].get("for_each", "")


def watching(config: Config, *needles: str) -> list[tuple[str, str, dict]]:
    """The conditions whose filter names every needle."""
    return [(a, k, c) for a, k, c in conditions(config) if all(n in filter_text(config, c) for n in needles)]


# --- every failure is watched -------------------------------------------------------

def test_dead_letter_backlog_is_watched(module):
    assert watching(module, "subscription/num_undelivered_messages", "google_pubsub_subscription.dead_letter")


def test_each_new_dead_letter_opens_an_incident(module):
    """The backlog condition opens one incident and stays open while dead
    letters wait (31 days by default), so a later day's dead letters would
    notify nobody: new ones, published by the worker or forwarded by Pub/Sub,
    need conditions of their own that close again."""
    published = watching(module, "topic/send_message_operation_count", "google_pubsub_topic.dead_letter")
    forwarded = watching(module, "subscription/dead_letter_message_count", "google_pubsub_subscription.work")
    assert published, "no condition on publishes to the dead-letter topic (the worker's dead letters)"
    assert forwarded, "no condition on dead_letter_message_count of the work subscription (Pub/Sub's)"
    for _, kind, condition in published + forwarded:
        assert kind == "condition_threshold" and condition.get("comparison") == "COMPARISON_GT"
        assert condition.get("duration") == "0s"


def test_failed_executions_of_both_jobs_are_watched(module):
    failed = watching(module, "run.googleapis.com/job/completed_execution_count", 'metric.labels.result = "failed"')
    assert failed, "no condition on failed Cloud Run executions"
    text = " ".join(filter_text(module, c) for _, _, c in failed)
    for job in ("google_cloud_run_v2_job.producer", "google_cloud_run_v2_job.worker"):
        assert job in text, f"failed executions of {job} are not watched"


def test_a_producer_that_did_not_run_is_watched(module):
    """No successful producer execution in the window: COMPARISON_LT 1 on the
    sum over the window, and missing data (no execution at all) counts."""
    missed = watching(module, "run.googleapis.com/job/completed_execution_count",
                      'metric.labels.result = "succeeded"', "google_cloud_run_v2_job.producer")
    assert missed, "no condition on the producer's successful executions"
    _, kind, condition = missed[0]
    assert kind == "condition_threshold"
    assert condition.get("comparison") == "COMPARISON_LT" and condition.get("threshold_value") == 1
    assert condition.get("evaluation_missing_data") == "EVALUATION_MISSING_DATA_ACTIVE"
    aggregation = condition["aggregations"][0]
    assert aggregation.get("per_series_aligner") == "ALIGN_SUM"
    assert "producer_missed_run_alert_seconds" in module.expand(aggregation.get("alignment_period"))


def test_old_work_is_watched(module):
    assert watching(module, "subscription/oldest_unacked_message_age", "google_pubsub_subscription.work")


def test_scheduler_attempt_errors_are_watched(module):
    logs = [(a, k, c) for a, k, c in conditions(module) if k == "condition_matched_log"]
    text = " ".join(filter_text(module, c) for _, _, c in logs)
    for needle in ("cloud_scheduler_job", "scheduler.logging.AttemptFinished", "severity >= ERROR",
                   "google_cloud_scheduler_job.start"):
        assert needle in text, f"no log-based condition with {needle}"


# --- who is told, and again ---------------------------------------------------------------

def test_every_policy_notifies_the_channels(module):
    for address, body in policies(module).items():
        assert body.get("notification_channels") == "${var.alert_notification_channels}", address


def test_open_metric_incidents_are_notified_again(module):
    """renotify_interval where the API allows it (metric-based policies whose
    incidents stay open: dead letters waiting, no run, old work)."""
    for address in ("dead_letters", "producer_missed_run", "work_backlog_age"):
        body = module.resources[f"{POLICY}.{address}"]
        strategy = blocks(body["alert_strategy"][0], "notification_channel_strategy")
        assert strategy, f"{address}: no notification_channel_strategy"
        assert "renotify_interval" in strategy[0], address
        for_each = next(d["notification_channel_strategy"]["for_each"]
                        for d in body["alert_strategy"][0]["dynamic"] if "notification_channel_strategy" in d)
        assert "var.alert_renotify_seconds" in module.expand(for_each), address
    assert module.default("alert_renotify_seconds") == 86400


def test_log_based_policies_are_rate_limited(module):
    """Cloud Monitoring requires notification_rate_limit of a policy with a
    log-match condition (AlertStrategy.notificationRateLimit)."""
    for address, kind, _ in conditions(module):
        if kind == "condition_matched_log":
            strategy = module.resources[address]["alert_strategy"][0]
            assert strategy.get("notification_rate_limit"), address


def test_no_channel_is_said_loudly(module):
    outputs = (MODULE / "outputs.tf").read_text(encoding="utf-8")
    assert re.search(r'output "alert_notification_warning"', outputs), "no output says the alerts notify nobody"
    checks = (MODULE / "checks.tf").read_text(encoding="utf-8") if (MODULE / "checks.tf").is_file() else ""
    assert re.search(r'check "alerts_reach_someone"', checks), "no check block warns when no channel is set"


# --- the missed-run window fits the schedules ------------------------------------------

def longest_gap_utc(expression: str, zone: str) -> float:
    """The longest real time between two runs of a schedule read in `zone`,
    over a year: a daily run in a zone with daylight saving is 25 h apart
    once a year."""
    tz = zoneinfo.ZoneInfo(zone)
    runs = croniter.croniter(expression, datetime(2027, 1, 1))
    times = []
    while len(times) < 20000:
        local = runs.get_next(datetime)
        if local >= datetime(2028, 1, 1):
            break
        times.append(local.replace(tzinfo=tz).astimezone(timezone.utc))
    return max((b - a).total_seconds() for a, b in zip(times, times[1:]))


def test_longest_gap_utc_sees_daylight_saving():
    assert longest_gap_utc("30 4 * * *", "Etc/UTC") == 86400
    assert longest_gap_utc("30 4 * * *", "Europe/Paris") == 90000


def test_missed_run_window_covers_the_schedules(module):
    """The window must exceed the longest gap between two runs plus the
    producer's run time, or the alert fires between healthy runs."""
    tfvars = load_tfvars(TFVARS_EXAMPLE)
    window = module.default("producer_missed_run_alert_seconds")
    timeout = module.default("producer_task_timeout_seconds")
    cases = {"module defaults": (module.default("schedule"), module.default("time_zone")),
             "terraform.tfvars.example": (tfvars.get("schedule", module.default("schedule")),
                                          tfvars.get("time_zone", module.default("time_zone")))}
    for where, (schedule, zone) in cases.items():
        gap = longest_gap_utc(schedule, zone)
        assert window >= gap + timeout, (
            f"{where}: {schedule!r} in {zone} runs up to {gap:.0f} s apart, and the producer may take {timeout} s: "
            f"producer_missed_run_alert_seconds = {window} would fire between healthy runs")


def test_missed_run_alignment_stays_within_cloud_monitoring_limit(module):
    """At most 25 h of alignment period in an alerting policy; the rest of the
    window is a retest window."""
    condition = watching(module, 'metric.labels.result = "succeeded"')[0][2]
    for window in (3600, 90000, 93600):
        values = {"producer_missed_run_alert_seconds": window}
        alignment = Evaluator(values, module).eval(module.locals["producer_missed_run_alignment"])
        duration = Evaluator(values, module).eval(module.locals["producer_missed_run_duration"])
        assert alignment <= 90000 and alignment + duration == window
    assert "producer_missed_run_duration" in module.expand(condition["duration"]) or \
        "local.producer_missed_run_duration" in condition["duration"]
    assert math.isclose(module.default("producer_missed_run_alert_seconds"), 93600)
