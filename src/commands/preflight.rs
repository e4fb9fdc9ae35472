//! `bqdrain-producer --check`: before the first scheduled run, check that
//! the run can work and say what it would do, publishing and writing
//! nothing.
//!
//! The permissions checked are the permission table's (`permissions.json`)
//! for `who: producer` under the run's settings, asked of each service:
//! `testIamPermissions` where the service has it (Cloud Storage, Pub/Sub,
//! Cloud Run), the cheapest read that proves access elsewhere (BigQuery:
//! `datasets.get`, a one-row `tables.list`, a `tables.get`, a dry run).
//! A check the caller cannot make (no `testIamPermissions` on an emulator,
//! no right to read a setting) is `unknown`: printed, not failed.

use std::path::Path;

use reqwest::Method;
use serde::Serialize;
use serde_json::{json, Value};

use crate::adapters::backends;
use crate::adapters::gcp::permissions::{needed_by, CallPermission, Settings};
use crate::adapters::gcp::preflight::{self, Refused};
use crate::adapters::gcp::{bigquery, pubsub, storage};
use crate::adapters::local::{queue::QueueUri, store::FsStore};
use crate::commands::launch::{task_count, LaunchPlan};
use crate::engine::producer::{preview, RunPlan, RunPreview};

/// The roles the module grants, for the fix of a missing permission.
const ROLES: &str = include_str!("../adapters/gcp/predefined_roles.json");
/// Messages per publish request (the client batches up to this many).
const MESSAGES_PER_PUBLISH: usize = 1000;
/// Tables per `tables.list` page and per `INFORMATION_SCHEMA.PARTITIONS` query.
const TABLES_PER_CALL: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// Fails the check: the run would fail or lose work.
    Missing,
    /// Could not be checked; says why.
    Unknown,
    /// Works, at a cost worth knowing.
    Warn,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub status: Status,
    pub check: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The command that fixes a missing check.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// Google API calls the run would make, by kind.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Calls {
    pub planning: usize,
    pub publish: usize,
    pub launch: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct PreflightReport {
    pub ok: bool,
    pub checks: Vec<Check>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<RunPreview>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tasks: Option<u32>,
    pub calls: Calls,
}

/// Where the run would read, publish and write.
pub struct Deployment<'a> {
    pub sources: &'a [String],
    pub topic: &'a str,
    pub destination: &'a str,
    /// The workers' subscription, for its dead-letter policy (local queues:
    /// a topic does not know its subscriptions).
    pub subscription: Option<&'a str>,
    pub launch: Option<&'a LaunchPlan>,
}

impl Check {
    fn new(status: Status, check: impl Into<String>) -> Check {
        Check {
            status,
            check: check.into(),
            detail: None,
            fix: None,
        }
    }

    fn detail(mut self, detail: impl Into<String>) -> Check {
        self.detail = Some(detail.into());
        self
    }

    fn fix(mut self, fix: impl Into<String>) -> Check {
        self.fix = Some(fix.into());
        self
    }

    /// One line: status, what, and the detail or the fix.
    pub fn line(&self) -> String {
        let status = match self.status {
            Status::Ok => "ok",
            Status::Missing => "missing",
            Status::Unknown => "unknown",
            Status::Warn => "warn",
        };
        let mut line = format!("{status:<8} {}", self.check);
        if let Some(detail) = &self.detail {
            line.push_str(&format!(": {detail}"));
        }
        if let Some(fix) = &self.fix {
            line.push_str(&format!("; fix: {fix}"));
        }
        line
    }
}

