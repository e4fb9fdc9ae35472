"""Facts about the real Terraform module (terraform/) that no scanner checks.

* IAM: the grants are exactly the allow-list below, no more, no less;
* Pub/Sub limits: the defaults and the example's values are inside Pub/Sub's
  ranges, and the work subscription uses the variables (whose validations
  test_terraform_validations.py has Terraform evaluate);
* the schedule is valid unix-cron and the time zone a valid IANA name;
* every variable has a type and a description.
Read with python-hcl2; expressions evaluated by tests/tfconfig.py.
"""

from __future__ import annotations

import os
import re
import zoneinfo
from datetime import datetime, timezone
from pathlib import Path

import croniter
import pytest

from conftest import ROOT
from tfconfig import Config, Evaluator, Unsupported, load_tfvars

# CHECKS_TERRAFORM_DIR: run these tests on another copy of the module (e.g. a
# deliberately broken one, to see a test fail).
MODULE = Path(os.environ.get("CHECKS_TERRAFORM_DIR", ROOT / "terraform"))
EXAMPLE = MODULE / "examples" / "scheduled-export"
TFVARS_EXAMPLE = EXAMPLE / "terraform.tfvars.example"

# --- the IAM allow-list ------------------------------------------------------
# who: the member, by the google_service_account it references (or the
#      Pub/Sub service agent, service-<project number>@gcp-sa-pubsub...);
# on:  what the grant's target attribute references;
# only: None, or the var.worker_launch value under which the grant exists
#      (created with count), e.g. "producer" = if workers are launched by
#      the producer; "queries" = only if the producer runs BigQuery queries
#      (any of QUERY_FLAGS); "each" = one per var.extra_dataset_ids;
#      "restore" = one per var.restore_datasets; "kms" =
#      only if var.kms_key_name is set;
# condition: text the IAM condition's expression must contain (None: no
#      condition block allowed).
ALLOW_LIST = [
    # who            role                                   resource type                            on                                   only        condition
    ("producer",     "roles/bigquery.metadataViewer",       "google_bigquery_dataset_iam_member",    "var.dataset_id",                    None,       None),
    ("producer",     "roles/bigquery.metadataViewer",       "google_bigquery_dataset_iam_member",    "var.extra_dataset_ids",             "each",     None),
    ("producer",     "roles/bigquery.jobUser",              "google_project_iam_member",             "var.dataset_project_id",            None,       None),
    ("producer",     "roles/pubsub.publisher",              "google_pubsub_topic_iam_member",        "google_pubsub_topic.work",          None,       None),
    ("producer",     "roles/storage.objectUser",            "google_storage_bucket_iam_member",      "google_storage_bucket.exports",     None,       "/objects/${var.export_prefix}\")"),
    ("producer",     "roles/run.jobsExecutorWithOverrides", "google_cloud_run_v2_job_iam_member",    "google_cloud_run_v2_job.worker",    "producer", None),
    ("worker",       "roles/bigquery.dataViewer",           "google_bigquery_dataset_iam_member",    "var.dataset_id",                    None,       None),
    ("worker",       "roles/bigquery.dataViewer",           "google_bigquery_dataset_iam_member",    "var.extra_dataset_ids",             "each",     None),
    ("worker",       "roles/bigquery.dataEditor",           "google_bigquery_dataset_iam_member",    "var.restore_datasets",              "restore",  None),
    ("worker",       "roles/bigquery.jobUser",              "google_project_iam_member",             "var.dataset_project_id",            None,       None),
    ("worker",       "roles/storage.objectUser",            "google_storage_bucket_iam_member",      "google_storage_bucket.exports",     None,       None),
    ("worker",       "roles/pubsub.subscriber",             "google_pubsub_subscription_iam_member", "google_pubsub_subscription.work",   None,       None),
    ("worker",       "roles/pubsub.viewer",                 "google_pubsub_subscription_iam_member", "google_pubsub_subscription.work",   None,       None),
    ("worker",       "roles/pubsub.publisher",              "google_pubsub_topic_iam_member",        "google_pubsub_topic.dead_letter",   None,       None),
    ("scheduler",    "roles/run.invoker",                   "google_cloud_run_v2_job_iam_member",    "google_cloud_run_v2_job.producer",  None,       None),
    ("scheduler",    "roles/run.invoker",                   "google_cloud_run_v2_job_iam_member",    "google_cloud_run_v2_job.worker",    "schedule", None),
    ("pubsub-agent", "roles/pubsub.publisher",              "google_pubsub_topic_iam_member",        "google_pubsub_topic.dead_letter",   None,       None),
    ("pubsub-agent", "roles/pubsub.subscriber",             "google_pubsub_subscription_iam_member", "google_pubsub_subscription.work",   None,       None),
    ("gcs-agent",    "roles/cloudkms.cryptoKeyEncrypterDecrypter", "google_kms_crypto_key_iam_member",  "var.kms_key_name",                  "kms",      None),
]
WORKER_LAUNCH_VALUES = ("producer", "schedule")
# The producer runs BigQuery queries when any of these is on.
QUERY_FLAGS = ("export_partitions", "only_changed", "export_views")

