//! The `bqdrain` binary: worker, replay, status, verify, restore and the
//! local demo.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::builder::BoolishValueParser;
use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use bqdrain::adapters::backends;
use bqdrain::adapters::gcp::pubsub;
use bqdrain::adapters::gcp::run::WorkerJobs;
use bqdrain::adapters::local::dataset::{self, Fault};
use bqdrain::adapters::local::warehouse::LocalWarehouse;
use bqdrain::cli::{at_least_one, fail, peak_rss_bytes, print_json};
use bqdrain::commands::launch::{self, LaunchArgs, LaunchReport, LaunchStatus};
use bqdrain::commands::report::ReplayTarget;
use bqdrain::commands::{demo, reconcile, replay, restore, status, verify};
use bqdrain::engine::drain::{drain, DrainConfig, DrainReport, ExitReason};
use bqdrain::engine::export::ExportHandler;
use bqdrain::engine::layout;
use bqdrain::engine::retry::RetryPolicy;
use bqdrain::engine::shutdown;
use bqdrain::engine::task::TaskIdentity;
use bqdrain::error::ConfigError;
use bqdrain::logging::{self, LogFormat};
use bqdrain::ports::queue::ReceiveSettings;
use bqdrain::ports::store::ObjectStore;

#[derive(Parser)]
#[command(
    name = "bqdrain",
    version,
    about = "Export warehouse tables to object storage through a work queue drained by parallel tasks"
)]
struct Cli {
    /// Log format on stderr: text on a terminal and JSON lines otherwise by default.
    #[arg(
        long,
        global = true,
        env = "BQDRAIN_LOG_FORMAT",
        value_enum,
        default_value = "auto"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// Every subcommand reads `-1` as a flag's value, so that a negative
/// number is refused naming its flag rather than as an unknown argument.
#[derive(Subcommand)]
enum Command {
    /// Pull work messages and export each unit, until the runs seen are done.
    #[command(allow_negative_numbers = true)]
    Work(WorkArgs),
    /// Move dead-lettered messages back to the work topic.
    #[command(allow_negative_numbers = true)]
    Replay(ReplayArgs),
    /// Show each unit of a run: pending, exported, or dead-lettered and why.
    #[command(allow_negative_numbers = true)]
    Status(StatusArgs),
    /// Check a destination against the rule its exports keep, from listings.
    ///
    /// The rule: for every table, the data files under DATASET/TABLE/ are
    /// exactly one committed export per current unit (the whole table,
    /// DATASET/TABLE/run=RUN/, or one per partition,
    /// DATASET/TABLE/partition=P/run=RUN/), all written with the same
    /// options, holding the table's rows as of the run's snapshot. A
    /// committed export is a folder whose _MANIFEST.json (a copy of the run's
    /// completion record) names its files with their sizes and, on Cloud
    /// Storage, their CRC32C. A dropped table keeps its last export.
    ///
    /// Checked from listings, nothing downloaded: one export per unit (no
    /// older run's export beside the newest, no whole and partition exports
    /// side by side, no folder that no run will commit), every file its
    /// manifest names there with its size and checksum and nothing else,
    /// one format per table. With --source, against the source as it is
    /// now: every exportable table exported, no export of a partition the
    /// source no longer has, and row counts of units unchanged since their
    /// export. With --deep, every file is downloaded and its rows counted.
    /// Nothing is written, to the destination or the source.
    ///
    /// Prints one line per discrepancy, naming the object or folder and the
    /// fix. Exit status: 0 when every check holds, 1 when any discrepancy
    /// is found (or the check cannot finish), 2 for a bad flag.
    #[command(allow_negative_numbers = true)]
    Verify(VerifyArgs),
    /// Run the whole flow locally: dummy tables, producer, worker processes.
    #[command(allow_negative_numbers = true)]
    Demo(DemoArgs),
    /// Load a destination's exports back into a warehouse, through the queue.
    ///
    /// Plans one unit per current export under --from (a whole table, a
    /// partition, a view), refuses target tables that exist unless
    /// --if-exists says otherwise, writes a run manifest and publishes one
    /// restore message per unit. Each unit is loaded from its files and its
    /// _TABLE.json, and its rows checked against the rows its export
    /// recorded; a difference dead-letters it. Into sqlite:// without
    /// --topic, local worker processes drain the run at once.
    #[command(allow_negative_numbers = true)]
    Restore(RestoreArgs),
    /// Make a table of a local sqlite:// dataset fail or stall, or clear that.
    #[command(allow_negative_numbers = true)]
    Fault(FaultArgs),
}

#[derive(Args)]
struct RestoreArgs {
    /// The exports: a destination root, e.g. file://demo/exports or
    /// gs://BUCKET/PREFIX, optionally followed by /DATASET, /DATASET/TABLE
    /// or /DATASET/TABLE$PARTITION.
    #[arg(long, env = "BQDRAIN_RESTORE_FROM")]
    from: String,
    /// The warehouse: sqlite://PATH (made if absent), bigquery://PROJECT
    /// (each dataset into its own) or bigquery://PROJECT/DATASET.
    #[arg(long, env = "BQDRAIN_RESTORE_TO")]
    to: String,
    /// Only tables matching this glob, as TABLE or DATASET.TABLE
    /// (repeatable; comma-separated in the variable).
    #[arg(long, env = "BQDRAIN_INCLUDE", value_delimiter = ',')]
    include: Vec<String>,
    /// Leave out tables matching this glob (repeatable).
    #[arg(long, env = "BQDRAIN_EXCLUDE", value_delimiter = ',')]
    exclude: Vec<String>,
    /// Restore dataset FROM into dataset TO of a bigquery://PROJECT target
    /// (repeatable).
    #[arg(
        long,
        env = "BQDRAIN_DATASET_MAP",
        value_delimiter = ',',
        value_name = "FROM=TO"
    )]
    dataset_map: Vec<String>,
    /// What to do with a target table that exists: refuse the restore
    /// (fail), leave the table out (skip), or replace it (replace; a
    /// partition unit replaces its partition only).
    #[arg(long, env = "BQDRAIN_IF_EXISTS", value_enum, default_value = "fail")]
    if_exists: restore::IfExists,
    /// Work topic to publish to [default: a queue of the restore's own,
    /// drained by local workers].
    #[arg(long, env = "BQDRAIN_TOPIC")]
    topic: Option<String>,
    #[arg(long, env = "BQDRAIN_RUN_ID")]
    run_id: Option<String>,
    /// Local worker processes that drain the run, for a queue:// topic
    /// [default: 4 without --topic, 0 with one].
    #[arg(long, env = "BQDRAIN_WORKERS")]
    workers: Option<usize>,
    #[arg(long, env = "BQDRAIN_JSON", value_parser = BoolishValueParser::new())]
    json: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum FaultKind {
    /// Remove the table's fault: exports work again.
    Clear,
    /// Every export fails with a permanent error.
    Permanent,
    /// The next --times exports fail with a transient error (every one without --times).
    Transient,
    /// Each shard waits --delay-ms before it is written.
    Slow,
}