/// Runs every check that applies to `deployment`, and plans the run.
pub async fn preflight(plan: &RunPlan, deployment: &Deployment<'_>) -> PreflightReport {
    let settings = Settings {
        views: plan.views,
        launch_workers: deployment.launch.is_some(),
        project_source: deployment.sources.iter().any(|s| bigquery::is_project(s)),
    };
    let needed = needed_by("producer", settings);
    let mut checks = Vec::new();
    let previewed = plan_run(plan, deployment).await;
    let plan_check = match &previewed {
        Ok(p) => Check::new(Status::Ok, "plan").detail(format!(
            "the sources are readable: {} table(s) listed in {:.1}s",
            p.tables, p.seconds
        )),
        Err(e) => Check::new(Status::Missing, "plan").detail(format!("{e:#}")),
    };
    checks.push(plan_check);
    let mut dataset_location = None;
    for source in deployment.sources {
        if bigquery::is_bigquery(source) && !bigquery::is_project(source) {
            dataset_location = check_dataset(source, &needed, &mut checks).await;
        }
    }
    if storage::is_gcs(deployment.destination) {
        check_bucket(
            deployment.destination,
            &needed,
            dataset_location,
            &mut checks,
        )
        .await;
    } else if FsStore::is_local(deployment.destination) {
        checks.push(local_folder("destination", deployment.destination));
    }
    if pubsub::is_pubsub(deployment.topic) {
        check_topic(deployment.topic, &needed, &mut checks).await;
    } else if QueueUri::is_local(deployment.topic) {
        checks.push(local_queue(deployment.topic));
        checks.push(local_dead_letter(deployment.subscription));
    }
    if let Some(launch) = deployment.launch {
        check_job(launch, &needed, &mut checks).await;
    }
    let reads_partitions = plan.partitions.split || plan.only_changed;
    let preview = previewed.ok();
    let tasks = preview.as_ref().and_then(|p| {
        deployment
            .launch
            .map(|l| task_count(p.units, l.units_per_task, l.max_tasks))
    });
    let calls = preview
        .as_ref()
        .map(|p| calls(p, reads_partitions, deployment))
        .unwrap_or_default();
    PreflightReport {
        ok: checks.iter().all(|c| c.status != Status::Missing),
        checks,
        plan: preview,
        tasks,
        calls,
    }
}

async fn plan_run(plan: &RunPlan, deployment: &Deployment<'_>) -> anyhow::Result<RunPreview> {
    let warehouses = backends::open_sources(deployment.sources, "--source").await?;
    let store = backends::open_store(deployment.destination, "--destination").await?;
    preview(plan, &warehouses, store.as_ref()).await
}

/// Calls to Google's APIs the run would make: planning (by the path each
/// source took; `reads_partitions`: `--partitions` or `--only-changed` add
/// an `INFORMATION_SCHEMA.PARTITIONS` query per 1,000 tables), publish
/// requests, the launch.
fn calls(plan: &RunPreview, reads_partitions: bool, deployment: &Deployment<'_>) -> Calls {
    let per_thousand = plan.tables.div_ceil(TABLES_PER_CALL).max(1);
    let partitions = if reads_partitions { per_thousand } else { 0 };
    let planning = plan
        .planning
        .iter()
        .map(|(_, path)| match path.starts_with("fast") {
            true => 2 + partitions,
            false => 1 + per_thousand + plan.tables + partitions,
        })
        .sum();
    Calls {
        planning,
        publish: match pubsub::is_pubsub(deployment.topic) {
            true => plan.units.div_ceil(MESSAGES_PER_PUBLISH),
            false => 0,
        },
        launch: usize::from(deployment.launch.is_some() && plan.units > 0),
    }
}

/// The permissions of `needed` granted on this kind of resource.
fn permissions_on(needed: &[CallPermission], resource: &str) -> Vec<String> {
    let mut found: Vec<String> = needed
        .iter()
        .filter(|row| row.resource == resource && !row.optional)
        .flat_map(|row| row.permission.iter().cloned())
        .collect();
    found.sort();
    found.dedup();
    found
}

/// The narrowest role of the module's that holds `permission`.
fn role_for(permission: &str) -> String {
    let roles: Value = serde_json::from_str(ROLES).unwrap_or(Value::Null);
    roles["roles"]
        .as_object()
        .and_then(|roles| {
            roles
                .iter()
                .filter_map(|(name, role)| {
                    let held = role["permissions"].as_array()?;
                    held.iter()
                        .any(|p| p == permission)
                        .then_some((held.len(), name.clone()))
                })
                .min()
        })
        .map_or_else(|| "a role holding it".to_string(), |(_, name)| name)
}

