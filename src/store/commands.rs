//! The writes (and writer-side reads) the rest of the product asks of the store, by name. Each runs on the one
//! writer thread, after every record queued before it: callers never see a connection or write SQL, and no
//! closure crosses the store's boundary.

use std::sync::Arc;

use super::alerts::Alert;
use super::alerts::Restored;
use super::db::{Db, RowExt};
use super::{RetentionOutcome, StoreError, StoreSink};

/// A session's saved context settings and whether it is the active one (what the proxy mirrors in memory).
#[derive(Debug, Clone)]
pub struct SessionSettings {
    pub id: i64,
    pub client_key: Option<String>,
    /// The settings as stored (JSON), when any.
    pub settings: Option<String>,
    pub active: bool,
}

impl StoreSink {
    pub async fn create_session(
        self: &Arc<Self>,
        name: String,
        model: Option<String>,
        activate: bool,
    ) -> Result<i64, StoreError> {
        self.execute(move |state| {
            state.transact(|db, resolver| {
                super::create_session_in(db, resolver, &name, model.as_deref(), activate)
            })
        })
        .await
    }

    pub async fn rename_session(self: &Arc<Self>, id: i64, name: String) -> Result<(), StoreError> {
        self.execute(move |state| state.transact(|db, _| super::rename_session_in(db, id, &name)))
            .await
    }

    pub async fn set_active(self: &Arc<Self>, id: i64, active: bool) -> Result<(), StoreError> {
        self.execute(move |state| state.transact(|db, _| super::set_active_in(db, id, active)))
            .await
    }

    /// Deletes sessions with their requests; returns how many existed.
    pub async fn delete_sessions(self: &Arc<Self>, ids: Vec<i64>) -> Result<usize, StoreError> {
        self.execute(move |state| {
            let deleted = state.transact(|db, _| super::delete_sessions_in(db, &ids))?;
            for id in &ids {
                state.resolver.forget(*id);
            }
            state.resolver.notify_deleted(&ids);
            Ok(deleted)
        })
        .await
    }

    pub async fn apply_retention(
        self: &Arc<Self>,
        days: u32,
        vacuum: bool,
    ) -> Result<RetentionOutcome, StoreError> {
        self.execute(move |state| super::apply_retention(state, days, vacuum))
            .await
    }

    /// Saves a session's context settings (`None` clears them); returns the session's client key and whether
    /// it is active.
    pub async fn set_context_settings(
        self: &Arc<Self>,
        id: i64,
        settings: Option<String>,
    ) -> Result<(Option<String>, bool), StoreError> {
        self.execute(move |state| {
            state.transact(|db, _| set_context_settings(db, id, settings.as_deref()))
        })
        .await
    }

    /// The sessions that have context settings or are active.
    pub async fn sessions_with_settings(
        self: &Arc<Self>,
    ) -> Result<Vec<SessionSettings>, StoreError> {
        self.execute(|state| state.with_db(sessions_with_settings))
            .await
    }

    pub async fn ack_alert(self: &Arc<Self>, id: i64, at_ms: i64) -> Result<bool, StoreError> {
        self.execute(move |state| state.with_db(|db| super::alerts::ack_alert(db, id, at_ms)))
            .await
    }

    /// Closes the alerts a previous run left open and returns the rest; `listener` hears of context changes
    /// from then on. Blocking: called once at start-up.
    pub fn restore_alerts(
        &self,
        now_ms: i64,
        listener: Arc<dyn super::ContextListener>,
    ) -> Result<Restored, StoreError> {
        self.execute_blocking(move |state| {
            state.resolver.set_listener(listener);
            state.transact(|db, _| super::alerts::restore_alerts(db, now_ms))
        })
    }

    /// Queues an alert's insertion without waiting; false when the queue is full (the caller keeps it).
    pub fn queue_alert_insert(&self, alert: Alert) -> bool {
        self.try_execute(move |state| {
            if let Err(error) = state.with_db(|db| super::alerts::insert_alert(db, &alert)) {
                tracing::warn!(%error, id = alert.id, "cannot store an alert");
            }
        })
    }

    /// Queues an alert's resolution without waiting; false when the queue is full.
    pub fn queue_alert_resolution(&self, id: i64, at_ms: i64, resolution: String) -> bool {
        self.try_execute(move |state| {
            if let Err(error) =
                state.with_db(|db| super::alerts::resolve_alert(db, id, at_ms, &resolution))
            {
                tracing::warn!(%error, id, "cannot store an alert's resolution");
            }
        })
    }

    /// Queues an alert's acknowledgement without waiting; false when the queue is full.
    pub fn queue_alert_ack(&self, id: i64, at_ms: i64) -> bool {
        self.try_execute(move |state| {
            if let Err(error) = state.with_db(|db| super::alerts::ack_alert(db, id, at_ms)) {
                tracing::warn!(%error, id, "cannot store an alert's acknowledgement");
            }
        })
    }
}

fn set_context_settings(
    db: &dyn Db,
    id: i64,
    settings: Option<&str>,
) -> Result<(Option<String>, bool), StoreError> {
    let changed = db.execute(
        "UPDATE sessions SET context_settings = ?2 WHERE id = ?1",
        &[id.into(), settings.into()],
    )?;
    if changed == 0 {
        return Err(StoreError::UnknownSession(id));
    }
    let row = db
        .first(
            "SELECT client_key, active FROM sessions WHERE id = ?1",
            &[id.into()],
        )?
        .ok_or(StoreError::UnknownSession(id))?;
    Ok((row.opt_text(0)?, row.int(1)? != 0))
}

fn sessions_with_settings(db: &dyn Db) -> Result<Vec<SessionSettings>, StoreError> {
    db.query(
        "SELECT id, client_key, context_settings, active FROM sessions
         WHERE context_settings IS NOT NULL OR active = 1",
        &[],
    )?
    .rows
    .iter()
    .map(|r| {
        Ok(SessionSettings {
            id: r.int(0)?,
            client_key: r.opt_text(1)?,
            settings: r.opt_text(2)?,
            active: r.int(3)? != 0,
        })
    })
    .collect()
}