#[derive(Args)]
struct FaultArgs {
    /// A local dataset, e.g. sqlite://bqdrain-demo/warehouse.db.
    #[arg(long, env = "BQDRAIN_SOURCE")]
    source: String,
    #[arg(long, env = "BQDRAIN_TABLE")]
    table: String,
    #[arg(long, env = "BQDRAIN_FAULT", value_enum)]
    kind: FaultKind,
    #[arg(long, env = "BQDRAIN_FAULT_TIMES")]
    times: Option<u32>,
    #[arg(long, env = "BQDRAIN_FAULT_DELAY_MS", default_value_t = 1000)]
    delay_ms: u64,
}

#[derive(Args)]
struct WorkArgs {
    /// Work subscription, e.g. queue://q.db?dead_letter=dead#work.
    #[arg(long, env = "BQDRAIN_SUBSCRIPTION")]
    subscription: String,
    /// Where permanent failures go; defaults to the subscription's dead-letter
    /// policy, which a pubsub:// subscription must have.
    #[arg(long, env = "BQDRAIN_DEAD_LETTER_TOPIC")]
    dead_letter_topic: Option<String>,
    /// Watch this run from the start: exit once it is complete, even if this
    /// task received none of its messages (needs --destination).
    #[arg(long, env = "BQDRAIN_RUN_ID", requires = "destination")]
    run_id: Option<String>,
    /// Export root of the watched run.
    #[arg(long, env = "BQDRAIN_DESTINATION", requires = "run_id")]
    destination: Option<String>,
    /// Units exported at once by this task.
    #[arg(long, env = "BQDRAIN_CONCURRENCY", default_value_t = 4, value_parser = at_least_one)]
    concurrency: usize,
    /// Exit after this many seconds with nothing received and nothing held
    /// [default: the ack deadline plus 10 s, so a redelivery is still caught].
    #[arg(long, env = "BQDRAIN_IDLE_TIMEOUT")]
    idle_timeout: Option<f64>,
    /// Seconds after SIGTERM/SIGINT to finish in-flight work before giving it back.
    #[arg(long, env = "BQDRAIN_GRACE_PERIOD", default_value_t = 8.0)]
    grace_period: f64,
    /// Seconds a message may be held, lease extensions included: the task
    /// timeout of the Cloud Run job, after which the task is killed anyway.
    #[arg(long, env = "BQDRAIN_TASK_TIMEOUT", default_value_t = 3600.0)]
    task_timeout: f64,
    /// In-process retries of a transient export failure before the queue redelivers.
    #[arg(long, env = "BQDRAIN_MAX_RETRIES", default_value_t = 3)]
    max_retries: usize,
    /// First retry delay in seconds (doubles each retry, with jitter).
    #[arg(long, env = "BQDRAIN_RETRY_DELAY", default_value_t = 0.5)]
    retry_delay: f64,
    /// Longest retry delay in seconds.
    #[arg(long, env = "BQDRAIN_RETRY_MAX_DELAY", default_value_t = 30.0)]
    retry_max_delay: f64,
    /// Seconds between heartbeats of an export that runs longer: an idle
    /// task exits 0 when every unit left is held by a task with a fresh one
    /// (written within 3 intervals), instead of waiting and failing.
    #[arg(long, env = "BQDRAIN_HEARTBEAT", default_value_t = 60.0)]
    heartbeat: f64,
    /// Print one JSON object with the outcome on stdout.
    #[arg(long, env = "BQDRAIN_JSON", value_parser = BoolishValueParser::new())]
    json: bool,
}

