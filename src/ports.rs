//! The three ports the engine is written against.

pub mod definition;
pub mod queue;
pub mod store;
pub mod warehouse;
