//! The engine: the producer, the drain and the export, written once
//! against the [ports](crate::ports), so they are the same code whatever the
//! adapters. It imports no command.
//!
//! - [`producer`] plans a run ([`selection`], [`limits`], [`holdable`],
//!   [`ownership`], [`trigger`]) and publishes one message per unit;
//! - [`drain`] pulls with bounded concurrency, keeps leases, and settles
//!   every message; [`shutdown`], [`retry`], [`heartbeat`] and [`task`]
//!   serve it;
//! - [`export`] turns one message into one committed export, laid out as
//!   [`layout`] says, with the table's [`definition`] beside it;
//! - [`runs`] reads a run's state from the store; [`dead_letter`] is the
//!   record of a unit given up on.

pub mod dead_letter;
pub mod definition;
pub mod drain;
pub mod export;
pub mod heartbeat;
pub mod holdable;
pub mod layout;
pub mod limits;
pub mod ownership;
pub mod producer;
pub mod restore;
pub mod retry;
pub mod runs;
pub mod selection;
pub mod shutdown;
pub mod task;
pub mod trigger;