#[derive(Args)]
struct ReplayArgs {
    /// Dead-letter subscription to take messages from.
    #[arg(long, env = "BQDRAIN_REPLAY_FROM")]
    from: String,
    /// Work topic to send them back to.
    #[arg(long, env = "BQDRAIN_REPLAY_TO")]
    to: String,
    /// Only messages of this run.
    #[arg(long, env = "BQDRAIN_RUN_ID")]
    run_id: Option<String>,
    /// Only tables matching this glob.
    #[arg(long, env = "BQDRAIN_TABLE")]
    table: Option<String>,
    /// List what would be replayed; move nothing.
    #[arg(long, env = "BQDRAIN_DRY_RUN", value_parser = BoolishValueParser::new())]
    dry_run: bool,
    /// Replay at most this many messages.
    #[arg(long, env = "BQDRAIN_MAX")]
    max: Option<usize>,
    #[command(flatten)]
    launch: LaunchArgs,
    #[arg(long, env = "BQDRAIN_JSON", value_parser = BoolishValueParser::new())]
    json: bool,
}

#[derive(Args)]
struct StatusArgs {
    /// Export root the run wrote to, e.g. file://demo/exports.
    #[arg(long, env = "BQDRAIN_DESTINATION")]
    destination: String,
    #[arg(long, env = "BQDRAIN_RUN_ID")]
    run_id: String,
    /// First read this dead-letter subscription (without consuming it) and
    /// record the run's units that sit there unrecorded: those its
    /// dead-letter policy took from tasks killed on every attempt.
    #[arg(
        long,
        env = "BQDRAIN_RECONCILE",
        value_name = "DEAD_LETTER_SUBSCRIPTION"
    )]
    reconcile: Option<String>,
    /// Also write the run report, one self-contained HTML page, to this file.
    #[arg(long, env = "BQDRAIN_HTML", value_name = "FILE")]
    html: Option<PathBuf>,
    #[arg(long, env = "BQDRAIN_JSON", value_parser = BoolishValueParser::new())]
    json: bool,
}

