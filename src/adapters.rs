//! The ports' implementations, and opening them from URIs.

pub mod backends;
pub mod gcp;
pub mod local;
pub mod noop;
