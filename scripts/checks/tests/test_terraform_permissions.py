"""The module grants what bqdrain's calls need, and nothing no call needs.

The calls and their permissions are the table src/adapters/gcp/permissions.json
(who makes each, under which setting, on which resource); what each role the
module grants holds is predefined_roles.json (a pinned, cited copy of just
the permissions the table asks for). For every combination of the settings
that change calls or grants (views, partitions, only-changed, extra datasets,
worker launch, CMEK key), every permission a call of the producer, the
worker, the scheduler or a service agent needs must be held through a grant
to that account on the call's resource or on a resource that covers it (the
dataset's project covers its datasets); and every grant that exists must be
the only one holding some needed permission (else it grants what no call
needs). A restore's calls (worker, setting "restore") need grants on each
of restore_datasets, and on the dataset's project for its load jobs.
Calls made by an operator (replay, check, verify, status) get no
grant from the module and are not checked here. Optional calls (a view's dry
run) are left out: bqdrain goes on without them.
"""

from __future__ import annotations

import itertools
import json

import pytest

from conftest import ROOT
from test_terraform import MODULE, refers_to, target, who
from tfconfig import Config, Evaluator

TABLE = json.loads((ROOT / "src" / "adapters" / "gcp" / "permissions.json").read_text())
ROLES = json.loads((ROOT / "src" / "adapters" / "gcp" / "predefined_roles.json").read_text())["roles"]

# Who in the table, as test_terraform.who() names the grant's member.
PRINCIPALS = {"producer": "producer", "worker": "worker", "scheduler": "scheduler",
              "pubsub-agent": "pubsub-agent", "storage-agent": "gcs-agent"}
# A grant's target (test_terraform.target()) as the table names it.
TARGET_NAMES = {
    "var.dataset_project_id": "dataset_project",
    "google_storage_bucket.exports": "destination_bucket",
    "google_pubsub_topic.work": "work_topic",
    "google_pubsub_topic.dead_letter": "dead_letter_topic",
    "google_pubsub_subscription.work": "work_subscription",
    "google_cloud_run_v2_job.worker": "worker_job",
    "google_cloud_run_v2_job.producer": "producer_job",
    "var.kms_key_name": "kms_key",
}
MAIN_DATASET, EXTRA_DATASET, RESTORE_DATASET = "analytics", "more", "restored"
KMS_KEY = "projects/p/locations/europe-west1/keyRings/r/cryptoKeys/k"

# Every combination of the settings that change what is called or granted.
SETTINGS = [
    {"export_views": views, "export_partitions": partitions, "only_changed": changed,
     "extra_dataset_ids": extra, "worker_launch": launch, "kms_key_name": key,
     "restore_datasets": restore}
    for views, partitions, changed, extra, launch, key, restore in itertools.product(
        (False, True), (False, True), (False, True), ([], [EXTRA_DATASET]),
        ("producer", "schedule"), (None, KMS_KEY), ([], [RESTORE_DATASET]))
]


def label(settings: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in settings.items() if v not in (False, None, []))


def applies(when: str, settings: dict) -> bool:
    return {
        "always": True,
        "views": settings["export_views"],
        "worker_launch": settings["worker_launch"] == "producer",
        "worker_schedule": settings["worker_launch"] == "schedule",
        "kms": settings["kms_key_name"] is not None,
        "restore": bool(settings["restore_datasets"]),
    }.get(when, False)  # replay, project_source: never under the module's accounts


def needs(settings: dict) -> list[tuple[str, str, str, str]]:
    """(principal, permission, target, call) for every required call."""
    datasets = [f"source_dataset:{d}" for d in [MAIN_DATASET, *settings["extra_dataset_ids"]]]
    found = []
    for row in TABLE:
        if row.get("optional") or not applies(row["when"], settings):
            continue
        permissions = row["permission"] if isinstance(row["permission"], list) else [row["permission"]]
        targets = {
            "source_dataset": datasets,
            "restore_dataset": [f"restore_dataset:{d}" for d in settings["restore_datasets"]],
            # The module's restore datasets are in the dataset's project.
            "restore_project": ["dataset_project"],
        }.get(row["target"], [row["target"]])
        for principal in (PRINCIPALS[w] for w in row["who"] if w in PRINCIPALS):
            found += [(principal, p, t, row["call"]) for p in permissions for t in targets]
    return found