#[derive(Args)]
struct VerifyArgs {
    /// Export root to check, e.g. gs://BUCKET/PREFIX or file://demo/exports.
    #[arg(long, env = "BQDRAIN_DESTINATION")]
    destination: String,
    /// Also check against the dataset(s) exported there, as they are now:
    /// any URI the producer accepts, e.g. bigquery://PROJECT/DATASET or
    /// bigquery://PROJECT (repeatable; comma-separated in the variable).
    /// Only its datasets' folders are checked then; without it, every
    /// dataset folder of the destination.
    #[arg(long, env = "BQDRAIN_SOURCE", value_delimiter = ',')]
    source: Vec<String>,
    /// Only tables matching this glob, as TABLE or DATASET.TABLE
    /// (repeatable; comma-separated in the variable).
    #[arg(long, env = "BQDRAIN_INCLUDE", value_delimiter = ',')]
    include: Vec<String>,
    /// Also download every file of every current export and count its rows
    /// (CSV and JSON, plain or gzip; avro and parquet are not counted):
    /// as many bytes as the destination holds.
    #[arg(long, env = "BQDRAIN_DEEP", value_parser = BoolishValueParser::new())]
    deep: bool,
    /// Print one JSON object with the report on stdout: counts per kind,
    /// every discrepancy (kind, path, detail, fix), notes, what was checked
    /// and the listing calls made.
    #[arg(long, env = "BQDRAIN_JSON", value_parser = BoolishValueParser::new())]
    json: bool,
}

#[derive(Args)]
struct DemoArgs {
    #[arg(long, env = "BQDRAIN_DEMO_TABLES", default_value_t = 30)]
    tables: usize,
    /// Rows per table.
    #[arg(long, env = "BQDRAIN_DEMO_ROWS", default_value_t = 1000)]
    rows: u64,
    /// Worker processes to start, like Cloud Run tasks.
    #[arg(long, env = "BQDRAIN_DEMO_TASKS", default_value_t = 4)]
    tasks: usize,
    /// Folder for the warehouse, queue, exports and logs (recreated, exports
    /// kept); refused when it holds anything the demo did not make.
    #[arg(long, env = "BQDRAIN_DEMO_DIR", default_value = "bqdrain-demo")]
    dir: PathBuf,
    /// Use --dir even when it holds files or tables the demo did not make
    /// (its warehouse.db and queue.db are replaced).
    #[arg(long, env = "BQDRAIN_DEMO_FORCE", value_parser = BoolishValueParser::new())]
    force: bool,
    /// Make this table unexportable, to show dead-lettering and replay (repeatable).
    #[arg(long, env = "BQDRAIN_DEMO_FAIL", value_delimiter = ',')]
    fail: Vec<String>,
    /// Also write the run report, one self-contained HTML page, to this file.
    #[arg(long, env = "BQDRAIN_HTML", value_name = "FILE")]
    html: Option<PathBuf>,
    /// Add a table partitioned by day, export it partition by partition,
    /// change a few rows, and run again exporting only what changed.
    #[arg(long, env = "BQDRAIN_DEMO_INCREMENTAL", value_parser = BoolishValueParser::new())]
    incremental: bool,
    #[arg(long, env = "BQDRAIN_JSON", value_parser = BoolishValueParser::new())]
    json: bool,
}

/// The longest span a flag of seconds takes: a year, beyond any Cloud Run
/// task's (7 days at most), and safe to add to any instant.
const MAX_SECONDS: f64 = 365.0 * 24.0 * 3600.0;

fn seconds(flag: &str, value: f64) -> Result<Duration, ConfigError> {
    if value > MAX_SECONDS {
        return Err(ConfigError::new(
            flag,
            format!("{value:e} seconds is more than a year"),
            format!("give at most {MAX_SECONDS} seconds"),
        ));
    }
    Duration::try_from_secs_f64(value).map_err(|_| {
        ConfigError::new(
            flag,
            format!("{value} is not a number of seconds"),
            "give a number of 0 or more, such as 30",
        )
    })
}

/// The store of the run `--run-id` names, which must have a run manifest:
/// a mistyped id would make the worker wait for units that never come.
async fn watched_run(run_id: &str, destination: &str) -> anyhow::Result<Arc<dyn ObjectStore>> {
    let store = backends::open_store(destination, "--destination").await?;
    if store.read(&layout::run_manifest(run_id)).await?.is_none() {
        return Err(ConfigError::new(
            "--run-id",
            format!("there is no run {run_id} in {destination}: it has no run manifest"),
            "give the run id the producer printed, and the --destination it wrote to",
        )
        .into());
    }
    Ok(store)
}

