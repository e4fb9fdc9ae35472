//! Drains a subscription with a handler that acks every message at once, so
//! the time measured is the queue and the drain loop alone, with no export.
//!
//! ```text
//! cargo run --release --example noop_drain -- \
//!     --subscription 'queue:///tmp/q.db#work' --concurrency 16 --expect 20000
//! ```
//!
//! Prints one JSON line, `{"acked":N,"seconds":S}`, where `seconds` is the
//! drain loop's own time. Without `--expect` the loop can only stop on the
//! idle timeout, which is then part of `seconds`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;

use bqdrain::drain::{drain, DrainConfig};
use bqdrain::noop::AckEverything;

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
    let args = Args::parse();
    let receive = bqdrain::queue::ReceiveSettings::new(args.concurrency);
    let subscription =
        bqdrain::backends::open_subscription(&args.subscription, "--subscription", &receive)
            .await?;
    let handler = Arc::new(AckEverything::new(args.expect));
    let config = DrainConfig {
        concurrency: args.concurrency,
        idle_timeout: Duration::try_from_secs_f64(args.idle_timeout)?,
        started: Instant::now(),
    };
    // Nothing here shuts down early; the trigger is held for the whole drain
    // so that stays explicit rather than resting on how a closed channel acts.
    let (_trigger, shutdown) = bqdrain::shutdown::channel();
    let report = drain(subscription, None, handler, config, shutdown).await;
    println!(
        "{}",
        serde_json::json!({"acked": report.acked, "seconds": report.seconds})
    );
    Ok(())
}
