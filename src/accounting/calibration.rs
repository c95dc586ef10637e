//! Self-calibration: where a model's tokenizer is a stand-in (a Kimi model counted with cl100k), the ratio of
//! the provider's prompt figure to our estimate is learned per model and applied to estimates that have no
//! provider figure yet, so the context gauge is not 15% off.

use serde::Serialize;

/// Weight of history at each new sample: recent requests matter more (providers change templates).
const DECAY: f64 = 0.9;
/// A ratio outside this range means something other than tokenizer drift (e.g. a provider-side system
/// prompt); it is clamped rather than trusted.
const MIN_RATIO: f64 = 0.5;
const MAX_RATIO: f64 = 2.0;

#[derive(Debug, Clone, Default, Serialize)]
pub struct Calibration {
    reported: f64,
    estimated: f64,
    pub samples: u64,
}

impl Calibration {
    pub fn observe(&mut self, estimated: u64, reported: u64) {
        if estimated == 0 || reported == 0 {
            return;
        }
        self.reported = self.reported * DECAY + reported as f64;
        self.estimated = self.estimated * DECAY + estimated as f64;
        self.samples += 1;
    }

    /// provider ÷ estimate, once at least one sample was seen.
    pub fn ratio(&self) -> Option<f64> {
        (self.samples > 0 && self.estimated > 0.0)
            .then(|| (self.reported / self.estimated).clamp(MIN_RATIO, MAX_RATIO))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn learns_and_follows_drift() {
        let mut c = Calibration::default();
        assert_eq!(c.ratio(), None);
        for _ in 0..20 {
            c.observe(1000, 1150);
        }
        assert!((c.ratio().unwrap() - 1.15).abs() < 1e-9);
        for _ in 0..60 {
            c.observe(1000, 1050);
        }
        assert!((c.ratio().unwrap() - 1.05).abs() < 0.01);
        c.observe(0, 10);
        c.observe(1, 1000);
        assert!(c.ratio().unwrap() <= MAX_RATIO);
    }
}