/// A dead-letter queue that is the work queue would take back each failed
/// message as new work, and fail it again, for ever.
fn dead_letter_is_work_queue(args: &WorkArgs, dead_letter: &str) -> ConfigError {
    let (flag, fix) = match &args.dead_letter_topic {
        Some(_) => (
            "--dead-letter-topic",
            "give a queue of its own, e.g. the subscription's file with #dead",
        ),
        None => (
            "--subscription",
            "name another queue in its dead_letter setting, e.g. dead_letter=dead",
        ),
    };
    ConfigError::new(
        flag,
        format!(
            "{dead_letter} is the work queue {} reads, so a failed message would come back as \
             work and fail again for ever",
            args.subscription
        ),
        fix,
    )
}

/// `fault` names a table that must be there: a typo would otherwise be a
/// fault set on nothing, or a fix that fixes nothing, both with exit 0.
fn require_table(path: &std::path::Path, source: &str, table: &str) -> anyhow::Result<()> {
    if !path.exists() {
        return Err(ConfigError::new(
            "--source",
            format!("{} does not exist", path.display()),
            "check the path; `bqdrain demo --dir DIR` makes DIR/warehouse.db",
        )
        .into());
    }
    let names = dataset::table_names(path)?;
    if names.iter().any(|n| n == table) {
        return Ok(());
    }
    Err(ConfigError::new(
        "--table",
        format!("{source} has no table {table:?}"),
        match names.len() {
            0 => "the dataset has no tables; `bqdrain demo` makes some".to_string(),
            1..=10 => format!("give one of: {}", names.join(", ")),
            n => format!("give one of: {}, … ({n} in all)", names[..10].join(", ")),
        },
    )
    .into())
}

#[derive(Serialize)]
struct WorkOutcome {
    #[serde(flatten)]
    report: DrainReport,
    task: String,
    peak_rss_bytes: Option<u64>,
}

async fn work(args: WorkArgs, started: Instant) -> anyhow::Result<ExitCode> {
    if args.idle_timeout == Some(0.0) {
        return Err(ConfigError::new(
            "--idle-timeout",
            "is 0, so the worker would stop before its first pull",
            "give a number of seconds above 0, such as 30, or leave the flag out (the ack \
             deadline plus 10 s)",
        )
        .into());
    }
    let watched = match (&args.run_id, &args.destination) {
        (Some(run_id), Some(destination)) => {
            Some((run_id, watched_run(run_id, destination).await?))
        }
        _ => None,
    };
    let receive = ReceiveSettings {
        max_outstanding: args.concurrency,
        max_lease: seconds("--task-timeout", args.task_timeout)?,
    };
    let subscription =
        backends::open_subscription(&args.subscription, "--subscription", &receive).await?;
    if pubsub::is_pubsub(&args.subscription) && subscription.max_delivery_attempts().is_none() {
        subscription.close().await?;
        return Err(ConfigError::new(
            "--subscription",
            format!(
                "{} has no dead-letter policy, so Pub/Sub counts no delivery attempts and a \
                 failing table would be redelivered until its message expires",
                args.subscription
            ),
            "give the subscription a dead-letter policy with a topic and max delivery attempts \
             (terraform/ does), e.g. `gcloud pubsub subscriptions update SUBSCRIPTION \
             --dead-letter-topic TOPIC --max-delivery-attempts 5`; --dead-letter-topic alone \
             does not do",
        )
        .into());
    }
    let dead_letter_uri = args.dead_letter_topic.clone().or_else(|| subscription.dead_letter_topic()).ok_or_else(|| {
        ConfigError::new(
            "--dead-letter-topic",
            format!("{} has no dead-letter policy and no topic was given", args.subscription),
            "pass --dead-letter-topic (or add dead_letter=NAME to a queue:// subscription), so failures are kept, not lost",
        )
    })?;
    if backends::same_topic(&dead_letter_uri, &subscription.topic()) {
        subscription.close().await?;
        return Err(dead_letter_is_work_queue(&args, &dead_letter_uri).into());
    }
    let dead_letter = backends::open_topic(&dead_letter_uri, "--dead-letter-topic").await?;
    let idle_timeout = match args.idle_timeout {
        Some(s) => seconds("--idle-timeout", s)?,
        None => subscription.ack_deadline() + Duration::from_secs(10),
    };
    let grace = seconds("--grace-period", args.grace_period)?;
    let retry = RetryPolicy {
        max_retries: args.max_retries,
        min_delay: seconds("--retry-delay", args.retry_delay)?,
        max_delay: seconds("--retry-max-delay", args.retry_max_delay)?,
    };
    let task = TaskIdentity::from_env();
    tracing::info!(%task, subscription = %args.subscription, concurrency = args.concurrency, idle_timeout_s = idle_timeout.as_secs_f64(), "worker started");
    let (trigger, shutdown) = shutdown::channel();
    let mut signal = shutdown::on_signals(trigger, grace);
    let heartbeat = seconds("--heartbeat", args.heartbeat)?;
    if heartbeat.is_zero() {
        return Err(ConfigError::new(
            "--heartbeat",
            "is 0",
            "give a number of seconds above 0, such as 60",
        )
        .into());
    }
    let handler = ExportHandler::new(retry, task.clone()).with_heartbeat(heartbeat);
    if let Some((run_id, store)) = watched {
        handler.watch(run_id, store);
    }
    let handler = Arc::new(handler);
    let config = DrainConfig {
        concurrency: args.concurrency,
        idle_timeout,
        started,
    };
    let report = drain(subscription, Some(dead_letter), handler, config, shutdown).await;
    tracing::info!(acked = report.acked, nacked = report.nacked, dead_lettered = report.dead_lettered, exit = ?report.exit, "worker done");
    let code = match report.exit {
        ExitReason::Signal => ExitCode::from(128 + signal.try_recv().unwrap_or(15) as u8),
        exit if exit.is_failure() => ExitCode::FAILURE,
        _ => ExitCode::SUCCESS,
    };
    if args.json {
        print_json(&WorkOutcome {
            report,
            task: task.to_string(),
            peak_rss_bytes: peak_rss_bytes(),
        });
    }
    Ok(code)
}

