//! `bqdrain replay`: moves dead-lettered messages back to the work topic.
//!
//! Each matching message is republished and acked on the dead-letter
//! subscription only once the republish is confirmed, so a crash in between
//! duplicates a message (harmless: exports are idempotent) but never loses
//! one. Messages that do not match are held until the whole dead-letter
//! queue has been looked at, then given back untouched. Replay takes only
//! what the queue held when it began, so a target that feeds the dead-letter
//! queue again cannot make it loop.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::Serialize;

use crate::contract::message::{Envelope, WorkMessage, ATTR_RUN_ID, ATTR_TABLE};
use crate::engine::drain::{
    ATTR_DELIVERY_ATTEMPT, ATTR_ERROR_MESSAGE, ATTR_ERROR_REASON, ATTR_FAILED_AT, ATTR_SUBSCRIPTION,
};
use crate::engine::layout;
use crate::error::ConfigError;
use crate::ports::queue::{Delivery, Subscription, Sweep, Topic};

#[derive(Debug, Clone, Default)]
pub struct ReplayFilter {
    pub run_id: Option<String>,
    pub table: Option<String>,
    pub dry_run: bool,
    pub max: Option<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplayedMessage {
    pub run_id: Option<String>,
    pub table: Option<String>,
    pub reason: Option<String>,
    /// The export root the message names, where its run's workers look.
    pub destination: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplayReport {
    pub replayed: usize,
    pub matched: usize,
    pub left: usize,
    pub dry_run: bool,
    pub messages: Vec<ReplayedMessage>,
    /// Pulls made on the dead-letter subscription: none when it was known
    /// to be empty.
    pub pulls: usize,
    pub seconds: f64,
}

fn is_dead_letter_attribute(name: &str) -> bool {
    name.starts_with("CloudPubSubDeadLetter")
        || [
            ATTR_ERROR_REASON,
            ATTR_ERROR_MESSAGE,
            ATTR_DELIVERY_ATTEMPT,
            ATTR_FAILED_AT,
            ATTR_SUBSCRIPTION,
        ]
        .contains(&name)
}

fn matches(d: &Delivery, run_id: Option<&str>, table: Option<&glob::Pattern>) -> bool {
    run_id.is_none_or(|r| d.attributes.get(ATTR_RUN_ID).map(String::as_str) == Some(r))
        && table.is_none_or(|p| d.attributes.get(ATTR_TABLE).is_some_and(|t| p.matches(t)))
}

impl ReplayReport {
    /// The runs replayed to, with their export root and how many messages
    /// each got back: what `--launch-workers` starts workers for.
    pub fn runs(&self) -> Vec<(String, String, usize)> {
        let mut runs: BTreeMap<(String, String), usize> = BTreeMap::new();
        if !self.dry_run {
            for m in &self.messages {
                if let (Some(run), Some(dest)) = (&m.run_id, &m.destination) {
                    *runs.entry((run.clone(), dest.clone())).or_default() += 1;
                }
            }
        }
        runs.into_iter().map(|((r, d), n)| (r, d, n)).collect()
    }
}

pub async fn replay(
    from: &dyn Subscription,
    to: &dyn Topic,
    filter: &ReplayFilter,
) -> anyhow::Result<ReplayReport> {
    let started = Instant::now();
    // What the queue held when replay began: a message published since
    // (one replayed to a topic that feeds `from` again) is left alone.
    let began = chrono::Utc::now();
    let table = filter
        .table
        .as_deref()
        .map(|g| {
            glob::Pattern::new(g).map_err(|e| {
                ConfigError::new(
                    "--table",
                    format!("{g:?} is not a glob: {e}"),
                    "use *, ? and [abc]",
                )
            })
        })
        .transpose()?;
    let max = filter.max.unwrap_or(usize::MAX);
    let mut sweep = Sweep::new(from);
    let mut held = Vec::new();
    let mut report = ReplayReport {
        replayed: 0,
        matched: 0,
        left: 0,
        dry_run: filter.dry_run,
        messages: Vec::new(),
        pulls: 0,
        seconds: 0.0,
    };

    'sweeping: while report.matched < max {
        let Some(batch) = sweep.next().await? else {
            break;
        };
        for d in batch {
            let arrived_since = d.published_at.is_some_and(|t| t > began);
            if arrived_since
                || report.matched >= max
                || !matches(&d, filter.run_id.as_deref(), table.as_ref())
            {
                held.push(d);
                continue;
            }
            report.matched += 1;
            report.messages.push(ReplayedMessage {
                run_id: d.attributes.get(ATTR_RUN_ID).cloned(),
                table: d.attributes.get(ATTR_TABLE).cloned(),
                reason: d.attributes.get(ATTR_ERROR_REASON).cloned(),
                destination: WorkMessage::decode(&d.data).ok().map(|m| m.destination),
            });
            if filter.dry_run {
                held.push(d);
                continue;
            }
            let attributes: BTreeMap<String, String> = d
                .attributes
                .iter()
                .filter(|(k, _)| !is_dead_letter_attribute(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if let Err(err) = to
                .publish(vec![Envelope {
                    data: d.data.clone(),
                    attributes,
                }])
                .await
            {
                held.push(d);
                let _ = sweep.release(held).await;
                return Err(err.context("republishing to the work topic"));
            }
            forget_dead_record(&d).await;
            from.ack(std::slice::from_ref(&d.ack_id)).await?;
            report.replayed += 1;
            if report.matched >= max {
                break 'sweeping;
            }
        }
    }
    report.left = sweep.seen() - report.replayed;
    report.pulls = sweep.pulls();
    sweep.release(held).await?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Removes the unit's dead-letter record, so `status` shows it pending again.
async fn forget_dead_record(d: &Delivery) {
    let Ok(msg) = WorkMessage::decode(&d.data) else {
        return;
    };
    let Ok(store) = crate::adapters::backends::open_store(&msg.destination, "destination").await
    else {
        return;
    };
    if let Err(err) = store
        .delete(&layout::dead_record(&msg.run_id, &msg.unit()))
        .await
    {
        tracing::warn!(error = %format!("{err:#}"), "cannot remove the dead-letter record");
    }
}
