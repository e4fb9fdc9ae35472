//! What operators run besides the producer and the worker: [`status`] (and
//! its HTML [`report`]), [`replay`] and [`reconcile`] of dead letters,
//! [`verify`] of a destination, the producer's [`preflight`] check,
//! [`launch`] of the worker job, and the local [`demo`].

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