#[derive(Serialize)]
struct ReplayOutcome<'a> {
    #[serde(flatten)]
    report: &'a replay::ReplayReport,
    launches: &'a [LaunchReport],
}

async fn replay_dead_letters(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let launch_plan = args.launch.plan()?;
    let from = backends::open_subscription(&args.from, "--from", &ReceiveSettings::sweep()).await?;
    if backends::same_topic(&args.to, &from.topic()) {
        from.close().await?;
        return Err(ConfigError::new(
            "--to",
            format!(
                "{} is the topic --from {} receives from, so each replayed message would come \
                 back to be replayed again, for ever",
                args.to, args.from
            ),
            "give the work topic the workers pull from, e.g. queue://demo/queue.db#work",
        )
        .into());
    }
    let to = backends::open_existing_topic(&args.to, "--to").await?;
    let jobs = match &launch_plan {
        Some(plan) => Some(WorkerJobs::connect(&plan.endpoint).await?),
        None => None,
    };
    let filter = replay::ReplayFilter {
        run_id: args.run_id,
        table: args.table,
        dry_run: args.dry_run,
        max: args.max,
    };
    let report = replay::replay(from.as_ref(), to.as_ref(), &filter).await?;
    // Every run replayed to gets its workers, as the producer starts them.
    let mut launches = Vec::new();
    if let (Some(plan), Some(jobs)) = (&launch_plan, &jobs) {
        for (run_id, destination, units) in report.runs() {
            launches.push(launch::launch_workers(plan, jobs, &run_id, units, &destination).await);
        }
    }
    if args.json {
        print_json(&ReplayOutcome {
            report: &report,
            launches: &launches,
        });
    } else {
        let verb = if report.dry_run {
            "would replay"
        } else {
            "replayed"
        };
        for m in &report.messages {
            println!(
                "{verb} run={} table={} reason={}",
                m.run_id.as_deref().unwrap_or("?"),
                m.table.as_deref().unwrap_or("?"),
                m.reason.as_deref().unwrap_or("?")
            );
        }
        println!(
            "{} matched, {} replayed, {} left in the dead-letter queue",
            report.matched, report.replayed, report.left
        );
        for l in &launches {
            println!("{}", l.summary());
        }
    }
    let failed: Vec<String> = launches
        .iter()
        .filter(|l| l.status == LaunchStatus::Failed)
        .map(|l| {
            format!(
                "{}; start them by hand with: {}",
                l.reason.as_deref().unwrap_or("unknown error"),
                l.command.as_deref().unwrap_or("gcloud run jobs execute")
            )
        })
        .collect();
    if failed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        Err(anyhow::anyhow!(
            "the messages are back on {} but starting their workers failed: {}",
            args.to,
            failed.join("; ")
        ))
    }
}

