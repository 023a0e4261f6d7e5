//! The read side: projections of the event log into views kept in SQLite.
//!
//! ```text
//! EventStore::subscribe_all ──► runner (per projection version: feeder ─► applier)
//!                                  │  one write transaction per batch: rows + checkpoint
//!                                  ▼
//!                               views/<projection>.db ◄── Views (queries: inbox, active,
//!                                               archive, detail, timeline, history, deadlines)
//! ```
//!
//! * [`db`]: the view databases (one file per projection) and the registry
//!   of projection versions each file holds;
//! * [`projection`]: the `Projection` trait and the decoded event it applies;
//! * [`runner`]: catch-up then live, failures that stop and wait for retry,
//!   blue/green rebuilds, status;
//! * [`referrals`], [`timeline`], [`history`], [`deadlines`]: the projections,
//!   each with the queries over its tables;
//! * [`views`]: the query facade that reads the active version of each.
pub mod db;
pub mod deadlines;
pub mod history;
pub mod paging;
pub mod projection;
pub mod referrals;
pub mod runner;
pub mod timeline;
pub mod views;

use std::sync::Arc;

pub use db::ViewDb;
pub use projection::{Applier, ProjectedEvent, Projection, Version};
pub use runner::{Halt, ProjectionStatus, Projector, RunState, RunnerOptions, VersionStatus};
pub use views::Views;

/// Every projection the engine runs.
pub fn all_projections() -> Vec<Arc<dyn Projection>> {
    vec![
        Arc::new(referrals::ReferralsProjection),
        Arc::new(timeline::TimelineProjection),
        Arc::new(history::HistoryProjection),
        Arc::new(deadlines::DeadlinesProjection),
    ]
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ViewError {
    #[error("{field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("there is no projection named {name:?}; the projections are: {known}")]
    UnknownProjection { name: String, known: String },
    #[error("projection {name} is already being rebuilt (version {version}); wait for it to finish")]
    RebuildInProgress { name: String, version: u32 },
    #[error("view {0} has no active version yet")]
    NotReady(&'static str),
    #[error("view database: {0}")]
    Storage(String),
    #[error("event store: {0}")]
    Store(String),
}

impl From<rusqlite::Error> for ViewError {
    fn from(e: rusqlite::Error) -> Self {
        ViewError::Storage(e.to_string())
    }
}