/// `ok` or `missing` for each permission, from what a service said is held.
fn held_checks(
    permissions: &[String],
    held: &[String],
    on: &str,
    fix: impl Fn(&str) -> String,
) -> Vec<Check> {
    permissions
        .iter()
        .map(|p| {
            let check = format!("permission {p} on {on}");
            if held.contains(p) {
                Check::new(Status::Ok, check)
            } else {
                Check::new(Status::Missing, check).fix(fix(&role_for(p)))
            }
        })
        .collect()
}

fn unknown_permissions(permissions: &[String], on: &str, why: &str) -> Vec<Check> {
    permissions
        .iter()
        .map(|p| Check::new(Status::Unknown, format!("permission {p} on {on}")).detail(why))
        .collect()
}

fn refused(what: &str, refused: &Refused) -> String {
    format!(
        "{what} answered HTTP {}: {}",
        refused.status, refused.message
    )
}

/// BigQuery has no `testIamPermissions` for datasets or projects: each
/// permission is proved by the cheapest call that needs it. Returns the
/// dataset's location.
async fn check_dataset(
    source: &str,
    needed: &[CallPermission],
    checks: &mut Vec<Check>,
) -> Option<String> {
    let rest = source.strip_prefix(bigquery::SCHEME).unwrap_or(source);
    let (project, dataset) = rest.split_once('/')?;
    let api = match preflight::bigquery() {
        Ok(api) => api,
        Err(e) => {
            checks.push(
                Check::new(Status::Unknown, format!("BigQuery {source}")).detail(format!("{e:#}")),
            );
            return None;
        }
    };
    let base = format!("/bigquery/v2/projects/{project}/datasets/{dataset}");
    let got = api.call(Method::GET, &base, None).await;
    let location = match &got {
        Ok(Ok(value)) => value["location"].as_str().map(str::to_string),
        _ => None,
    };
    let first_table = match api
        .call(Method::GET, &format!("{base}/tables?maxResults=1"), None)
        .await
    {
        Ok(Ok(value)) => Ok(value["tables"][0]["tableReference"]["tableId"]
            .as_str()
            .map(str::to_string)),
        Ok(Err(r)) => Err(refused("tables.list", &r)),
        Err(e) => Err(format!("{e:#}")),
    };
    let dry_run = json!({
        "query": "SELECT 1",
        "dryRun": true,
        "useLegacySql": false,
        "location": location.clone().unwrap_or_default(),
    });
    let query = api
        .call(
            Method::POST,
            &format!("/bigquery/v2/projects/{project}/queries"),
            Some(dry_run),
        )
        .await;
    let outcome = |answer: &anyhow::Result<Result<Value, Refused>>, call: &str| match answer {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(r)) => Err(refused(call, r)),
        Err(e) => Err(format!("{e:#}")),
    };
    let mut dataset_permissions = permissions_on(needed, "dataset");
    dataset_permissions.extend(permissions_on(needed, "project"));
    for permission in dataset_permissions {
        let proof = match permission.as_str() {
            "bigquery.datasets.get" => outcome(&got, "datasets.get"),
            "bigquery.tables.list" => first_table.clone().map(|_| ()),
            "bigquery.jobs.create" => outcome(&query, "a dry-run query"),
            "bigquery.tables.get" => match &first_table {
                Ok(Some(table)) => {
                    let answer = api
                        .call(Method::GET, &format!("{base}/tables/{table}"), None)
                        .await;
                    outcome(&answer, "tables.get")
                }
                Ok(None) => Ok(()),
                Err(e) => Err(e.clone()),
            },
            _ => continue,
        };
        let (on, fix) = if permission == "bigquery.jobs.create" {
            (
                format!("project {project}"),
                format!(
                    "gcloud projects add-iam-policy-binding {project} --member=MEMBER --role={}",
                    role_for(&permission)
                ),
            )
        } else {
            (
                source.to_string(),
                format!(
                    "bq add-iam-policy-binding --member=MEMBER --role={} {project}:{dataset}",
                    role_for(&permission)
                ),
            )
        };
        let check = format!("permission {permission} on {on}");
        checks.push(match proof {
            Ok(()) => Check::new(Status::Ok, check),
            Err(why) if why.contains("HTTP 403") || why.contains("HTTP 401") => {
                Check::new(Status::Missing, check).detail(why).fix(fix)
            }
            Err(why) => Check::new(Status::Unknown, check).detail(why),
        });
    }
    location
}

