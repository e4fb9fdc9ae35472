//! The three ports the engine is written against: the work [`queue`], the
//! [`warehouse`] whose tables are exported, and the object [`store`] the
//! exports and their records go to; and a table's [`definition`], which a
//! warehouse reads and an export keeps beside its files.
//!
//! A new backend implements one of the traits ([`queue::Topic`] and
//! [`queue::Subscription`], [`warehouse::Warehouse`],
//! [`store::ObjectStore`]) and gets a URI scheme in
//! [`crate::adapters::backends`]; nothing in the engine changes. Each
//! port's page shows its contract on the embedded adapter, as an example
//! that runs. The ports import nothing above them: only [`crate::contract`]
//! and [`crate::error`].

pub mod definition;
pub mod queue;
pub mod store;
pub mod warehouse;
