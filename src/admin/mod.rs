//! The admin surface's handlers (the dashboard's data, sessions, alerts, context settings, stats and metrics),
//! behind the admin token. Their routes are in `crate::routes`; the SQL they need is in `crate::store`.

pub mod alerts;
pub mod context;
pub mod sessions;
pub mod stats;
pub mod usage;

pub use sessions::{ApiResult, Store, StoreApi};
