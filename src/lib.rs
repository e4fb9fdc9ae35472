//! bqdrain: export warehouse tables to object storage through a work queue.
//!
//! The core is ports and adapters, and the tree follows it:
//! - [`contract`]: the work message and its export options, which ports and
//!   engine share;
//! - [`ports`]: the work queue (topics and subscriptions), the warehouse
//!   (list tables, export one) and the object store (objects by key);
//! - [`engine`], written once against the ports: the producer publishes one
//!   message per unit, the drain pulls with bounded concurrency, leases and
//!   graceful shutdown, the export turns one message into one committed
//!   export laid out as the layout says, and the run state says when a run
//!   is complete;
//! - [`adapters`]: the embedded ones that need no service (SQLite, files),
//!   the Google Cloud ones (Pub/Sub, BigQuery, Cloud Storage, Cloud Run),
//!   and opening any of them from its URI;
//! - [`commands`]: what operators run besides the two jobs: status, the run
//!   report, replay, reconcile, verify, the demo, and launching the worker
//!   job.
//!
//! [`cli`], [`error`] and [`logging`] are what the binaries share.

pub mod adapters;
pub mod cli;
pub mod commands;
pub mod contract;
pub mod engine;
pub mod error;
pub mod logging;
pub mod ports;