async fn run(cli: Cli, started: Instant) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Work(args) => work(args, started).await,
        Command::Replay(args) => replay_dead_letters(args).await,
        Command::Status(args) => {
            let store = backends::open_store(&args.destination, "--destination").await?;
            if let Some(uri) = &args.reconcile {
                let dead =
                    backends::open_subscription(uri, "--reconcile", &ReceiveSettings::sweep())
                        .await?;
                reconcile::reconcile(dead.as_ref(), store.as_ref(), &args.run_id).await?;
            }
            let report = status::run_status(store.as_ref(), &args.run_id).await?;
            if let Some(path) = &args.html {
                let replay = ReplayTarget {
                    from: args.reconcile.unwrap_or(ReplayTarget::unknown().from),
                    ..ReplayTarget::unknown()
                };
                bqdrain::commands::report::write(&report, &replay, path)?;
            }
            print_report(args.json, &report, || report.render());
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify(args) => {
            let store = backends::open_store(&args.destination, "--destination").await?;
            let sources = backends::open_sources(&args.source, "--source").await?;
            let options = verify::VerifyOptions {
                include: args.include,
                deep: args.deep,
            };
            let report = verify::verify(store, &sources, &options).await?;
            print_report(args.json, &report, || report.render());
            Ok(exit_unless_wrong(report.ok))
        }
        Command::Demo(args) => {
            let opts = demo::DemoOptions {
                tables: args.tables,
                rows: args.rows,
                tasks: args.tasks,
                dir: args.dir,
                fail: args.fail,
                html: args.html,
                progress: !args.json,
                incremental: args.incremental,
                force: args.force,
            };
            let report = demo::run(&opts, &std::env::current_exe()?).await?;
            print_report(args.json, &report, || report.render());
            Ok(exit_unless_wrong(report.ok))
        }
        Command::Restore(args) => {
            let opts = restore::RestoreOptions {
                from: args.from,
                to: args.to,
                include: args.include,
                exclude: args.exclude,
                dataset_map: args.dataset_map,
                if_exists: args.if_exists,
                topic: args.topic,
                run_id: args.run_id,
                workers: args.workers,
                progress: !args.json,
            };
            let report = restore::run(&opts, &std::env::current_exe()?).await?;
            print_report(args.json, &report, || report.render());
            Ok(exit_unless_wrong(report.ok))
        }
        Command::Fault(args) => {
            let path = LocalWarehouse::path_of(&args.source, "--source")?;
            require_table(&path, &args.source, &args.table)?;
            let fault = match args.kind {
                FaultKind::Clear => None,
                FaultKind::Permanent => Some(Fault::Permanent),
                FaultKind::Transient => Some(Fault::Transient { times: args.times }),
                FaultKind::Slow => Some(Fault::Slow {
                    per_shard: Duration::from_millis(args.delay_ms),
                }),
            };
            match fault {
                None => dataset::clear_fault(&path, &args.table)?,
                Some(fault) => dataset::set_fault(&path, &args.table, fault)?,
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn main() -> ExitCode {
    let started = Instant::now();
    let cli: Cli = bqdrain::cli::parse();
    logging::init(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(2)
        .build()
    {
        Ok(rt) => rt,
        Err(err) => return fail(err.into()),
    };
    runtime.block_on(run(cli, started)).unwrap_or_else(fail)
}

/// Prints a command's report as JSON or as its text (rendered only then).
fn print_report<T: serde::Serialize>(as_json: bool, report: &T, text: impl FnOnce() -> String) {
    if as_json {
        print_json(report);
    } else {
        print!("{}", text());
    }
}

/// Exit 0 when a report found nothing wrong, 1 when it did.
fn exit_unless_wrong(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
