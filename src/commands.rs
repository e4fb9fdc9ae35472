//! The operator's commands.

pub mod demo;
pub mod launch;
pub mod local_workers;
pub mod preflight;
pub mod reconcile;
pub mod replay;
pub mod report;
pub mod restore;
pub mod status;
pub mod verify;