# The attribute that names what a grant is on, per IAM resource type.
TARGET_ATTRIBUTE = {
    "google_bigquery_dataset_iam_member": "dataset_id",
    "google_pubsub_topic_iam_member": "topic",
    "google_pubsub_subscription_iam_member": "subscription",
    "google_storage_bucket_iam_member": "bucket",
    "google_cloud_run_v2_job_iam_member": "name",
    "google_project_iam_member": "project",
    "google_kms_crypto_key_iam_member": "crypto_key_id",
}
TARGETS = sorted({row[3] for row in ALLOW_LIST}, key=len, reverse=True)
SERVICE_ACCOUNTS = ("producer", "worker", "scheduler")
PUBSUB_AGENT = re.compile(
    r"serviceAccount:service-\$\{data\.google_project\.\w+\.number\}@gcp-sa-pubsub\.iam\.gserviceaccount\.com")

# --- Pub/Sub limits ------------------------------------------------------------
# variable: (lowest allowed, highest allowed)
PUBSUB_RANGES = {
    "ack_deadline_seconds": (10, 600),
    "max_delivery_attempts": (5, 100),
    "minimum_backoff_seconds": (0, 600),
    "maximum_backoff_seconds": (0, 600),
    "message_retention_seconds": (600, 31 * 24 * 3600),
}


@pytest.fixture(scope="module")
def module():
    assert MODULE.is_dir(), f"{MODULE} missing"
    return Config.load(MODULE)


@pytest.fixture(scope="module")
def example():
    assert EXAMPLE.is_dir(), f"{EXAMPLE} missing"
    return Config.load(EXAMPLE)


@pytest.fixture(scope="module")
def tfvars():
    assert TFVARS_EXAMPLE.is_file(), f"{TFVARS_EXAMPLE} missing"
    return load_tfvars(TFVARS_EXAMPLE)


# --- IAM -----------------------------------------------------------------------

def refers_to(text: str, address: str) -> bool:
    """text references address (google_x.name, not google_x.name_other)."""
    return re.search(re.escape(address) + r"(?![\w-])", text) is not None


def who(config: Config, member) -> str:
    text = config.expand(member)
    found = [sa for sa in SERVICE_ACCOUNTS if refers_to(text, f"google_service_account.{sa}")]
    if PUBSUB_AGENT.search(text):
        found.append("pubsub-agent")
    if refers_to(text, "data.google_storage_project_service_account.this"):
        found.append("gcs-agent")
    return found[0] if len(found) == 1 else f"? {member}"


def target(config: Config, rtype: str, body: dict) -> str:
    attribute = TARGET_ATTRIBUTE.get(rtype)
    if attribute is None:
        return f"? no known target attribute for {rtype}"
    text = config.expand(body.get(attribute, ""))
    if "for_each" in body and "each." in text:
        text = config.expand(body["for_each"])
    found = [t for t in TARGETS if refers_to(text, t)]
    return found[0] if found else f"? {attribute} = {body.get(attribute)}"


