//! A durable SQLite work queue with Pub/Sub semantics, safe for several
//! processes at once (WAL, immediate transactions, a busy timeout).
//!
//! URI: `queue://PATH?ack_deadline=SECONDS&max_attempts=N&dead_letter=NAME&min_backoff=SECONDS&max_backoff=SECONDS#NAME`.
//! One database file holds any number of named queues; a queue is both the
//! topic and its single subscription. The query sets the subscription's
//! policy, as Pub/Sub keeps it on the subscription: every worker of a queue
//! must pass the same one.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::{absolute, now_millis, sqlite_file, LocalUri};
use crate::contract::message::Envelope;
use crate::error::ConfigError;
use crate::ports::queue::{Delivery, ReceiveSettings, Subscription, Topic};

const SCHEME: &str = "queue";
const DEFAULT_ACK_DEADLINE: Duration = Duration::from_secs(10);
const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// How often an empty queue is looked at again while a pull waits.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    data BLOB NOT NULL,
    attributes TEXT NOT NULL,
    published_at TEXT NOT NULL,
    delivery_attempt INTEGER NOT NULL DEFAULT 0,
    -- unix milliseconds before which the message is leased out
    visible_at INTEGER NOT NULL DEFAULT 0,
    -- the current lease; an ack or nack must name it to count
    lease INTEGER NOT NULL DEFAULT 0
);
-- delivery order: pulls walk a queue by id, skipping leased messages
CREATE INDEX IF NOT EXISTS messages_order ON messages(queue, id);
-- leased or redelivered messages, for the dead-letter policy
CREATE INDEX IF NOT EXISTS messages_ready ON messages(queue, visible_at, id);
";

/// A parsed `queue://` URI.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueUri {
    pub path: PathBuf,
    pub name: String,
    pub ack_deadline: Duration,
    pub max_attempts: u32,
    /// The queue (in the same file) that the dead-letter policy forwards to.
    pub dead_letter: Option<String>,
    /// The retry policy, as Pub/Sub's: a nacked message stays away for
    /// `min_backoff` doubled per earlier delivery, at most `max_backoff`.
    /// `None` (no policy) redelivers it at once.
    pub backoff: Option<Backoff>,
}

/// A subscription's retry policy: how long a nacked message is held back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
}

impl Backoff {
    /// Pub/Sub's defaults for a setting left out of a policy.
    const DEFAULT_MIN: Duration = Duration::from_secs(10);
    const DEFAULT_MAX: Duration = Duration::from_secs(600);

    /// The delay after the `attempt`th delivery was nacked.
    pub fn after(&self, attempt: u32) -> Duration {
        let doubled = self
            .min
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        doubled.min(self.max)
    }
}

impl QueueUri {
    pub fn is_local(uri: &str) -> bool {
        uri.starts_with("queue://")
    }

