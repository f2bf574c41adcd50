//! Learning-rate schedule: linear warmup, then cosine decay to a floor (as nanoGPT and most LLM
//! pretraining runs do).

use serde::{Deserialize, Serialize};

/// Warmup then cosine decay from `lr` to `min_lr` at `decay_steps`; constant `min_lr` after.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub lr: f64,
    pub min_lr: f64,
    pub warmup_steps: u64,
    pub decay_steps: u64,
}

impl Schedule {
    /// The learning rate at `step` (0-based).
    pub fn at(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        if step >= self.decay_steps {
            return self.min_lr;
        }
        let progress = (step - self.warmup_steps) as f64 / (self.decay_steps - self.warmup_steps).max(1) as f64;
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        self.min_lr + cosine * (self.lr - self.min_lr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warms_up_linearly_then_decays_along_a_cosine_to_the_floor() {
        let s = Schedule { lr: 1e-3, min_lr: 1e-4, warmup_steps: 10, decay_steps: 110 };
        assert!((s.at(0) - 1e-4).abs() < 1e-12);
        assert!((s.at(9) - 1e-3).abs() < 1e-12);
        assert!((s.at(60) - 5.5e-4).abs() < 1e-9, "halfway down the cosine: {}", s.at(60));
        assert!((s.at(110) - 1e-4).abs() < 1e-12);
        assert!((s.at(5000) - 1e-4).abs() < 1e-12);
        let decreasing = (10..110).all(|i| s.at(i + 1) <= s.at(i));
        assert!(decreasing);
    }
}