def only_when(config: Config, address: str, body: dict) -> str | None:
    """The worker_launch values for which the grant exists, as in ALLOW_LIST."""
    if "count" not in body and "for_each" not in body:
        return None
    if "for_each" in body:
        text = config.expand(body["for_each"])
        for each, variable in (("each", "var.extra_dataset_ids"), ("restore", "var.restore_datasets")):
            if refers_to(text, variable):
                return each
        return f"? for_each = {text}"
    if refers_to(config.expand(body["count"]), "var.kms_key_name"):
        counts = [Evaluator({"kms_key_name": key}, config).eval(body["count"]) for key in (None, "projects/p/k")]
        return "kms" if counts == [0, 1] else f"? count = {counts} without, then with var.kms_key_name"
    if any(refers_to(config.expand(body["count"]), f"var.{flag}") for flag in QUERY_FLAGS):
        off = {flag: False for flag in QUERY_FLAGS}
        counts = [Evaluator(dict(off, **({flag: True} if flag else {})), config).eval(body["count"])
                  for flag in (None, *QUERY_FLAGS)]
        return "queries" if counts == [0, 1, 1, 1] else f"? count = {counts} off, then each flag on"
    exists = []
    for launch in WORKER_LAUNCH_VALUES:
        try:
            count = Evaluator({"worker_launch": launch}, config).eval(body["count"])
        except Unsupported as exc:
            return f"? count not evaluable: {exc}"
        if count not in (0, 1):
            return f"? count = {count} with worker_launch = {launch}"
        if count:
            exists.append(launch)
    return exists[0] if len(exists) == 1 else f"? exists for worker_launch in {exists}"


def condition_of(config: Config, body: dict) -> str | None:
    blocks = body.get("condition")
    if not blocks:
        return None
    text = config.expand(blocks[0].get("expression", ""))
    for row in ALLOW_LIST:
        if row[5] and row[5] in text and "startsWith" in text:
            return row[5]
    return f"? {blocks[0].get('expression')}"


def grants(config: Config) -> list[tuple]:
    rows = []
    for address, body in config.resources.items():
        rtype = address.split(".")[0]
        if rtype.endswith("_iam_member"):
            rows.append((who(config, body.get("member")), body.get("role"), rtype,
                         target(config, rtype, body), only_when(config, address, body),
                         condition_of(config, body)))
    return rows


def test_iam_grants_are_exactly_the_allow_list(module):
    found = sorted(grants(module), key=str)
    want = sorted(ALLOW_LIST, key=str)
    extra = [row for row in found if row not in want]
    missing = [row for row in want if row not in found]
    assert not extra and not missing, (
        "IAM grants differ from ALLOW_LIST.\n  not in the allow-list:\n    "
        + "\n    ".join(map(str, extra)) + "\n  missing:\n    " + "\n    ".join(map(str, missing)))


@pytest.mark.parametrize("folder", [MODULE, EXAMPLE], ids=["module", "example"])
def test_iam_only_through_members(folder):
    """Bindings and policies are authoritative: they would remove grants made
    elsewhere, and escape the allow-list's one-member-per-row view."""
    config = Config.load(folder)
    others = [a for a in config.resources if re.search(r"_iam_(binding|policy)\.", a)]
    assert others == []
    if folder == EXAMPLE:
        assert [a for a in config.resources if "_iam_" in a] == [], "grants belong in the module"


def test_project_level_grants_are_only_the_right_to_run_jobs(module):
    project_level = sorted(a for a in module.resources if a.startswith("google_project_iam_"))
    assert project_level == [
        "google_project_iam_member.producer_runs_queries",
        "google_project_iam_member.worker_runs_jobs",
    ]


# --- Pub/Sub limits ------------------------------------------------------------

def validations(config: Config, name: str) -> list[str]:
    return [v["condition"] for v in config.variables[name].get("validation", [])]


def accepts(config: Config, name: str, value, others: dict) -> bool:
    """Whether every validation of variable `name` accepts value."""
    values = dict(others, **{name: value})
    return all(Evaluator(values, config).eval(cond) for cond in validations(config, name))


@pytest.mark.parametrize("name", sorted(PUBSUB_RANGES))
def test_pubsub_defaults_and_example_values_in_range(module, example, tfvars, name):
    low, high = PUBSUB_RANGES[name]
    candidates = {"module default": module.default(name)}
    if name in example.variables:
        candidates["example default"] = example.default(name)
    if name in tfvars:
        candidates["terraform.tfvars.example"] = tfvars[name]
    for where, value in candidates.items():
        assert value is not None and low <= value <= high, f"{name} ({where}) = {value}, want {low}-{high}"
    assert module.default("minimum_backoff_seconds") <= module.default("maximum_backoff_seconds")