def granted(config: Config, settings: dict) -> list[tuple[str, str, str, set]]:
    """(address, principal, target, permissions) for every grant that exists."""
    values = dict(settings, dataset_id=MAIN_DATASET, dataset_project_id=None)
    found = []
    for address, body in config.resources.items():
        rtype = address.split(".")[0]
        if not rtype.endswith("_iam_member"):
            continue
        on = target(config, rtype, body)
        if "for_each" in body and refers_to(config.expand(body["for_each"]), "var.restore_datasets"):
            instances = [f"restore_dataset:{d}" for d in settings["restore_datasets"]]
        elif "for_each" in body:
            assert refers_to(config.expand(body["for_each"]), "var.extra_dataset_ids"), address
            instances = [f"source_dataset:{d}" for d in settings["extra_dataset_ids"]]
        elif "count" in body:
            instances = [TARGET_NAMES.get(on, on)] * int(Evaluator(values, config).eval(body["count"]))
        else:
            instances = ["source_dataset:" + MAIN_DATASET if on == "var.dataset_id" else TARGET_NAMES.get(on, on)]
        role = body.get("role")
        assert role in ROLES, f"{address}: {role} is not in predefined_roles.json: add its permissions there"
        found += [(address, who(config, body.get("member")), t, set(ROLES[role]["permissions"]))
                  for t in instances]
    return found


def covers(grant_target: str, need_target: str) -> bool:
    return grant_target == need_target or (
        grant_target == "dataset_project" and need_target.startswith("source_dataset:"))


def gaps(config: Config, settings: dict) -> tuple[list[str], list[str]]:
    """What a call needs and no grant holds; grants that hold nothing only they hold."""
    grants = granted(config, settings)
    wanted = needs(settings)
    holders = {}
    for principal, permission, on, call in wanted:
        holders[(principal, permission, on)] = [
            g[0] for g in grants if g[1] == principal and permission in g[3] and covers(g[2], on)]
    missing = sorted({f"{principal} lacks {permission} on {on} for {call}"
                      for principal, permission, on, call in wanted
                      if not holders[(principal, permission, on)]})
    needed = {h[0] for h in holders.values() if len(h) == 1}
    unneeded = sorted({f"{address} ({principal} on {on}) holds no permission only it gives to a call"
                       for address, principal, on, _ in grants if address not in needed})
    return missing, unneeded


@pytest.fixture(scope="module")
def module():
    return Config.load(MODULE)


@pytest.mark.parametrize("settings", SETTINGS, ids=label)
def test_the_module_grants_what_every_call_needs_and_nothing_else(module, settings):
    missing, unneeded = gaps(module, settings)
    assert not missing and not unneeded, (
        f"with {label(settings) or 'the defaults'}:\n  missing:\n    " + "\n    ".join(missing)
        + "\n  granted for nothing:\n    " + "\n    ".join(unneeded))


def test_a_grant_removed_is_reported_missing(module):
    """The check itself: the worker without pubsub.viewer on the work
    subscription cannot read its settings at start."""
    broken = Config.load(MODULE)
    del broken.resources["google_pubsub_subscription_iam_member.worker_reads_work_settings"]
    missing, _ = gaps(broken, SETTINGS[0])
    assert missing == ["worker lacks pubsub.subscriptions.get on work_subscription "
                       "for google.pubsub.v1.Subscriber/GetSubscription"]


def test_a_grant_no_call_needs_is_reported(module):
    broken = Config.load(MODULE)
    broken.resources["google_pubsub_topic_iam_member.producer_views_work"] = dict(
        broken.resources["google_pubsub_topic_iam_member.producer_publishes_work"], role="roles/pubsub.viewer")
    _, unneeded = gaps(broken, SETTINGS[0])
    assert unneeded == ["google_pubsub_topic_iam_member.producer_views_work (producer on work_topic) "
                        "holds no permission only it gives to a call"]


def test_every_role_is_cited_and_every_permission_is_one_a_call_needs():
    asked = {p for row in TABLE for p in (row["permission"] if isinstance(row["permission"], list)
                                          else [row["permission"]])}
    for role, entry in ROLES.items():
        assert entry["source"].startswith("https://cloud.google.com/iam/docs/roles-permissions/"), role
        assert set(entry["permissions"]) <= asked, f"{role}: {set(entry['permissions']) - asked}"