async fn check_bucket(
    destination: &str,
    needed: &[CallPermission],
    dataset_location: Option<String>,
    checks: &mut Vec<Check>,
) {
    let Ok((bucket, _)) = storage::parse(destination, "--destination") else {
        return;
    };
    let api = match preflight::storage() {
        Ok(api) => api,
        Err(e) => {
            checks.push(
                Check::new(Status::Unknown, format!("Cloud Storage {destination}"))
                    .detail(format!("{e:#}")),
            );
            return;
        }
    };
    let on = format!("gs://{bucket}");
    let permissions = permissions_on(needed, "bucket");
    let path = format!("/storage/v1/b/{bucket}/iam/testPermissions");
    let fix = |role: &str| {
        format!("gcloud storage buckets add-iam-policy-binding {on} --member=MEMBER --role={role}")
    };
    match api.held(&path, &permissions, true).await {
        Ok(Ok(held)) => checks.extend(held_checks(&permissions, &held, &on, fix)),
        Ok(Err(r)) => checks.extend(unknown_permissions(
            &permissions,
            &on,
            &refused("testPermissions", &r),
        )),
        Err(e) => checks.extend(unknown_permissions(&permissions, &on, &format!("{e:#}"))),
    }
    let settings = match api
        .call(Method::GET, &format!("/storage/v1/b/{bucket}"), None)
        .await
    {
        Ok(Ok(value)) => value,
        Ok(Err(r)) => {
            let why = refused("buckets.get (storage.buckets.get)", &r);
            checks
                .push(Check::new(Status::Unknown, format!("location of {on}")).detail(why.clone()));
            checks.push(Check::new(Status::Unknown, format!("soft delete of {on}")).detail(why));
            return;
        }
        Err(e) => {
            checks.push(
                Check::new(Status::Unknown, format!("settings of {on}")).detail(format!("{e:#}")),
            );
            return;
        }
    };
    let bucket_location = settings["location"]
        .as_str()
        .unwrap_or_default()
        .to_lowercase();
    checks.push(match dataset_location.map(|l| l.to_lowercase()) {
        None => Check::new(Status::Unknown, format!("location of {on}"))
            .detail(format!("{bucket_location}; the dataset's location is unknown")),
        Some(dataset) if exportable_to(&dataset, &bucket_location) => {
            Check::new(Status::Ok, format!("location of {on}")).detail(format!("{bucket_location}, where BigQuery exports {dataset} data"))
        }
        Some(dataset) => Check::new(Status::Missing, format!("location of {on}"))
            .detail(format!("{bucket_location}: BigQuery exports a dataset in {dataset} only to a bucket in {dataset} (or, for a multi-region, one of its regions)"))
            .fix(format!("export to a bucket in {dataset} (terraform/: bucket_location)")),
    });
    let soft_delete = settings["softDeletePolicy"]["retentionDurationSeconds"]
        .as_str()
        .and_then(|s| s.parse::<u64>().ok());
    checks.push(match soft_delete {
        None => Check::new(Status::Unknown, format!("soft delete of {on}")).detail("the bucket does not say"),
        Some(0) => Check::new(Status::Ok, format!("soft delete of {on}")).detail("off"),
        Some(seconds) => Check::new(Status::Warn, format!("soft delete of {on}"))
            .detail(format!(
                "{} day(s): every superseded export is billed that much longer (BigQuery advises it off for export buckets)",
                seconds / 86_400
            ))
            .fix(format!("gcloud storage buckets update {on} --clear-soft-delete (terraform/: soft_delete_retention_days = 0)")),
    });
}