    pub fn parse(uri: &str, flag: &str) -> Result<QueueUri, ConfigError> {
        let fix = "write it as queue://PATH#NAME, e.g. queue://demo/queue.db#work";
        let parsed = LocalUri::parse(uri, SCHEME)
            .ok_or_else(|| ConfigError::new(flag, format!("{uri:?} is not a queue:// URI"), fix))?;
        let name = parsed.fragment.filter(|n| !n.is_empty()).ok_or_else(|| {
            ConfigError::new(flag, format!("{uri:?} names no queue after '#'"), fix)
        })?;
        if name.contains(['?', '&', '=']) {
            return Err(ConfigError::new(
                flag,
                format!("{uri:?} has settings after the queue's name; they go before '#'"),
                "write it as queue://PATH?SETTINGS#NAME, e.g. queue://demo/queue.db?dead_letter=dead#work",
            ));
        }
        let mut out = QueueUri {
            path: absolute(&parsed.path),
            name,
            ack_deadline: DEFAULT_ACK_DEADLINE,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            dead_letter: None,
            backoff: None,
        };
        let (mut min_backoff, mut max_backoff) = (None, None);
        for (key, value) in parsed.query {
            let bad = |what: &str| {
                ConfigError::new(
                    flag,
                    format!("{key}={value:?} in {uri:?} {what}"),
                    fix_query(),
                )
            };
            match key.as_str() {
                "ack_deadline" => {
                    let secs: u64 = value
                        .parse()
                        .map_err(|_| bad("is not a whole number of seconds"))?;
                    if !(1..=600).contains(&secs) {
                        return Err(bad("is outside 1..=600 seconds (Pub/Sub's range)"));
                    }
                    out.ack_deadline = Duration::from_secs(secs);
                }
                "max_attempts" => {
                    let n: u32 = value.parse().map_err(|_| bad("is not a whole number"))?;
                    if n < 1 {
                        return Err(bad("must be at least 1"));
                    }
                    out.max_attempts = n;
                }
                "dead_letter" if !value.is_empty() => out.dead_letter = Some(value),
                "min_backoff" | "max_backoff" => {
                    let secs: u64 = value
                        .parse()
                        .map_err(|_| bad("is not a whole number of seconds"))?;
                    if secs > 600 {
                        return Err(bad("is above 600 seconds (Pub/Sub's limit)"));
                    }
                    let slot = if key == "min_backoff" {
                        &mut min_backoff
                    } else {
                        &mut max_backoff
                    };
                    *slot = Some(Duration::from_secs(secs));
                }
                _ => return Err(bad("is not a known setting")),
            }
        }
        if min_backoff.is_some() || max_backoff.is_some() {
            let backoff = Backoff {
                min: min_backoff.unwrap_or(Backoff::DEFAULT_MIN),
                max: max_backoff.unwrap_or(Backoff::DEFAULT_MAX),
            };
            if backoff.min > backoff.max {
                return Err(ConfigError::new(
                    flag,
                    format!("min_backoff is above max_backoff in {uri:?}"),
                    "make min_backoff at most max_backoff",
                ));
            }
            out.backoff = Some(backoff);
        }
        Ok(out)
    }

    /// The URI of another queue in the same file.
    pub fn sibling(&self, name: &str) -> String {
        format!("queue://{}#{}", self.path.display(), name)
    }

    /// Refuses a queue file that is not there: only the producer makes one,
    /// so a missing file is a mistyped path, which must not become a new,
    /// empty queue that a worker or replay then finds idle.
    pub fn require_file(&self, flag: &str) -> Result<(), ConfigError> {
        if self.path.exists() {
            return Ok(());
        }
        Err(ConfigError::new(
            flag,
            format!("queue file {} does not exist", self.path.display()),
            "check the path (the producer's --topic names it); only bqdrain-producer makes a \
             queue file, so run it first",
        ))
    }
}

fn fix_query() -> &'static str {
    "settings are ack_deadline=SECONDS (1-600), max_attempts=N, dead_letter=QUEUE, \
     min_backoff=SECONDS and max_backoff=SECONDS (0-600)"
}

/// One open queue database, shared by the topics and subscriptions in it.
pub struct QueueDb {
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl QueueDb {
    pub fn open(path: &Path) -> anyhow::Result<Arc<QueueDb>> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let conn =
            Connection::open(path).with_context(|| format!("opening queue {}", path.display()))?;
        conn.busy_timeout(Duration::from_secs(30))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // WAL with NORMAL survives any process crash; only a power loss can
        // take back the last commits.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(SCHEMA)?;
        Ok(Arc::new(QueueDb {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
        }))
    }

    async fn run<T, F>(self: &Arc<Self>, f: F) -> anyhow::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> anyhow::Result<T> + Send + 'static,
    {
        let db = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let mut conn = db.conn.lock().expect("queue connection lock poisoned");
            f(&mut conn).with_context(|| format!("queue database {}", db.path.display()))
        })
        .await?
    }

    /// Messages in a queue, leased or not.
    pub async fn depth(self: &Arc<Self>, queue: &str) -> anyhow::Result<u64> {
        let queue = queue.to_string();
        self.run(move |c| {
            Ok(c.query_row(
                "SELECT count(*) FROM messages WHERE queue = ?1",
                [queue],
                |r| r.get(0),
            )?)
        })
        .await
    }
}

/// Refuses a queue file that is not only a queue's: a warehouse given as
/// the queue would get the queue's tables inside it, and publish its own
/// `messages` table as a unit; any other database would be written into.
fn refuse_foreign_file(q: &QueueUri, flag: &str) -> Result<(), ConfigError> {
    let Some(tables) = sqlite_file::tables(&q.path, flag)? else {
        return Ok(());
    };
    let foreign: Vec<&str> = tables
        .iter()
        .map(String::as_str)
        .filter(|t| *t != "messages")
        .collect();
    if foreign.is_empty() {
        return Ok(());
    }
    Err(ConfigError::new(
        flag,
        format!(
            "{} holds tables that are not a queue's ({}): it is a dataset or another database",
            q.path.display(),
            foreign.join(", ")
        ),
        "give the queue a file of its own, e.g. queue://demo/queue.db#work",
    ))
}

