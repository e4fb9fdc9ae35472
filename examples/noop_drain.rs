//! Drains a subscription with a handler that acks every message at once, so
//! the time measured is the queue and the drain loop alone, with no export.
//!
//! ```text
//! cargo run --release --example noop_drain -- \
//!     --subscription 'queue:///tmp/q.db#work' --concurrency 16 --expect 20000
//! cargo run --release --example noop_drain -- \
//!     --subscription pubsub://projects/P/subscriptions/S --concurrency 10 --expect 2000
//! ```
//!
//! Prints one JSON line, `{"acked":N,"seconds":S,...}`, where `seconds` is
//! the drain loop's own time and `first_ack_after_start_s` runs from process
//! start. Without `--expect` the loop can only stop on the idle timeout,
//! which is then part of `seconds`.

use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Parser)]
#[command(about = "Ack every message of a subscription without doing any work")]
struct Args {
    /// Subscription to drain, e.g. queue:///tmp/q.db#work.
    #[arg(long)]
    subscription: String,
    /// Messages handled at once.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Stop as soon as this many messages were acked, instead of on idleness.
    #[arg(long)]
    expect: Option<u64>,
    /// Stop after this many seconds with nothing received and nothing held.
    #[arg(long, default_value_t = 5.0)]
    idle_timeout: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let started = Instant::now();
    let args = Args::parse();
    let report = bqdrain::adapters::noop::drain_noop(
        &args.subscription,
        args.concurrency,
        args.expect,
        Duration::try_from_secs_f64(args.idle_timeout)?,
        started,
    )
    .await?;
    println!(
        "{}",
        serde_json::json!({
            "acked": report.acked,
            "seconds": report.seconds,
            "first_ack_after_start_s": report.first_ack_after_start_s,
            "peak_rss_bytes": bqdrain::cli::peak_rss_bytes(),
        })
    );
    Ok(())
}
