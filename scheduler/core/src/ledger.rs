//! Decayed usage and contribution: what each member has used and what its
//! machines have offered, in resource-seconds that halve every half-life.
//!
//! Accrued at every scheduling pass over the time since the last one: the
//! balance decays by 2^(-dt/half_life) and the interval's resource-seconds
//! are added. Replicas must agree bit for bit, so the decay factor is
//! computed with +, *, / only (IEEE 754 makes those exact and the same
//! everywhere) rather than with the platform's `exp2`, whose last bits
//! may differ between libm builds.

use serde::{Deserialize, Serialize};

use crate::policy::Policy;
use crate::resources::Resources;

/// Decayed resource-seconds per dimension: GPU-seconds, CPU-core-seconds,
/// memory GiB-seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub gpu: f64,
    pub cpu: f64,
    pub mem: f64,
}

impl Usage {
    pub fn decay(&mut self, factor: f64) {
        self.gpu *= factor;
        self.cpu *= factor;
        self.mem *= factor;
    }

    /// Adds `r` held for `secs` seconds.
    pub fn add(&mut self, r: &Resources, secs: f64) {
        self.gpu += r.gpus as f64 * secs;
        self.cpu += r.cpu_millis as f64 / 1000.0 * secs;
        self.mem += r.memory_bytes as f64 / GIB * secs;
    }

    pub fn get(&self, dim: usize) -> f64 {
        match dim {
            0 => self.gpu,
            1 => self.cpu,
            _ => self.mem,
        }
    }
}

pub const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// 2^(-x) for x >= 0, deterministic (see the module docs).
pub fn exp2_neg(x: f64) -> f64 {
    if x.is_nan() || x <= 0.0 {
        return 1.0;
    }
    if x > 1074.0 {
        return 0.0;
    }
    let whole = x.floor();
    let frac = x - whole;
    // e^(-frac*ln2) by its Taylor series: |frac*ln2| < 0.7, so 20 terms are
    // far below f64 precision.
    let y = -frac * std::f64::consts::LN_2;
    let mut term = 1.0;
    let mut sum = 1.0;
    for k in 1..=20 {
        term = term * y / k as f64;
        sum += term;
    }
    let mut result = sum;
    for _ in 0..(whole as u32) {
        result *= 0.5;
    }
    result
}

/// Decay factor over `dt_ms` for the policy's half-life.
pub fn decay_factor(dt_ms: u64, policy: &Policy) -> f64 {
    exp2_neg(dt_ms as f64 / (policy.half_life_secs as f64 * 1000.0))
}

/// A node's offer in GPU-equivalents per second: GPUs count as one each,
/// CPUs and memory at the policy's exchange rates.
pub fn gpu_equivalents(capacity: &Resources, policy: &Policy) -> f64 {
    capacity.gpus as f64
        + capacity.cpu_millis as f64 / 1000.0 / policy.cpus_per_gpu
        + capacity.memory_bytes as f64 / GIB / policy.memory_gib_per_gpu
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp2_matches_the_library_closely() {
        for x in [0.0, 0.1, 0.5, 1.0, 1.5, 2.75, 10.3, 50.0] {
            let ours = exp2_neg(x);
            let lib = (-x).exp2();
            assert!((ours - lib).abs() <= lib * 1e-14, "x={x}: {ours} vs {lib}");
        }
        assert_eq!(exp2_neg(1.0), 0.5);
        assert_eq!(exp2_neg(2000.0), 0.0);
    }

    #[test]
    fn half_life_halves() {
        let p = Policy {
            half_life_secs: 100,
            ..Policy::default()
        };
        assert_eq!(decay_factor(100_000, &p), 0.5);
        assert_eq!(decay_factor(0, &p), 1.0);
    }

    #[test]
    fn gpu_normalisation() {
        let p = Policy::default();
        // 16 cores and 64 GiB are one GPU-equivalent each.
        let node = Resources::new(16_000, 64 << 30, 2);
        assert_eq!(gpu_equivalents(&node, &p), 4.0);
    }
}
