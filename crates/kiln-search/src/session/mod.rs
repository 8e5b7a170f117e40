//! Sessions: one JSON file per (target, backend) holding a search's tree,
//! configuration and counters, saved atomically after every evaluation and
//! resumable exactly. [`schema`] documents the file; [`store`] reads and
//! writes it.

pub mod schema;
pub mod store;

#[cfg(test)]
mod tests;

pub use schema::{
    now_rfc3339, BestSummary, Counters, SearchConfig, Session, SessionMeta, SCHEMA_VERSION,
};
pub use store::{check_resume_compatible, load, save_atomic, Opened, SessionError, SessionFile};