def test_work_subscription_uses_the_validated_variables(module):
    sub = module.resources["google_pubsub_subscription.work"]
    uses = {
        "ack_deadline_seconds": sub.get("ack_deadline_seconds"),
        "max_delivery_attempts": sub["dead_letter_policy"][0].get("max_delivery_attempts"),
        "minimum_backoff_seconds": sub["retry_policy"][0].get("minimum_backoff"),
        "maximum_backoff_seconds": sub["retry_policy"][0].get("maximum_backoff"),
        "message_retention_seconds": sub.get("message_retention_duration"),
    }
    for name, value in uses.items():
        assert refers_to(module.expand(value), f"var.{name}"), f"work subscription: {value!r} is not var.{name}"


# --- schedule and time zone ------------------------------------------------------

CRON_FIELDS = [  # (name, low, high, names)
    ("minute", 0, 59, []),
    ("hour", 0, 23, []),
    ("day of month", 1, 31, []),
    ("month", 1, 12, "jan feb mar apr may jun jul aug sep oct nov dec".split()),
    ("day of week", 0, 7, "sun mon tue wed thu fri sat".split()),
]


def cron_problem(expression: str) -> str | None:
    """Why expression is not unix-cron as Cloud Scheduler reads it, or None.

    Five fields; each a comma list of `*`, N or N-M (numbers, or month/day
    names in their own fields), each optionally /STEP.
    """
    fields = expression.split()
    if len(fields) != 5:
        return f"{len(fields)} fields, want 5"
    for text, (name, low, high, names) in zip(fields, CRON_FIELDS):
        def number(token: str) -> int:
            if token.lower() in names:
                return names.index(token.lower()) + (1 if name == "month" else 0)
            if not token.isdigit() or not low <= int(token) <= high:
                raise ValueError(f"{name}: {token!r} not in {low}-{high}")
            return int(token)
        for item in text.split(","):
            base, _, step = item.partition("/")
            try:
                if step and (not step.isdigit() or int(step) < 1):
                    raise ValueError(f"{name}: step {step!r}")
                if base != "*":
                    first, _, last = base.partition("-")
                    if last and number(first) > number(last):
                        raise ValueError(f"{name}: range {base} runs backwards")
                    number(first)
            except ValueError as exc:
                return str(exc)
    return None


@pytest.mark.parametrize("expression, valid", [
    ("0 3 * * *", True), ("*/15 * * * *", True), ("0 9-17/2 * * MON-FRI", True),
    ("30 2 1,15 JAN,jul *", True), ("0 0 * * 7", True),
    ("60 * * * *", False), ("* * * *", False), ("0 3 * * * *", False), ("*/0 * * * *", False),
    ("0 3 32 * *", False), ("0 17-9 * * *", False), ("0 3 * * FUNDAY", False), ("@daily", False),
])
def test_cron_validator_itself(expression, valid):
    assert (cron_problem(expression) is None) == valid
    if valid:
        assert croniter.croniter.is_valid(expression)


def schedule_values(module, example, tfvars) -> dict:
    values = {"module schedule default": module.default("schedule"),
              "module worker_schedule default": module.default("worker_schedule")}
    if "schedule" in example.variables:
        values["example schedule default"] = example.default("schedule")
    values["terraform.tfvars.example schedule"] = tfvars.get("schedule")
    if "worker_schedule" in tfvars:
        values["terraform.tfvars.example worker_schedule"] = tfvars["worker_schedule"]
    return values


def test_schedules_are_unix_cron(module, example, tfvars):
    for where, expression in schedule_values(module, example, tfvars).items():
        assert isinstance(expression, str), f"{where} is not set"
        assert cron_problem(expression) is None, f"{where} = {expression!r}: {cron_problem(expression)}"
        assert croniter.croniter.is_valid(expression), f"{where} = {expression!r} (croniter)"


