//! Starting the workers that drain a run.
//!
//! Once the producer has published a run and written its manifest, it can
//! start one execution of the worker Cloud Run job itself ([`launch_workers`])
//! with as many tasks as the run needs ([`task_count`]). Each task is told to
//! watch that run (`BQDRAIN_RUN_ID`, `BQDRAIN_DESTINATION`, the variables of
//! `bqdrain work --run-id/--destination`), so it exits once the run is
//! complete instead of waiting out its idle timeout.
//!
//! The launch comes after the publish, so a failed launch never loses work:
//! the messages wait in the queue, and the report carries the `gcloud`
//! command that starts the same execution by hand.

use serde::Serialize;

use crate::adapters::gcp::run::{self, JobName, WorkerJobs, MAX_TASKS_PER_EXECUTION};
use crate::error::ConfigError;

/// Tasks started at most by default. Cloud Run runs about 200 tasks of a
/// 1 vCPU / 2 GiB job in parallel by default and queues the rest, and a task
/// that starts after the queue is drained only finds the run complete; 100
/// stays under that, and at the worker's default concurrency of 4 it keeps at
/// most 400 BigQuery extract jobs running at once.
pub const DEFAULT_MAX_TASKS: u32 = 100;
/// Units per task by default: two rounds at the worker's default concurrency
/// of 4, so each task's start-up (container, Pub/Sub stream) is spread over
/// several exports, while a run of a few dozen tables still gets several tasks.
pub const DEFAULT_UNITS_PER_TASK: u32 = 8;
pub const DEFAULT_ENDPOINT: &str = "https://run.googleapis.com";
/// The worker's variables for `--run-id` and `--destination`.
pub const RUN_ID_VAR: &str = "BQDRAIN_RUN_ID";
pub const DESTINATION_VAR: &str = "BQDRAIN_DESTINATION";

/// `--launch-workers` and its companions, for a command that starts the
/// worker job.
#[derive(Debug, Clone, clap::Args)]
pub struct LaunchArgs {
    /// Start this Cloud Run job's workers for the run, e.g.
    /// projects/PROJECT/locations/REGION/jobs/bqdrain-worker.
    #[arg(long, env = "BQDRAIN_LAUNCH_WORKERS", value_name = "JOB")]
    pub launch_workers: Option<String>,
    /// Most tasks to start (Cloud Run allows 1 to 10000).
    #[arg(long, env = "BQDRAIN_MAX_TASKS", default_value_t = DEFAULT_MAX_TASKS, requires = "launch_workers")]
    pub max_tasks: u32,
    /// Units per task: tasks = the run's units / this, rounded up, at most --max-tasks.
    #[arg(long, env = "BQDRAIN_UNITS_PER_TASK", default_value_t = DEFAULT_UNITS_PER_TASK, requires = "launch_workers")]
    pub units_per_task: u32,
    /// Cloud Run Admin API endpoint; a plain http:// one gets anonymous credentials (tests).
    #[arg(long, env = "BQDRAIN_RUN_API_ENDPOINT", default_value = DEFAULT_ENDPOINT, requires = "launch_workers")]
    pub run_api_endpoint: String,
}

impl LaunchArgs {
    /// The checked plan, `None` without `--launch-workers`.
    pub fn plan(&self) -> Result<Option<LaunchPlan>, ConfigError> {
        self.launch_workers
            .as_deref()
            .map(|job| {
                LaunchPlan::new(
                    job,
                    self.max_tasks,
                    self.units_per_task,
                    &self.run_api_endpoint,
                )
            })
            .transpose()
    }
}

/// What `--launch-workers` and its companions asked for, checked.
#[derive(Debug, Clone)]
pub struct LaunchPlan {
    pub job: JobName,
    pub max_tasks: u32,
    pub units_per_task: u32,
    pub endpoint: String,
}

impl LaunchPlan {
    /// Checks the job name, the numbers and the endpoint, naming the flag at
    /// fault: call it before anything is published.
    pub fn new(
        job: &str,
        max_tasks: u32,
        units_per_task: u32,
        endpoint: &str,
    ) -> Result<LaunchPlan, ConfigError> {
        let job = JobName::parse(job, "--launch-workers")?;
        if !(1..=MAX_TASKS_PER_EXECUTION).contains(&max_tasks) {
            return Err(ConfigError::new(
                "--max-tasks",
                format!(
                    "{max_tasks} is outside Cloud Run's range of 1 to \
                     {MAX_TASKS_PER_EXECUTION} tasks per execution"
                ),
                format!("use a number from 1 to {MAX_TASKS_PER_EXECUTION} (default {DEFAULT_MAX_TASKS})"),
            ));
        }
        if units_per_task == 0 {
            return Err(ConfigError::new(
                "--units-per-task",
                "0 units per task would need infinitely many tasks",
                format!("use 1 or more (default {DEFAULT_UNITS_PER_TASK})"),
            ));
        }
        run::check_endpoint(endpoint, "--run-api-endpoint")?;
        Ok(LaunchPlan {
            job,
            max_tasks,
            units_per_task,
            endpoint: endpoint.to_string(),
        })
    }
}

