//! `Resources`: the three dimensions the pool is shared in.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An amount of CPU, memory and GPUs: a job's request, a node's capacity or
/// what is free on it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Resources {
    /// Thousandths of a CPU core.
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub gpus: u32,
}

impl Resources {
    pub const ZERO: Resources = Resources {
        cpu_millis: 0,
        memory_bytes: 0,
        gpus: 0,
    };

    pub fn new(cpu_millis: u64, memory_bytes: u64, gpus: u32) -> Self {
        Self {
            cpu_millis,
            memory_bytes,
            gpus,
        }
    }

    /// True when every dimension of `self` is at most that of `other`.
    pub fn fits_in(&self, other: &Resources) -> bool {
        self.cpu_millis <= other.cpu_millis
            && self.memory_bytes <= other.memory_bytes
            && self.gpus <= other.gpus
    }

    pub fn saturating_add(&self, o: &Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_add(o.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_add(o.memory_bytes),
            gpus: self.gpus.saturating_add(o.gpus),
        }
    }

    pub fn saturating_sub(&self, o: &Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_sub(o.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_sub(o.memory_bytes),
            gpus: self.gpus.saturating_sub(o.gpus),
        }
    }

    /// The dimensions in which `self` exceeds `free`, for pending reasons.
    pub fn shortfall(&self, free: &Resources) -> Vec<&'static str> {
        let mut short = Vec::new();
        if self.cpu_millis > free.cpu_millis {
            short.push("cpu");
        }
        if self.memory_bytes > free.memory_bytes {
            short.push("memory");
        }
        if self.gpus > free.gpus {
            short.push("gpus");
        }
        short
    }
}

impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cpu={} mem={} gpus={}",
            format_cpu(self.cpu_millis),
            format_bytes(self.memory_bytes),
            self.gpus
        )
    }
}

/// `1500` -> `"1.5"`, `2000` -> `"2"`.
pub fn format_cpu(cpu_millis: u64) -> String {
    if cpu_millis.is_multiple_of(1000) {
        format!("{}", cpu_millis / 1000)
    } else {
        format!("{:.3}", cpu_millis as f64 / 1000.0)
            .trim_end_matches('0')
            .to_string()
    }
}

/// Binary units, one decimal: `1610612736` -> `"1.5Gi"`.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["", "Ki", "Mi", "Gi", "Ti"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}")
    } else if value.fract() == 0.0 {
        format!("{value:.0}{}", UNITS[unit])
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

/// A resource amount that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("bad cpu amount {0:?}: use cores like 2 or 0.5, or millicores like 500m")]
    Cpu(String),
    #[error("bad memory amount {0:?}: use bytes or a unit like 512Mi, 2Gi, 1G")]
    Memory(String),
}

/// Parses a CPU amount: `"2"`, `"0.5"`, `"500m"`.
pub fn parse_cpu(text: &str) -> Result<u64, AmountError> {
    let t = text.trim();
    let bad = || AmountError::Cpu(text.to_string());
    if let Some(m) = t.strip_suffix('m') {
        return m.parse::<u64>().map_err(|_| bad());
    }
    let cores: f64 = t.parse().map_err(|_| bad())?;
    if !cores.is_finite() || !(0.0..=1.0e9).contains(&cores) {
        return Err(bad());
    }
    Ok((cores * 1000.0).round() as u64)
}

/// Parses a memory amount: `"512Mi"`, `"2Gi"`, `"1G"`, `"1048576"`.
pub fn parse_bytes(text: &str) -> Result<u64, AmountError> {
    let t = text.trim();
    let bad = || AmountError::Memory(text.to_string());
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.trim().parse().map_err(|_| bad())?;
    let mult: f64 = match unit.trim() {
        "" | "B" => 1.0,
        "K" | "k" | "KB" => 1e3,
        "M" | "MB" => 1e6,
        "G" | "GB" => 1e9,
        "T" | "TB" => 1e12,
        "Ki" | "KiB" => 1024.0,
        "Mi" | "MiB" => 1024.0 * 1024.0,
        "Gi" | "GiB" => 1024.0 * 1024.0 * 1024.0,
        "Ti" | "TiB" => 1024.0f64.powi(4),
        _ => return Err(bad()),
    };
    let bytes = value * mult;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats_units() {
        assert_eq!(parse_cpu("2"), Ok(2000));
        assert_eq!(parse_cpu("0.5"), Ok(500));
        assert_eq!(parse_cpu("250m"), Ok(250));
        assert!(parse_cpu("-1").is_err());
        assert!(parse_cpu("lots").is_err());
        assert_eq!(parse_bytes("512Mi"), Ok(512 << 20));
        assert_eq!(parse_bytes("1G"), Ok(1_000_000_000));
        assert_eq!(parse_bytes("1024"), Ok(1024));
        assert!(parse_bytes("3 parsecs").is_err());
        assert_eq!(format_bytes(1536 << 20), "1.5Gi");
        assert_eq!(format_cpu(1500), "1.5");
        assert_eq!(format_cpu(2000), "2");
    }

    #[test]
    fn fits_and_shortfall() {
        let node = Resources::new(4000, 8 << 30, 1);
        let job = Resources::new(2000, 16 << 30, 2);
        assert!(!job.fits_in(&node));
        assert_eq!(job.shortfall(&node), vec!["memory", "gpus"]);
        assert!(Resources::new(4000, 8 << 30, 1).fits_in(&node));
    }
}
