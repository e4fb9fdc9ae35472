//! `bqdrain-producer`: list a dataset's tables and publish one work message
//! per table for a run, then write the run manifest; with `--launch-workers`,
//! start the worker Cloud Run job with a task count that follows the run.

use std::process::ExitCode;

use clap::Parser;

use bqdrain::adapters::backends;
use bqdrain::adapters::gcp::run::WorkerJobs;
use bqdrain::cli::{fail, print_json};
use bqdrain::commands::launch::{
    self, LaunchPlan, DEFAULT_ENDPOINT, DEFAULT_MAX_TASKS, DEFAULT_UNITS_PER_TASK,
};
use bqdrain::commands::preflight::{preflight, Deployment, PreflightReport};
use bqdrain::contract::options::{Compression, ExportOptions, Format};
use bqdrain::engine::producer::{produce, RunId, RunPlan, EXECUTION_VAR};
use bqdrain::engine::selection::{PartitionPlan, PartitionWindow};
use bqdrain::logging::{self, LogFormat};

#[derive(Parser)]
#[command(
    name = "bqdrain-producer",
    version,
    about = "Publish one bqdrain work message per table of a dataset"
)]
struct Cli {
    /// Dataset to export, e.g. bigquery://PROJECT/DATASET, or every dataset of
    /// a project: bigquery://PROJECT (repeatable; comma-separated in the variable).
    #[arg(long, env = "BQDRAIN_SOURCE", value_delimiter = ',', required = true)]
    source: Vec<String>,
    /// Work topic, e.g. queue://demo/queue.db#work.
    #[arg(long, env = "BQDRAIN_TOPIC")]
    topic: String,
    /// Export root, e.g. file://demo/exports.
    #[arg(long, env = "BQDRAIN_DESTINATION")]
    destination: String,
    /// Run id, used once [default: on Cloud Run the execution's name, so a
    /// retried execution resumes its run; elsewhere UTC time plus a random suffix].
    #[arg(long, env = "BQDRAIN_RUN_ID")]
    run_id: Option<String>,
    /// Continue the existing run --run-id: publish again only its units that
    /// have no completion record, with the options it was planned with.
    #[arg(long, env = "BQDRAIN_RESUME", requires = "run_id")]
    resume: bool,
    /// Export only tables matching this glob, as TABLE or DATASET.TABLE
    /// (repeatable; comma-separated in the variable).
    #[arg(long, env = "BQDRAIN_INCLUDE", value_delimiter = ',')]
    include: Vec<String>,
    /// Skip tables matching this glob, as TABLE or DATASET.TABLE (repeatable;
    /// comma-separated in the variable).
    #[arg(long, env = "BQDRAIN_EXCLUDE", value_delimiter = ',')]
    exclude: Vec<String>,
    #[arg(long, env = "BQDRAIN_FORMAT", value_enum, default_value = "csv")]
    format: Format,
    /// Allowed: gzip for csv/json; deflate, snappy for avro; snappy, gzip, zstd for parquet.
    #[arg(long, env = "BQDRAIN_COMPRESSION", value_enum, default_value = "none")]
    compression: Compression,
    /// Leave out the CSV header row.
    #[arg(long, env = "BQDRAIN_NO_HEADER")]
    no_header: bool,
    /// CSV field delimiter.
    #[arg(long, env = "BQDRAIN_FIELD_DELIMITER", default_value = ",")]
    field_delimiter: String,
    /// One unit per partition of each partitioned table (`table$20261201`),
    /// each exported and replaced on its own; other tables stay whole.
    #[arg(long, env = "BQDRAIN_PARTITIONS")]
    partitions: bool,
    /// Only partitions with a day among the run's last N days (UTC, today
    /// included); `__NULL__` is left out, `__UNPARTITIONED__` kept.
    #[arg(long, env = "BQDRAIN_PARTITIONS_LAST_DAYS", value_name = "N", requires = "partitions",
          conflicts_with = "partitions_since", value_parser = clap::value_parser!(u32).range(1..))]
    partitions_last_days: Option<u32>,
    /// Partitioned tables of fewer rows than this stay whole.
    #[arg(
        long,
        env = "BQDRAIN_PARTITIONS_MIN_ROWS",
        value_name = "N",
        default_value_t = 0,
        requires = "partitions"
    )]
    partitions_min_rows: u64,
    /// Only partitions with a day on or after this date (YYYY-MM-DD).
    #[arg(
        long,
        env = "BQDRAIN_PARTITIONS_SINCE",
        value_name = "DATE",
        requires = "partitions"
    )]
    partitions_since: Option<chrono::NaiveDate>,
    /// Publish a unit only if its source changed since its current export
    /// (the change marker its completion record keeps).
    #[arg(long, env = "BQDRAIN_ONLY_CHANGED")]
    only_changed: bool,
    /// Export views and materialized views too, through EXPORT DATA query
    /// jobs, which are billed; each is dry-run first.
    #[arg(long, env = "BQDRAIN_VIEWS")]
    views: bool,
    /// Delete the exports of tables gone from the source. Without it a
    /// dropped table keeps its last export (it may be someone's only copy)
    /// and the run reports it as gone. On a bucket with object versioning
    /// the deleted files stay as noncurrent versions for the bucket's
    /// retention (terraform/: noncurrent_retention_days).
    #[arg(long, env = "BQDRAIN_PRUNE_GONE")]
    prune_gone: bool,
    /// Minutes in which a second new run of the same sources and options is
    /// a duplicate scheduler trigger (Cloud Scheduler delivers at least
    /// once): it publishes nothing, logs the run it duplicates and exits 0.
    /// 0 (the default) turns the check off.
    #[arg(
        long,
        env = "BQDRAIN_DUPLICATE_WINDOW",
        value_name = "MINUTES",
        default_value_t = 0
    )]
    duplicate_window: u32,
    /// With --views: refuse the run (exit 2, nothing published) when a view's
    /// dry run says its export would process more bytes than this; each
    /// export query is also capped at it (BigQuery's maximumBytesBilled).
    #[arg(long, env = "BQDRAIN_MAX_BYTES_BILLED", value_name = "BYTES")]
    max_bytes_billed: Option<u64>,
    /// Once the run is published, start this Cloud Run job's workers, e.g.
    /// projects/PROJECT/locations/REGION/jobs/bqdrain-worker.
    #[arg(long, env = "BQDRAIN_LAUNCH_WORKERS", value_name = "JOB")]
    launch_workers: Option<String>,
    /// Most tasks to start (Cloud Run allows 1 to 10000).
    #[arg(long, env = "BQDRAIN_MAX_TASKS", default_value_t = DEFAULT_MAX_TASKS, requires = "launch_workers")]
    max_tasks: u32,
    /// Units per task: tasks = published units / this, rounded up, at most --max-tasks.
    #[arg(long, env = "BQDRAIN_UNITS_PER_TASK", default_value_t = DEFAULT_UNITS_PER_TASK, requires = "launch_workers")]
    units_per_task: u32,
    /// Cloud Run Admin API endpoint; a plain http:// one gets anonymous credentials (tests).
    #[arg(long, env = "BQDRAIN_RUN_API_ENDPOINT", default_value = DEFAULT_ENDPOINT, requires = "launch_workers")]
    run_api_endpoint: String,
    /// Check, before the first run, that this run can work, and print what
    /// it would do: publishes and writes nothing. One line per check (ok,
    /// missing with the command that fixes it, unknown, warn), then the
    /// plan. Exit status 1 when a check is missing.
    #[arg(long, env = "BQDRAIN_CHECK")]
    check: bool,
    /// With --check on local queues: the workers' subscription URI, whose
    /// dead-letter policy is checked (on Pub/Sub, every subscription of the
    /// topic is).
    #[arg(long, env = "BQDRAIN_SUBSCRIPTION", requires = "check")]
    subscription: Option<String>,
    /// Print one JSON object with the outcome on stdout.
    #[arg(long, env = "BQDRAIN_JSON")]
    json: bool,
    /// Log format on stderr: text on a terminal and JSON lines otherwise by default.
    #[arg(long, env = "BQDRAIN_LOG_FORMAT", value_enum, default_value = "auto")]
    log_format: LogFormat,
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let launch_plan = match &cli.launch_workers {
        Some(job) => Some(LaunchPlan::new(
            job,
            cli.max_tasks,
            cli.units_per_task,
            &cli.run_api_endpoint,
        )?),
        None => None,
    };
    if cli.check {
        let deployment = Deployment {
            sources: &cli.source,
            topic: &cli.topic,
            destination: &cli.destination,
            subscription: cli.subscription.as_deref(),
            launch: launch_plan.as_ref(),
        };
        let report = preflight(&run_plan(&cli), &deployment).await;
        print_preflight(&report, cli.json);
        return Ok(if report.ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    let warehouses = backends::open_sources(&cli.source, "--source").await?;
    let topic = backends::open_topic(&cli.topic, "--topic").await?;
    let store = backends::open_store(&cli.destination, "--destination").await?;
    let jobs = match &launch_plan {
        Some(plan) => Some(WorkerJobs::connect(&plan.endpoint).await?),
        None => None,
    };
    let plan = run_plan(&cli);
    let cli_window = cli.duplicate_window;
    let report = produce(&plan, &warehouses, topic.as_ref(), store.as_ref()).await?;
    let launched = match (&launch_plan, &jobs) {
        (Some(plan), Some(jobs)) => Some(
            launch::launch_workers(plan, jobs, &report.run_id, report.pending, store.uri()).await,
        ),
        _ => None,
    };
    if cli.json {
        let mut outcome = serde_json::to_value(&report)?;
        outcome["launch"] = serde_json::to_value(&launched)?;
        print_json(&outcome);
    } else {
        println!(
            "run {}{}: published {} message(s), {} unit(s) pending, skipped {}, excluded {}, \
             unchanged {}, outside the partition window {}, source gone {}, retired {}",
            report.run_id,
            if report.resumed { " (resumed)" } else { "" },
            report.published,
            report.pending,
            report.skipped.len(),
            report.excluded,
            report.unchanged,
            report.outside_window,
            report.gone,
            report.retired
        );
        if let Some(earlier) = &report.duplicate_of {
            println!(
                "  duplicate trigger: run {earlier} of the same sources and options started within \
                 the last {} minute(s); nothing published",
                cli_window
            );
        } else if report.pending == 0 && !report.resumed {
            println!(
                "  nothing to export: no unit of the dataset is selected, changed and exportable"
            );
        }
        for s in &report.skipped {
            println!("  skipped {}: {}", s.table, s.reason);
        }
        for view in &report.views_unestimated {
            println!("  view {view}: its dry run failed; exported with its estimate unknown (see the log)");
        }
        if report.view_bytes_estimated > 0 {
            println!(
                "  views: their export queries will process about {} bytes (dry run)",
                report.view_bytes_estimated
            );
        }
        if let Some(launched) = &launched {
            println!("{}", launched.summary());
        }
    }
    match launched.and_then(|l| l.error(&report.run_id, report.published)) {
        Some(err) => Err(err),
        None => Ok(ExitCode::SUCCESS),
    }
}

/// The run as the flags describe it.
fn run_plan(cli: &Cli) -> RunPlan {
    RunPlan {
        run: RunId::from_flags(
            cli.run_id.clone(),
            cli.resume,
            std::env::var(EXECUTION_VAR).ok(),
        ),
        include: cli.include.clone(),
        exclude: cli.exclude.clone(),
        options: ExportOptions {
            format: cli.format,
            compression: cli.compression,
            header: !cli.no_header,
            field_delimiter: cli.field_delimiter.clone(),
            max_bytes_billed: cli.max_bytes_billed,
        },
        partitions: PartitionPlan {
            split: cli.partitions,
            window: match (cli.partitions_last_days, cli.partitions_since) {
                (Some(days), _) => Some(PartitionWindow::LastDays(days)),
                (None, Some(day)) => Some(PartitionWindow::Since(day)),
                (None, None) => None,
            },
            min_rows: cli.partitions_min_rows,
        },
        only_changed: cli.only_changed,
        views: cli.views,
        prune_gone: cli.prune_gone,
        duplicate_window: (cli.duplicate_window > 0)
            .then(|| std::time::Duration::from_secs(u64::from(cli.duplicate_window) * 60)),
    }
}

/// One line per check, then what the run would do.
fn print_preflight(report: &PreflightReport, json: bool) {
    if json {
        print_json(&serde_json::to_value(report).unwrap_or_default());
        return;
    }
    for check in &report.checks {
        println!("{}", check.line());
    }
    if let Some(plan) = &report.plan {
        println!(
            "plan: {} table(s), {} unit(s), {} byte(s); skipped {}, excluded {}, unchanged {}, \
             outside the partition window {}, source gone {}, to retire {}",
            plan.tables,
            plan.units,
            plan.bytes,
            plan.skipped.len(),
            plan.excluded,
            plan.unchanged,
            plan.outside_window,
            plan.gone,
            plan.retired
        );
        for (source, path) in &plan.planning {
            println!("planning {source}: {path}");
        }
    }
    if let Some(tasks) = report.tasks {
        println!("tasks: {tasks}");
    }
    let calls = &report.calls;
    println!(
        "calls: planning {}, publish {}, launch {}",
        calls.planning, calls.publish, calls.launch
    );
    println!(
        "{}",
        if report.ok {
            "check passed"
        } else {
            "check failed: fix what is missing above"
        }
    );
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => return fail(err.into()),
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(err) => fail(err),
    }
}
