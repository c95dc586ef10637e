//! Small leaf utilities every layer uses: the wall clock in milliseconds and a log throttle. Depends on no other
//! module of the crate.

use std::time::Duration;

/// Unix time in milliseconds (0 if the clock is before 1970).
pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Lets a repeated warning through at most once per interval, from any thread, without a lock: a fault that
/// recurs on every request is said once in a while, with a count, instead of flooding the log.
#[derive(Debug, Default)]
pub struct LogThrottle {
    last_ms: std::sync::atomic::AtomicI64,
}

impl LogThrottle {
    pub const fn new() -> LogThrottle {
        LogThrottle {
            last_ms: std::sync::atomic::AtomicI64::new(0),
        }
    }

    /// Whether a warning may be logged now (at most one caller per interval gets `true`).
    pub fn ready(&self, every: Duration) -> bool {
        use std::sync::atomic::Ordering;
        let now = unix_ms();
        let last = self.last_ms.load(Ordering::Relaxed);
        now.saturating_sub(last) >= every.as_millis() as i64
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// The top-level members of a JSON object in order, each value as its raw bytes: what a rewrite of one member
/// needs to leave every other byte for byte.
pub struct JsonMembers<'a>(pub Vec<(std::borrow::Cow<'a, str>, &'a serde_json::value::RawValue)>);

impl<'de: 'a, 'a> serde::Deserialize<'de> for JsonMembers<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visit<'a> {
            type Value = JsonMembers<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<JsonMembers<'a>, A::Error> {
                let mut members = Vec::new();
                while let Some(entry) = map
                    .next_entry::<std::borrow::Cow<'de, str>, &'de serde_json::value::RawValue>()?
                {
                    members.push(entry);
                }
                Ok(JsonMembers(members))
            }
        }
        deserializer.deserialize_map(Visit(std::marker::PhantomData))
    }
}

/// A JSON object written from its members (each key a string, each value JSON text), in order.
pub fn json_object<'a>(members: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Vec<u8> {
    let mut out = vec![b'{'];
    for (i, (key, value)) in members.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // A string always serializes.
        out.extend_from_slice(&serde_json::to_vec(key).unwrap_or_default());
        out.push(b':');
        out.extend_from_slice(value);
    }
    out.push(b'}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_throttle_lets_one_warning_through_per_interval() {
        let throttle = LogThrottle::new();
        assert!(throttle.ready(Duration::from_secs(60)));
        assert!(!throttle.ready(Duration::from_secs(60)));
        assert!(throttle.ready(Duration::ZERO));
    }
}
