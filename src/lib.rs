//! bqdrain: export warehouse tables to object storage through a work queue.
//!
//! The core is ports and adapters. The ports are [`queue`] (topics and
//! subscriptions), [`warehouse`] (list tables, export one) and [`store`]
//! (objects by key); [`local`] holds the embedded adapters that need no
//! service, [`gcp`] the Pub/Sub, BigQuery and Cloud Storage ones, and
//! [`backends`] opens any adapter from its URI.
//!
//! The engine is written once against the ports: [`producer`] publishes one
//! [`message`] per table, [`drain`] pulls with bounded concurrency, leases and
//! graceful [`shutdown`], [`export`] turns one message into one committed
//! export laid out as [`layout`] says, and [`replay`], [`status`] and [`demo`]
//! are the operator's commands; [`report`] draws a run as one HTML page. [`launch`] starts the worker Cloud Run job
//! for a published run, with a task count that follows its units.

pub mod backends;
pub mod cli;
pub mod demo;
pub mod drain;
pub mod error;
pub mod export;
pub mod gcp;
pub mod launch;
pub mod layout;
pub mod local;
pub mod logging;
pub mod message;
pub mod noop;
pub mod producer;
pub mod queue;
pub mod reconcile;
pub mod replay;
pub mod report;
pub mod retry;
pub mod runs;
pub mod shutdown;
pub mod status;
pub mod store;
pub mod task;
pub mod warehouse;
