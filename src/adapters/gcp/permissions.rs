//! The permission table: every Google API call bqdrain makes (and the few
//! Google makes on its behalf under terraform/'s grants), the IAM
//! permissions Google documents for it, and where they must be granted.
//!
//! One table, `permissions.json` beside this file, read by the code
//! (`bqdrain-producer --check` asks each service for these permissions),
//! by the Terraform module's offline test (scripts/checks/) and by the
//! proxy in front of the emulators, so the three cannot drift apart.

use serde::Deserialize;

/// The table as shipped in the binaries.
pub const TABLE: &str = include_str!("permissions.json");

/// One call, and one place its permissions must be granted. A call that
/// needs grants in two places (an extract job: the project and the bucket)
/// has one row per place.
#[derive(Debug, Clone, Deserialize)]
pub struct CallPermission {
    /// HTTP method and path template as sent, or the gRPC method.
    pub call: String,
    /// The permissions the call needs there (none for `testIamPermissions`).
    #[serde(deserialize_with = "one_or_many")]
    pub permission: Vec<String>,
    /// Kind of resource they are granted on: project, dataset, bucket,
    /// topic, subscription, job (or key, for the bucket's CMEK key).
    pub resource: String,
    /// Which resource of a deployment: source_dataset, destination_bucket,
    /// work_topic, work_subscription, worker_job…
    pub target: String,
    /// Who makes the call: producer, worker, replay, check, verify, status;
    /// or scheduler, pubsub-agent, storage-agent for Google's own calls.
    pub who: Vec<String>,
    /// The setting under which the call is made: always, views,
    /// worker_launch, worker_schedule, replay, project_source, kms;
    /// restore (a worker restoring a unit into `restore_dataset`).
    pub when: String,
    /// A call bqdrain survives without (it records an unknown instead).
    #[serde(default)]
    pub optional: bool,
}

/// Options of a run that decide which calls it makes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Settings {
    pub views: bool,
    pub launch_workers: bool,
    pub project_source: bool,
}

impl CallPermission {
    /// Whether a run with these settings makes this call.
    pub fn applies(&self, settings: Settings) -> bool {
        match self.when.as_str() {
            "always" => true,
            "views" => settings.views,
            "worker_launch" => settings.launch_workers,
            "project_source" => settings.project_source,
            _ => false,
        }
    }
}

/// Every row of the table.
pub fn table() -> Vec<CallPermission> {
    serde_json::from_str(TABLE).expect("permissions.json is checked by its unit test")
}

/// The rows `who` makes under `settings`, with at least one permission.
pub fn needed_by(who: &str, settings: Settings) -> Vec<CallPermission> {
    table()
        .into_iter()
        .filter(|row| row.who.iter().any(|w| w == who))
        .filter(|row| !row.permission.is_empty() && row.applies(settings))
        .collect()
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(one) => vec![one],
        OneOrMany::Many(many) => many,
    })
}

#[cfg(test)]
mod tests {
    use super::{needed_by, table, Settings};

    const RESOURCES: [&str; 7] = [
        "project",
        "dataset",
        "bucket",
        "topic",
        "subscription",
        "job",
        "key",
    ];
    const WHEN: [&str; 8] = [
        "always",
        "views",
        "worker_launch",
        "worker_schedule",
        "replay",
        "project_source",
        "kms",
        "restore",
    ];

    #[test]
    fn every_row_names_a_call_its_place_its_callers_and_a_known_setting() {
        let rows = table();
        assert!(rows.len() > 20, "{} rows", rows.len());
        for row in &rows {
            let call = &row.call;
            assert!(
                call.starts_with("google.")
                    || ["GET /", "POST /", "PUT /", "PATCH /", "DELETE /"]
                        .iter()
                        .any(|m| call.starts_with(m)),
                "{call}: not METHOD /path nor a gRPC method"
            );
            assert!(
                RESOURCES.contains(&row.resource.as_str()),
                "{call}: {}",
                row.resource
            );
            assert!(WHEN.contains(&row.when.as_str()), "{call}: {}", row.when);
            assert!(!row.who.is_empty(), "{call}: nobody makes it");
            for permission in &row.permission {
                assert!(
                    permission.split('.').count() == 3,
                    "{call}: {permission} is not service.resource.verb"
                );
            }
        }
    }

    #[test]
    fn a_worker_needs_to_consume_the_work_subscription_and_export_tables() {
        let permissions: Vec<String> = needed_by("worker", Settings::default())
            .into_iter()
            .flat_map(|row| row.permission)
            .collect();
        for wanted in [
            "pubsub.subscriptions.consume",
            "bigquery.tables.export",
            "bigquery.jobs.create",
        ] {
            assert!(permissions.iter().any(|p| p == wanted), "{wanted}");
        }
    }
}