/// Refuses a queue URI whose file is one of the run's sources (`sqlite://`
/// URIs), before anything is written to either.
pub fn refuse_source_as_queue(uri: &str, flag: &str, sources: &[&str]) -> Result<(), ConfigError> {
    let q = QueueUri::parse(uri, flag)?;
    let source = sources.iter().find(|source| {
        LocalUri::parse(source, "sqlite").is_some_and(|s| absolute(&s.path) == q.path)
    });
    match source {
        Some(source) => Err(ConfigError::new(
            flag,
            format!("{} is a source of this run ({source})", q.path.display()),
            "give the queue a file of its own, e.g. queue://demo/queue.db#work",
        )),
        None => Ok(()),
    }
}

pub struct LocalTopic {
    uri: String,
    db: Arc<QueueDb>,
    name: String,
}

impl LocalTopic {
    pub fn open(uri: &str, flag: &str) -> anyhow::Result<LocalTopic> {
        let q = QueueUri::parse(uri, flag)?;
        refuse_foreign_file(&q, flag)?;
        Ok(LocalTopic {
            uri: q.sibling(&q.name),
            db: QueueDb::open(&q.path)?,
            name: q.name,
        })
    }
}

#[async_trait]
impl Topic for LocalTopic {
    fn uri(&self) -> &str {
        &self.uri
    }

    async fn publish(&self, messages: Vec<Envelope>) -> anyhow::Result<Vec<String>> {
        let name = self.name.clone();
        self.db
            .run(move |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let now = chrono::Utc::now().to_rfc3339();
                let mut ids = Vec::with_capacity(messages.len());
                {
                    let mut insert = tx.prepare_cached(
                        "INSERT INTO messages (queue, data, attributes, published_at) VALUES (?1, ?2, ?3, ?4)",
                    )?;
                    for m in messages {
                        insert.execute(params![name, m.data, serde_json::to_string(&m.attributes)?, now])?;
                        ids.push(tx.last_insert_rowid().to_string());
                    }
                }
                tx.commit()?;
                Ok(ids)
            })
            .await
    }
}

pub struct LocalSubscription {
    uri: String,
    db: Arc<QueueDb>,
    settings: QueueUri,
    /// Flow control, as the Pub/Sub client's: at most this many leases
    /// handed out and not yet acked or nacked.
    max_outstanding: usize,
    outstanding: Mutex<HashSet<String>>,
}

impl LocalSubscription {
    pub fn open(
        uri: &str,
        flag: &str,
        receive: &ReceiveSettings,
    ) -> anyhow::Result<LocalSubscription> {
        let settings = QueueUri::parse(uri, flag)?;
        settings.require_file(flag)?;
        refuse_foreign_file(&settings, flag)?;
        Ok(LocalSubscription {
            uri: uri.to_string(),
            db: QueueDb::open(&settings.path)?,
            settings,
            max_outstanding: receive.max_outstanding.max(1),
            outstanding: Mutex::new(HashSet::new()),
        })
    }

    fn outstanding(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.outstanding.lock().expect("flow control lock poisoned")
    }

    /// Messages left in this queue, leased or not.
    pub async fn depth(&self) -> anyhow::Result<u64> {
        self.db.depth(&self.settings.name).await
    }
}

