//! The engine: the same code whatever the adapters.

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
