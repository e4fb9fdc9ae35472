//! What the ports and the engine share: the work message that producers and
//! workers exchange, with the export options it carries. It imports nothing
//! above it, so ports and engine can both depend on it.

pub mod change;
pub mod message;
pub mod options;