/// Leases up to `max` ready messages in one transaction, applying the
/// dead-letter policy first.
fn pull_now(s: &QueueUri, conn: &mut Connection, max: usize) -> anyhow::Result<Vec<Delivery>> {
    let now = now_millis();
    let ready: bool = conn
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM messages WHERE queue = ?1 AND visible_at <= ?2)",
        )?
        .query_row(params![s.name, now], |r| r.get(0))?;
    if !ready {
        return Ok(Vec::new());
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    if let Some(dead) = &s.dead_letter {
        // The subscription's dead-letter policy: a message whose last
        // allowed lease lapsed (its worker crashed or stalled) leaves.
        // Never-delivered messages (visible_at 0) are skipped cheaply.
        tx.prepare_cached(
                "UPDATE messages SET queue = ?3, delivery_attempt = 0, visible_at = 0, lease = 0,
                    attributes = json_set(attributes,
                        '$.CloudPubSubDeadLetterSourceDeliveryCount', CAST(delivery_attempt AS TEXT),
                        '$.bqdrain_error_reason', 'maxDeliveryAttempts',
                        '$.bqdrain_error_message', 'delivered ' || delivery_attempt || ' times without an ack')
                 WHERE queue = ?1 AND visible_at BETWEEN 1 AND ?2 AND delivery_attempt >= ?4",
            )?
            .execute(params![s.name, now, dead, s.max_attempts])?;
    }
    let lease = fastrand::i64(1..i64::MAX);
    let visible_at = now + s.ack_deadline.as_millis() as i64;
    let mut deliveries = {
        let mut stmt = tx.prepare_cached(
                "UPDATE messages SET delivery_attempt = delivery_attempt + 1, visible_at = ?3, lease = ?4
                 WHERE id IN (SELECT id FROM messages WHERE queue = ?1 AND +visible_at <= ?2 ORDER BY id LIMIT ?5)
                 RETURNING id, data, attributes, published_at, delivery_attempt",
            )?;
        let rows = stmt.query_map(params![s.name, now, visible_at, lease, max as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, u32>(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, data, attributes, published_at, attempt) = row?;
            out.push(Delivery {
                ack_id: format!("{id}:{lease}"),
                message_id: id.to_string(),
                data,
                attributes: serde_json::from_str(&attributes)?,
                delivery_attempt: attempt,
                published_at: chrono::DateTime::parse_from_rfc3339(&published_at)
                    .ok()
                    .map(|t| t.to_utc()),
            });
        }
        out
    };
    tx.commit()?;
    deliveries.sort_by_key(|d| d.message_id.parse::<i64>().unwrap_or(0));
    Ok(deliveries)
}

fn split_ack_id(ack_id: &str) -> anyhow::Result<(i64, i64)> {
    let (id, lease) = ack_id.split_once(':').context("malformed ack id")?;
    Ok((id.parse()?, lease.parse()?))
}

#[async_trait]
impl Subscription for LocalSubscription {
    fn uri(&self) -> &str {
        &self.uri
    }

    fn ack_deadline(&self) -> Duration {
        self.settings.ack_deadline
    }

    fn max_delivery_attempts(&self) -> Option<u32> {
        self.settings
            .dead_letter
            .as_ref()
            .map(|_| self.settings.max_attempts)
    }

    fn dead_letter_topic(&self) -> Option<String> {
        self.settings
            .dead_letter
            .as_ref()
            .map(|d| self.settings.sibling(d))
    }

    fn max_backoff(&self) -> Duration {
        self.settings.backoff.map_or(Duration::ZERO, |b| b.max)
    }

    fn topic(&self) -> String {
        self.settings.sibling(&self.settings.name)
    }

    async fn depth_if_known(&self) -> anyhow::Result<Option<u64>> {
        Ok(Some(self.depth().await?))
    }

    async fn pull(&self, max: usize, wait: Duration) -> anyhow::Result<Vec<Delivery>> {
        let deadline = Instant::now() + wait;
        loop {
            let room = max.min(
                self.max_outstanding
                    .saturating_sub(self.outstanding().len()),
            );
            let batch = if room == 0 {
                Vec::new()
            } else {
                let settings = self.settings.clone();
                self.db.run(move |c| pull_now(&settings, c, room)).await?
            };
            self.outstanding()
                .extend(batch.iter().map(|d| d.ack_id.clone()));
            if !batch.is_empty() || Instant::now() >= deadline {
                return Ok(batch);
            }
            tokio::time::sleep(
                POLL_INTERVAL.min(deadline.saturating_duration_since(Instant::now())),
            )
            .await;
        }
    }

    async fn ack(&self, ack_ids: &[String]) -> anyhow::Result<()> {
        {
            let mut outstanding = self.outstanding();
            ack_ids.iter().for_each(|a| {
                outstanding.remove(a);
            });
        }
        let ids = ack_ids
            .iter()
            .map(|a| split_ack_id(a))
            .collect::<anyhow::Result<Vec<_>>>()?;
        self.db
            .run(move |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                {
                    let mut delete =
                        tx.prepare_cached("DELETE FROM messages WHERE id = ?1 AND lease = ?2")?;
                    for (id, lease) in ids {
                        delete.execute(params![id, lease])?;
                    }
                }
                tx.commit()?;
                Ok(())
            })
            .await
    }

    /// Redelivers at once, or after the retry policy's backoff.
    async fn nack(&self, ack_id: &str) -> anyhow::Result<()> {
        self.outstanding().remove(ack_id);
        let backoff = self.settings.backoff;
        self.set_visible_in(ack_id, move |attempt| {
            backoff.map_or(Duration::ZERO, |b| b.after(attempt))
        })
        .await
    }

    async fn extend_lease(&self, ack_id: &str, by: Duration) -> anyhow::Result<()> {
        self.set_visible_in(ack_id, move |_| by).await
    }
}