def longest_gap_seconds(expression: str) -> float:
    """The longest time between two runs of a schedule, over a year of runs."""
    runs = croniter.croniter(expression, datetime(2027, 1, 1))
    times = [runs.get_next(datetime) for _ in range(2)]
    while times[-1] < datetime(2028, 1, 1) and len(times) < 20000:
        times.append(runs.get_next(datetime))
    return max((b - a).total_seconds() for a, b in zip(times, times[1:]))


def test_longest_gap_of_a_schedule():
    assert longest_gap_seconds("0 3 * * *") == 86400
    assert longest_gap_seconds("0 3 * * MON,THU") == 4 * 86400


def test_work_messages_outlive_one_schedule_period(module, tfvars):
    """A run no worker could drain must still be queued when the next one starts."""
    retention = tfvars.get("message_retention_seconds", module.default("message_retention_seconds"))
    for where, expression in {"module default": module.default("schedule"),
                              "terraform.tfvars.example": tfvars.get("schedule")}.items():
        gap = longest_gap_seconds(expression)
        assert retention >= gap, f"schedule ({where}) {expression!r} runs {gap:.0f} s apart, retention is {retention} s"


def test_time_zones_are_iana(module, example, tfvars):
    zones = zoneinfo.available_timezones()
    assert "Europe/Paris" in zones  # tzdata is installed
    values = {"module default": module.default("time_zone"),
              "terraform.tfvars.example": tfvars.get("time_zone")}
    if "time_zone" in example.variables:
        values["example default"] = example.default("time_zone")
    for where, zone in values.items():
        assert zone in zones, f"time_zone ({where}) = {zone!r} is not an IANA time zone"


def daylight_saving_problems(expression: str, zone: str) -> list[str]:
    """Local run times of a year that a daylight-saving change skips (they do
    not exist) or repeats (they exist twice): Cloud Scheduler reads the
    schedule in the job's time zone, daylight saving included (REST reference,
    Job.timeZone: "some time zones include a provision for daylight savings
    time"), so such a run is lost or doubled on change days."""
    tz = zoneinfo.ZoneInfo(zone)
    runs = croniter.croniter(expression, datetime(2027, 1, 1))
    problems = []
    for _ in range(20000):
        local = runs.get_next(datetime)
        if local >= datetime(2028, 1, 1):
            break
        first, second = local.replace(tzinfo=tz, fold=0), local.replace(tzinfo=tz, fold=1)
        if first.utcoffset() != second.utcoffset():
            exists = first.astimezone(timezone.utc).astimezone(tz).replace(tzinfo=None) == local
            problems.append(f"{local:%Y-%m-%d %H:%M} {'happens twice' if exists else 'does not exist'}")
    return problems


def test_daylight_saving_checker_itself():
    assert daylight_saving_problems("30 2 * * *", "Europe/Paris") == [
        "2027-03-28 02:30 does not exist", "2027-10-31 02:30 happens twice"]
    assert daylight_saving_problems("30 2 * * *", "Etc/UTC") == []
    assert daylight_saving_problems("30 4 * * *", "Europe/Paris") == []


def test_schedules_avoid_daylight_saving_changes(module, example, tfvars):
    """The module's and the example's schedules run every day of the year,
    once: none falls in a local hour a daylight-saving change skips or repeats."""
    module_zone = module.default("time_zone")
    example_zone = tfvars.get("time_zone", example.default("time_zone") if "time_zone" in example.variables else module_zone)
    cases = {
        "module schedule": (module.default("schedule"), module_zone),
        "module worker_schedule": (module.default("worker_schedule"), module_zone),
        "terraform.tfvars.example schedule": (tfvars.get("schedule"), example_zone),
        "module worker_schedule in the example's time zone": (tfvars.get("worker_schedule", module.default("worker_schedule")), example_zone),
    }
    for where, (expression, zone) in cases.items():
        problems = daylight_saving_problems(expression, zone)
        assert problems == [], f"{where} {expression!r} in {zone}: {problems}"


@pytest.mark.parametrize("name", ["schedule", "worker_schedule", "time_zone"])
def test_schedule_variables_are_validated(module, name):
    conditions = validations(module, name)
    assert conditions, f"variable {name} has no validation block"
    assert all(refers_to(c, f"var.{name}") for c in conditions)


