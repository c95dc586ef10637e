//! How the file writes quantities (`*_ms`, `*_secs`, `*_days`, `*_mb`, `*_percent`) and what the proxy keeps
//! (a `Duration`, bytes, a share): the conversion happens while deserializing, so a bad value is reported with
//! its file and line like any other type error.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

pub fn ms<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    u64::deserialize(d).map(Duration::from_millis)
}

pub fn secs<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    u64::deserialize(d).map(Duration::from_secs)
}

pub fn days<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    u64::deserialize(d).map(|days| Duration::from_secs(days.saturating_mul(86_400)))
}

pub fn mb<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    u64::deserialize(d).map(|mb| mb.saturating_mul(1024 * 1024))
}

/// `80` → `0.8`; outside 0‥100 is an error.
pub fn percent<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    to_share(f64::deserialize(d)?)
}

pub fn percent_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    percent(d).map(Some)
}

pub fn percents<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
    Vec::<f64>::deserialize(d)?
        .into_iter()
        .map(to_share)
        .collect()
}

fn to_share<E: serde::de::Error>(v: f64) -> Result<f64, E> {
    if v.is_finite() && (0.0..=100.0).contains(&v) {
        Ok(v / 100.0)
    } else {
        Err(E::custom(format!(
            "{v} is not a percentage between 0 and 100"
        )))
    }
}