/// Whether BigQuery exports a dataset at `dataset` (a location, lowercase)
/// to a bucket at `bucket`: the same location, or a region of the
/// dataset's multi-region.
fn exportable_to(dataset: &str, bucket: &str) -> bool {
    const OUTSIDE_EU: [&str; 3] = ["europe-west2", "europe-west6", "europe-north2"];
    dataset == bucket
        || (dataset == "us" && bucket.starts_with("us-"))
        || (dataset == "eu" && bucket.starts_with("europe-") && !OUTSIDE_EU.contains(&bucket))
}

async fn check_topic(topic: &str, needed: &[CallPermission], checks: &mut Vec<Check>) {
    let name = topic.strip_prefix(pubsub::SCHEME).unwrap_or(topic);
    let api = match preflight::pubsub() {
        Ok(api) => api,
        Err(e) => {
            checks.push(
                Check::new(Status::Unknown, format!("Pub/Sub {topic}")).detail(format!("{e:#}")),
            );
            return;
        }
    };
    let permissions = permissions_on(needed, "topic");
    let fix = |role: &str| {
        format!("gcloud pubsub topics add-iam-policy-binding {name} --member=MEMBER --role={role}")
    };
    match api
        .held(
            &format!("/v1/{name}:testIamPermissions"),
            &permissions,
            false,
        )
        .await
    {
        Ok(Ok(held)) => checks.extend(held_checks(&permissions, &held, topic, fix)),
        Ok(Err(r)) => checks.extend(unknown_permissions(
            &permissions,
            topic,
            &refused("testIamPermissions", &r),
        )),
        Err(e) => checks.extend(unknown_permissions(&permissions, topic, &format!("{e:#}"))),
    }
    let listed = match api
        .call(Method::GET, &format!("/v1/{name}/subscriptions"), None)
        .await
    {
        Ok(Ok(value)) => value["subscriptions"]
            .as_array()
            .cloned()
            .unwrap_or_default(),
        Ok(Err(r)) => {
            let why = refused("topics.subscriptions.list (pubsub.topics.get)", &r);
            checks.push(
                Check::new(Status::Unknown, format!("dead-letter policies on {topic}")).detail(why),
            );
            return;
        }
        Err(e) => {
            checks.push(
                Check::new(Status::Unknown, format!("dead-letter policies on {topic}"))
                    .detail(format!("{e:#}")),
            );
            return;
        }
    };
    if listed.is_empty() {
        checks.push(
            Check::new(Status::Missing, format!("subscription on {topic}"))
                .detail("none: Pub/Sub drops what is published to a topic without subscriptions")
                .fix(format!("gcloud pubsub subscriptions create SUBSCRIPTION --topic={name} --dead-letter-topic=DEAD_LETTER_TOPIC (terraform/ creates it)")),
        );
    }
    for subscription in listed.iter().filter_map(Value::as_str) {
        let check = format!("dead-letter policy of pubsub://{subscription}");
        checks.push(match api.call(Method::GET, &format!("/v1/{subscription}"), None).await {
            Ok(Ok(value)) => match value["deadLetterPolicy"]["deadLetterTopic"].as_str() {
                Some(dead) if !dead.is_empty() => Check::new(Status::Ok, check).detail(format!("to pubsub://{dead}")),
                _ => Check::new(Status::Missing, check)
                    .detail("none: a table that always fails is redelivered until the message expires")
                    .fix(format!("gcloud pubsub subscriptions update {subscription} --dead-letter-topic=DEAD_LETTER_TOPIC --max-delivery-attempts=5")),
            },
            Ok(Err(r)) => Check::new(Status::Unknown, check).detail(refused("subscriptions.get", &r)),
            Err(e) => Check::new(Status::Unknown, check).detail(format!("{e:#}")),
        });
    }
}