impl LocalSubscription {
    /// Leases the message out for `delay(its delivery attempt)` from now.
    async fn set_visible_in(
        &self,
        ack_id: &str,
        delay: impl FnOnce(u32) -> Duration + Send + 'static,
    ) -> anyhow::Result<()> {
        let (id, lease) = split_ack_id(ack_id)?;
        self.db
            .run(move |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let attempt: Option<u32> = tx
                    .query_row(
                        "SELECT delivery_attempt FROM messages WHERE id = ?1 AND lease = ?2",
                        params![id, lease],
                        |r| r.get(0),
                    )
                    .optional()?;
                if let Some(attempt) = attempt {
                    let visible_at = now_millis() + delay(attempt).as_millis() as i64;
                    tx.execute(
                        "UPDATE messages SET visible_at = ?3 WHERE id = ?1 AND lease = ?2",
                        params![id, lease, visible_at],
                    )?;
                }
                tx.commit()?;
                Ok(())
            })
            .await
    }
}

/// Reads a queue's messages without leasing them: for tests and status.
pub async fn peek(uri: &str) -> anyhow::Result<Vec<Envelope>> {
    let q = QueueUri::parse(uri, "queue")?;
    let db = QueueDb::open(&q.path)?;
    db.run(move |c| {
        let mut stmt =
            c.prepare("SELECT data, attributes FROM messages WHERE queue = ?1 ORDER BY id")?;
        let rows = stmt.query_map([q.name], |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, String>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (data, attributes) = row?;
            out.push(Envelope {
                data,
                attributes: serde_json::from_str(&attributes)?,
            });
        }
        Ok(out)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn envelope(body: &str) -> Envelope {
        Envelope {
            data: body.as_bytes().to_vec(),
            attributes: BTreeMap::from([("k".into(), "v".into())]),
        }
    }

    fn open(dir: &Path, query: &str) -> (LocalTopic, LocalSubscription) {
        let base = format!("queue://{}", dir.join("q.db").display());
        (
            LocalTopic::open(&format!("{base}#work"), "t").unwrap(),
            LocalSubscription::open(
                &format!("{base}?{query}#work"),
                "s",
                &ReceiveSettings::new(10),
            )
            .unwrap(),
        )
    }

    const NOW: Duration = Duration::ZERO;

    #[tokio::test]
    async fn leases_lapse_and_redeliver_with_a_rising_attempt() {
        let dir = tempfile::tempdir().unwrap();
        let (topic, sub) = open(dir.path(), "ack_deadline=1");
        topic
            .publish(vec![envelope("a"), envelope("b")])
            .await
            .unwrap();
        let first = sub.pull(10, NOW).await.unwrap();
        assert_eq!(first.len(), 2);
        assert_eq!(first[0].data, b"a");
        assert_eq!(first[0].attributes["k"], "v");
        assert_eq!(first[0].delivery_attempt, 1);
        assert!(
            sub.pull(10, NOW).await.unwrap().is_empty(),
            "leased messages are not handed out twice"
        );

        sub.extend_lease(&first[1].ack_id, Duration::from_secs(30))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let again = sub.pull(10, NOW).await.unwrap();
        assert_eq!(
            again.len(),
            1,
            "only the lease that was not extended lapsed"
        );
        assert_eq!(
            (again[0].data.as_slice(), again[0].delivery_attempt),
            (&b"a"[..], 2)
        );

        sub.ack(std::slice::from_ref(&first[0].ack_id))
            .await
            .unwrap();
        assert_eq!(
            sub.depth().await.unwrap(),
            2,
            "an ack under a lapsed lease is ignored"
        );
        sub.ack(&[again[0].ack_id.clone(), first[1].ack_id.clone()])
            .await
            .unwrap();
        assert_eq!(sub.depth().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn nack_redelivers_now_and_the_policy_dead_letters_after_max_attempts() {
        let dir = tempfile::tempdir().unwrap();
        let (topic, sub) = open(dir.path(), "max_attempts=2&dead_letter=dead");
        assert_eq!(sub.max_delivery_attempts(), Some(2));
        assert!(sub.dead_letter_topic().unwrap().ends_with("q.db#dead"));
        topic.publish(vec![envelope("x")]).await.unwrap();
        for attempt in 1..=2 {
            let d = sub.pull(1, NOW).await.unwrap().remove(0);
            assert_eq!(d.delivery_attempt, attempt);
            sub.nack(&d.ack_id).await.unwrap();
        }
        assert!(
            sub.pull(1, NOW).await.unwrap().is_empty(),
            "moved away after its last attempt"
        );
        let dead = peek(&sub.dead_letter_topic().unwrap()).await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].data, b"x");
        assert_eq!(
            dead[0].attributes["bqdrain_error_reason"],
            "maxDeliveryAttempts"
        );
        assert_eq!(
            dead[0].attributes["CloudPubSubDeadLetterSourceDeliveryCount"],
            "2"
        );
    }

    #[tokio::test]
    async fn a_retry_policy_holds_a_nacked_message_back_exponentially() {
        let dir = tempfile::tempdir().unwrap();
        let (topic, sub) = open(dir.path(), "min_backoff=1&max_backoff=2");
        assert_eq!(sub.max_backoff(), Duration::from_secs(2));
        topic.publish(vec![envelope("x")]).await.unwrap();
        let mut d = sub.pull(1, NOW).await.unwrap().remove(0);
        // The delay after the nth delivery: 1 s, then doubled, at most 2 s.
        for (attempt, held) in [(1, 1000), (2, 2000), (3, 2000)] {
            assert_eq!(d.delivery_attempt, attempt);
            sub.nack(&d.ack_id).await.unwrap();
            let nacked = Instant::now();
            d = sub.pull(1, Duration::from_secs(5)).await.unwrap().remove(0);
            let waited = nacked.elapsed();
            assert!(
                waited >= Duration::from_millis(held - 50)
                    && waited < Duration::from_millis(held + 900),
                "attempt {attempt}: back after {waited:?}, backoff {held} ms"
            );
        }
        let (_, plain) = open(dir.path(), "");
        assert_eq!(plain.max_backoff(), Duration::ZERO, "no policy: at once");
    }

    #[tokio::test]
    async fn flow_control_caps_the_leases_held() {
        let dir = tempfile::tempdir().unwrap();
        let (topic, sub) = open(dir.path(), "");
        let many: Vec<Envelope> = (0..15).map(|i| envelope(&i.to_string())).collect();
        topic.publish(many).await.unwrap();
        let first = sub.pull(100, NOW).await.unwrap();
        assert_eq!(first.len(), 10, "at most 10 held");
        assert!(sub.pull(100, NOW).await.unwrap().is_empty());
        sub.ack(&[first[0].ack_id.clone()]).await.unwrap();
        sub.nack(&first[1].ack_id).await.unwrap();
        assert_eq!(sub.pull(100, NOW).await.unwrap().len(), 2, "room for two");
    }

    #[tokio::test]
    async fn a_pull_waits_for_messages_published_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let (topic, sub) = open(dir.path(), "");
        let publisher = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            topic.publish(vec![envelope("late")]).await.unwrap();
        });
        let got = sub.pull(5, Duration::from_secs(5)).await.unwrap();
        assert_eq!(got.len(), 1);
        publisher.await.unwrap();
    }

    #[test]
    fn settings_are_checked() {
        for bad in [
            "queue://q.db",
            "queue://q.db?ack_deadline=0#w",
            "queue://q.db?bogus=1#w",
            "queue://q.db?max_backoff=601#w",
            "queue://q.db?min_backoff=20&max_backoff=10#w",
            "file://q.db#w",
        ] {
            assert!(QueueUri::parse(bad, "--subscription").is_err(), "{bad}");
        }
        let q = QueueUri::parse(
            "queue:///tmp/q.db?ack_deadline=30&max_attempts=7&dead_letter=d#w",
            "s",
        )
        .unwrap();
        assert_eq!(
            (q.ack_deadline, q.max_attempts, q.dead_letter.as_deref()),
            (Duration::from_secs(30), 7, Some("d"))
        );
    }
}