/// Tasks for a run of `published` units: one per `units_per_task` units,
/// rounded up, at least 1 and at most `max_tasks`.
pub fn task_count(published: usize, units_per_task: u32, max_tasks: u32) -> u32 {
    let wanted = (published as u64).div_ceil(u64::from(units_per_task.max(1)));
    let capped = wanted.clamp(1, u64::from(max_tasks.max(1)));
    u32::try_from(capped).unwrap_or(u32::MAX)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LaunchStatus {
    /// Cloud Run accepted the execution.
    Started,
    /// Nothing was published, so no worker was started.
    Skipped,
    /// The run is published but its workers were not started.
    Failed,
}

/// The launch outcome, part of the producer's report.
#[derive(Debug, Clone, Serialize)]
pub struct LaunchReport {
    /// `projects/P/locations/L/jobs/J`.
    pub job: String,
    pub status: LaunchStatus,
    /// Tasks asked for; 0 when skipped.
    pub task_count: u32,
    /// The long-running operation Cloud Run returned.
    pub operation: Option<String>,
    /// `projects/P/locations/L/jobs/J/executions/E`, from the operation.
    pub execution: Option<String>,
    /// Why it was skipped or what failed.
    pub reason: Option<String>,
    /// The command that starts the same execution by hand, when it failed.
    pub command: Option<String>,
}

impl LaunchReport {
    /// One line for the producer's text output.
    pub fn summary(&self) -> String {
        match self.status {
            LaunchStatus::Started => format!(
                "workers: started {} with {} task(s) (operation {})",
                self.execution.as_deref().unwrap_or(&self.job),
                self.task_count,
                self.operation.as_deref().unwrap_or("unknown")
            ),
            LaunchStatus::Skipped => format!(
                "workers: not started ({})",
                self.reason.as_deref().unwrap_or("skipped")
            ),
            LaunchStatus::Failed => format!(
                "workers: NOT started: {}",
                self.reason.as_deref().unwrap_or("failed")
            ),
        }
    }

    /// The error a failed launch ends the producer with.
    pub fn error(&self, run_id: &str, published: usize) -> Option<anyhow::Error> {
        (self.status == LaunchStatus::Failed).then(|| {
            anyhow::anyhow!(
                "run {run_id} is published ({published} message(s), manifest written) but \
                 starting its workers on {} failed: {}; start them by hand with: {}",
                self.job,
                self.reason.as_deref().unwrap_or("unknown error"),
                self.command.as_deref().unwrap_or("gcloud run jobs execute"),
            )
        })
    }
}

/// Starts the workers of a published run, or says why it did not.
pub async fn launch_workers(
    plan: &LaunchPlan,
    jobs: &WorkerJobs,
    run_id: &str,
    published: usize,
    destination: &str,
) -> LaunchReport {
    let mut report = LaunchReport {
        job: plan.job.to_string(),
        status: LaunchStatus::Skipped,
        task_count: 0,
        operation: None,
        execution: None,
        reason: None,
        command: None,
    };
    if published == 0 {
        tracing::warn!(run_id, job = %plan.job, "nothing was published: no worker started");
        report.reason = Some("nothing was published".into());
        return report;
    }
    let tasks = task_count(published, plan.units_per_task, plan.max_tasks);
    report.task_count = tasks;
    let env = [(RUN_ID_VAR, run_id), (DESTINATION_VAR, destination)];
    match jobs.run(&plan.job, tasks, &env).await {
        Ok(started) => {
            tracing::info!(
                run_id,
                job = %plan.job,
                tasks,
                operation = started.operation,
                execution = started.execution.as_deref().unwrap_or(""),
                "workers started"
            );
            report.status = LaunchStatus::Started;
            report.operation = Some(started.operation);
            report.execution = started.execution;
        }
        Err(err) => {
            tracing::error!(run_id, job = %plan.job, tasks, error = %err, "starting the workers failed");
            report.status = LaunchStatus::Failed;
            report.reason = Some(err.to_string());
            report.command = Some(manual_command(&plan.job, tasks, run_id, destination));
        }
    }
    report
}

/// `gcloud run jobs execute` with the same task count and variables.
pub fn manual_command(job: &JobName, task_count: u32, run_id: &str, destination: &str) -> String {
    let values = [run_id, destination];
    // gcloud splits the list on commas unless it starts with ^DELIM^.
    let delimiter = if values.iter().any(|v| v.contains(',')) {
        ["@", "|", ";", "#", "~"]
            .into_iter()
            .find(|d| values.iter().all(|v| !v.contains(d)))
            .unwrap_or("@")
    } else {
        ","
    };
    let vars = format!("{RUN_ID_VAR}={run_id}{delimiter}{DESTINATION_VAR}={destination}");
    let vars = if delimiter == "," {
        vars
    } else {
        format!("^{delimiter}^{vars}")
    };
    format!(
        "gcloud run jobs execute {} --project {} --region {} --tasks {task_count} \
         --update-env-vars {}",
        shell_word(&job.job),
        shell_word(&job.project),
        shell_word(&job.location),
        shell_word(&vars)
    )
}

/// `s` as one POSIX shell word.
fn shell_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+^".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_count_rounds_up_and_clamps() {
        // (published, units per task, max tasks) -> tasks
        for (published, per_task, max, tasks) in [
            (1, 8, 100, 1),
            (8, 8, 100, 1),
            (9, 8, 100, 2),
            (800, 8, 100, 100),
            (801, 8, 100, 100),
            (5, 1, 100, 5),
            (5, 1, 3, 3),
            (4, 3, 100, 2),
            (0, 8, 100, 1),
            (usize::MAX, 1, 10_000, 10_000),
            (7, 1, 0, 1),
            (7, 0, 10, 7),
        ] {
            assert_eq!(
                task_count(published, per_task, max),
                tasks,
                "{published} units, {per_task} per task, at most {max}"
            );
        }
    }

    #[test]
    fn plan_checks_each_flag() {
        let job = "projects/p/locations/europe-west1/jobs/w";
        assert!(LaunchPlan::new(job, 100, 8, DEFAULT_ENDPOINT).is_ok());
        assert!(LaunchPlan::new(job, 10_000, 1, "http://127.0.0.1:1").is_ok());
        for (job, max, per, endpoint, flag) in [
            ("w", 100, 8, DEFAULT_ENDPOINT, "--launch-workers"),
            (job, 0, 8, DEFAULT_ENDPOINT, "--max-tasks"),
            (job, 10_001, 8, DEFAULT_ENDPOINT, "--max-tasks"),
            (job, 100, 0, DEFAULT_ENDPOINT, "--units-per-task"),
            (job, 100, 8, "run.googleapis.com", "--run-api-endpoint"),
        ] {
            let err = LaunchPlan::new(job, max, per, endpoint).unwrap_err();
            assert_eq!(err.flag, flag);
        }
    }

    #[test]
    fn manual_command_repeats_the_launch() {
        let job = JobName::parse("projects/p/locations/europe-west1/jobs/w", "--f").unwrap();
        assert_eq!(
            manual_command(&job, 3, "r1", "gs://b/exports"),
            "gcloud run jobs execute w --project p --region europe-west1 --tasks 3 \
             --update-env-vars BQDRAIN_RUN_ID=r1,BQDRAIN_DESTINATION=gs://b/exports"
        );
        assert_eq!(
            manual_command(&job, 1, "r1", "gs://b/a,b c"),
            "gcloud run jobs execute w --project p --region europe-west1 --tasks 1 \
             --update-env-vars '^@^BQDRAIN_RUN_ID=r1@BQDRAIN_DESTINATION=gs://b/a,b c'"
        );
        assert_eq!(shell_word("it's"), r"'it'\''s'");
    }

    #[test]
    fn failure_names_the_run_and_the_command() {
        let report = LaunchReport {
            job: "projects/p/locations/l/jobs/w".into(),
            status: LaunchStatus::Failed,
            task_count: 2,
            operation: None,
            execution: None,
            reason: Some("accessDenied: 403".into()),
            command: Some("gcloud run jobs execute w".into()),
        };
        let message = report.error("r1", 9).unwrap().to_string();
        assert!(
            message.contains("run r1 is published (9 message(s)"),
            "{message}"
        );
        assert!(message.contains("gcloud run jobs execute w"), "{message}");
        assert!(report.summary().starts_with("workers: NOT started"));
    }
}