async fn check_job(launch: &LaunchPlan, needed: &[CallPermission], checks: &mut Vec<Check>) {
    let job = launch.job.to_string();
    let permissions = permissions_on(needed, "job");
    let api = match preflight::run(&launch.endpoint) {
        Ok(api) => api,
        Err(e) => {
            checks.extend(unknown_permissions(&permissions, &job, &format!("{e:#}")));
            return;
        }
    };
    let fix = |role: &str| {
        format!("gcloud run jobs add-iam-policy-binding {job} --member=MEMBER --role={role}")
    };
    match api
        .held(
            &format!("/v2/{job}:testIamPermissions"),
            &permissions,
            false,
        )
        .await
    {
        Ok(Ok(held)) => checks.extend(held_checks(&permissions, &held, &job, fix)),
        Ok(Err(r)) => checks.extend(unknown_permissions(
            &permissions,
            &job,
            &refused("testIamPermissions", &r),
        )),
        Err(e) => checks.extend(unknown_permissions(&permissions, &job, &format!("{e:#}"))),
    }
}

/// A `file://` destination: its folder, or the nearest existing folder
/// above it, can be written.
fn local_folder(what: &str, uri: &str) -> Check {
    let Ok(root) = FsStore::root_of(uri, "--destination") else {
        return Check::new(Status::Missing, format!("{what} {uri}")).detail("not a file:// URI");
    };
    writable(&root, &format!("{what} {uri}"))
}

fn writable(path: &Path, check: &str) -> Check {
    let existing = path
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("."));
    let readonly = existing
        .metadata()
        .map(|m| m.permissions().readonly())
        .unwrap_or(true);
    if readonly {
        Check::new(Status::Missing, check)
            .detail(format!("{} cannot be written", existing.display()))
            .fix(format!("chmod u+w {}", existing.display()))
    } else if existing == path {
        Check::new(Status::Ok, check).detail("writable")
    } else {
        Check::new(Status::Ok, check).detail(format!(
            "created under {} on the first write",
            existing.display()
        ))
    }
}

fn local_queue(topic: &str) -> Check {
    match QueueUri::parse(topic, "--topic") {
        Ok(queue) => writable(&queue.path, &format!("queue {topic}")),
        Err(e) => Check::new(Status::Missing, format!("queue {topic}")).detail(e.to_string()),
    }
}

/// A local queue's dead-letter policy is on the workers' subscription URI.
fn local_dead_letter(subscription: Option<&str>) -> Check {
    let Some(subscription) = subscription else {
        return Check::new(Status::Unknown, "dead-letter policy")
            .detail("pass --subscription (the workers' queue URI) to check it");
    };
    let check = format!("dead-letter policy of {subscription}");
    match QueueUri::parse(subscription, "--subscription") {
        Ok(queue) => match queue.dead_letter {
            Some(dead) => Check::new(Status::Ok, check)
                .detail(format!("to {dead} after {} attempts", queue.max_attempts)),
            None => Check::new(Status::Missing, check)
                .detail("none: a table that always fails is redelivered for ever")
                .fix("add ?dead_letter=NAME to the workers' --subscription"),
        },
        Err(e) => Check::new(Status::Missing, check).detail(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::{exportable_to, role_for};

    #[test]
    fn a_bucket_takes_exports_from_its_location_or_the_multi_region_it_is_in() {
        assert!(exportable_to("europe-west1", "europe-west1"));
        assert!(exportable_to("eu", "europe-west1"));
        assert!(exportable_to("us", "us-central1"));
        assert!(!exportable_to("eu", "europe-west2"));
        assert!(!exportable_to("europe-west1", "eu"));
        assert!(!exportable_to("us", "europe-west1"));
    }

    #[test]
    fn the_fix_names_the_narrowest_role_holding_the_permission() {
        assert_eq!(
            role_for("bigquery.tables.list"),
            "roles/bigquery.metadataViewer"
        );
        assert_eq!(
            role_for("run.jobs.runWithOverrides"),
            "roles/run.jobsExecutorWithOverrides"
        );
        assert_eq!(
            role_for("storage.objects.delete"),
            "roles/storage.objectUser"
        );
    }
}
