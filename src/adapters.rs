//! The ports' implementations, and opening them from URIs: the embedded
//! ones that need no service ([`local`]: SQLite, files), the Google Cloud
//! ones ([`gcp`]), a handler that does nothing for measurements ([`noop`]),
//! and [`backends`], which picks one by its URI's scheme.

pub mod backends;
pub mod gcp;
pub mod local;
pub mod noop;