def test_time_zone_validation_accepts_every_area_zone(module):
    """The validation's regex (RE2 there, Python here: the same syntax for
    this) must not reject a real zone such as America/Argentina/Buenos_Aires."""
    patterns = [p for c in validations(module, "time_zone") for p in re.findall(r'regex\("((?:[^"\\]|\\.)*)"', c)]
    if not patterns:
        pytest.skip("time_zone validation uses no regex(): nothing to compare")
    pattern = patterns[0].encode().decode("unicode_escape")
    rejected = sorted(z for z in zoneinfo.available_timezones() if "/" in z and not re.search(pattern, z))
    assert rejected == [], f"time_zone validation rejects IANA zones: {rejected[:10]}"


# --- variables -------------------------------------------------------------------

@pytest.mark.parametrize("folder", [MODULE, EXAMPLE], ids=["module", "example"])
def test_every_variable_has_type_and_description(folder):
    config = Config.load(folder)
    assert config.variables, f"no variables in {folder}"
    bad = [f"{config.files['var.' + n]}: {n}" for n, b in config.variables.items()
           if not b.get("type") or not str(b.get("description", "")).strip()]
    assert bad == [], "variables without type or description"


def test_example_tfvars_sets_only_declared_variables(example, tfvars):
    assert set(tfvars) <= set(example.variables), set(tfvars) - set(example.variables)


def test_spec_variables_exist(module):
    """The variables the deployment is documented with."""
    wanted = {"project_id", "region", "dataset_id", "dataset_project_id", "bucket_name", "export_prefix",
              "schedule", "time_zone", "ack_deadline_seconds", "max_delivery_attempts",
              "minimum_backoff_seconds", "maximum_backoff_seconds", "message_retention_seconds",
              "worker_launch", "worker_schedule", "max_tasks", "units_per_task", "image"}
    assert wanted <= set(module.variables), sorted(wanted - set(module.variables))
    assert accepts(module, "worker_launch", "producer", {}) and accepts(module, "worker_launch", "schedule", {})
    assert not accepts(module, "worker_launch", "cron", {})


def test_readme_documents_every_input_and_output(module):
    """terraform/README.md's tables are written by hand: none may go missing."""
    readme = (MODULE / "README.md").read_text(encoding="utf-8")
    outputs = re.findall(r'^output "(\w+)"', (MODULE / "outputs.tf").read_text(encoding="utf-8"), re.M)
    assert outputs, "no outputs found"
    missing = [n for n in [*module.variables, *outputs] if f"| `{n}` |" not in readme]
    assert missing == [], f"not in terraform/README.md's tables: {missing}"


# --- the bucket ------------------------------------------------------------------

def test_soft_delete_is_set_deliberately(module):
    """Cloud Storage soft-deletes every deleted object for 7 days unless the
    bucket says otherwise, and that comes on top of versioning: a superseded
    export would be kept noncurrent_retention_days, then 7 days more. BigQuery
    advises turning soft delete off on export buckets
    (https://docs.cloud.google.com/bigquery/docs/exporting-data, "Export
    limitations"); the module sets it from soft_delete_retention_days, off by
    default."""
    bucket = module.resources["google_storage_bucket.exports"]
    policy = bucket.get("soft_delete_policy")
    assert policy, "google_storage_bucket.exports has no soft_delete_policy: Cloud Storage's 7-day default applies"
    seconds = policy[0].get("retention_duration_seconds")
    assert refers_to(module.expand(seconds), "var.soft_delete_retention_days"), seconds
    assert module.default("soft_delete_retention_days") == 0
    for days in (0, 7, 90):
        assert Evaluator({"soft_delete_retention_days": days}, module).eval(seconds) == days * 86400


# --- descriptions that must not mislead ------------------------------------------------

def test_producer_retry_is_described_as_resuming_its_run(module):
    """The producer's run id defaults to the Cloud Run execution's name
    (producer/src/main.rs, --run-id), and a retried task runs in the same
    execution: it resumes the run, it does not start a new one."""
    description = module.variables["producer_max_retries"]["description"].lower()
    assert "new run id" not in description, description
    assert "same run" in description and "execution" in description, description
    readme = (MODULE / "README.md").read_text(encoding="utf-8")
    row = next(line for line in readme.splitlines() if line.startswith("| `producer_max_retries` |"))
    assert "new run id" not in row.lower() and "same run" in row.lower(), row


