//! The three ports the engine is written against.

pub mod queue;
pub mod store;
pub mod warehouse;