def test_preflight_after_apply_executes_the_producer_job_with_check(module):
    """Off by default; when on, apply runs `--check` as the producer's own
    identity (its job, not the operator's credentials), waits for it, and
    runs it again when what the producer runs changes."""
    assert module.default("preflight_after_apply") is False
    preflight = module.resources["terraform_data.preflight"]
    assert preflight["count"] == "${var.preflight_after_apply ? 1 : 0}"
    command = module.expand(preflight["provisioner"][0]["local-exec"]["command"])
    assert "gcloud run jobs execute ${google_cloud_run_v2_job.producer.name}" in command, command
    assert "--args=--check" in command and "--wait" in command, command
    triggers = module.expand(preflight["triggers_replace"])
    for changed in ("var.image", "BQDRAIN_SOURCE", "google_cloud_run_v2_job.producer.id"):
        assert changed in triggers, (changed, triggers)
    outputs = (MODULE / "outputs.tf").read_text(encoding="utf-8")
    assert 'output "preflight_command"' in outputs and "local.preflight_command" in outputs


# --- the image repository -----------------------------------------------------------

def cleanup_policies(module) -> list[dict]:
    repo = module.resources["google_artifact_registry_repository.images"]
    found = [dict(p, dynamic=None) for p in repo.get("cleanup_policies", [])]
    for dynamic in repo.get("dynamic", []):
        if "cleanup_policies" in dynamic:
            for content in dynamic["cleanup_policies"].get("content", []):
                found.append(dict(content, dynamic=dynamic["cleanup_policies"].get("for_each")))
    return found


def test_image_cleanup_never_deletes_a_tagged_version(module):
    """A delete policy that matches tag_state ANY deletes tagged releases a job
    may run; only untagged versions may go. (If a version matches a delete and
    a keep policy, it is kept:
    https://docs.cloud.google.com/artifact-registry/docs/repositories/cleanup-policy-overview.)"""
    deletes = [p for p in cleanup_policies(module) if p.get("action") == "DELETE"]
    assert deletes, "no delete policy: the repository grows forever"
    for policy in deletes:
        condition = (policy.get("condition") or [{}])[0]
        assert condition.get("tag_state") == "UNTAGGED", f"delete policy {policy.get('id')} may delete tagged versions"


def test_image_cleanup_keeps_recent_versions_and_the_pinned_digest(module):
    policies = cleanup_policies(module)
    recent = [p for p in policies if p.get("action") == "KEEP" and p.get("most_recent_versions")]
    assert recent and refers_to(module.expand(recent[0]["most_recent_versions"][0].get("keep_count")),
                                "var.image_keep_count"), "no keep policy for the most recent image_keep_count versions"
    pinned = [p for p in policies if p.get("action") == "KEEP" and p.get("dynamic")
              and refers_to(module.expand(p["dynamic"]), "var.image")]
    assert pinned, "no keep policy for the digest var.image pins"
    prefixes = module.expand(pinned[0]["condition"][0].get("version_name_prefixes"))
    assert "cleanup_policies.value" in prefixes, prefixes
    assert "sha256" in module.expand(pinned[0]["dynamic"])


def test_bucket_is_encrypted_with_the_key_when_one_is_given(module):
    """kms_key_name sets the bucket's default key, once the Cloud Storage
    service agent may use it (the grant above, on that key only)."""
    bucket = module.resources["google_storage_bucket.exports"]
    encryption = [d["encryption"] for d in bucket.get("dynamic", []) if "encryption" in d]
    assert encryption, "the bucket has no encryption block for kms_key_name"
    assert refers_to(module.expand(encryption[0]["for_each"]), "var.kms_key_name")
    assert "default_kms_key_name" in encryption[0]["content"][0]
    assert any("google_kms_crypto_key_iam_member.storage_agent_uses_key" in d for d in bucket.get("depends_on", [])), \
        "the bucket must wait for the service agent's grant on the key"
    agent = module.data.get("google_storage_project_service_account.this")
    assert agent is not None and refers_to(module.expand(agent.get("count", "")), "var.kms_key_name")
