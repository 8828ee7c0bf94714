//! What this machine offers: CPU count and memory, detected, each of which
//! the worker config can override.

/// Logical CPUs, in millicores.
pub fn detect_cpu_millis() -> u64 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u64 * 1000)
        .unwrap_or(1000)
}

/// Total memory from /proc/meminfo, or 1 GiB where it cannot be read.
pub fn detect_memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| parse_meminfo(&text))
        .unwrap_or(1 << 30)
}

/// One detected GPU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gpu {
    pub index: u32,
    pub uuid: String,
    pub model: String,
    pub memory_bytes: u64,
}

/// The GPUs NVML reports. NVML is loaded at run time
/// (`libnvidia-ml.so`), so a machine without a driver simply has none: the
/// reason is logged, not raised.
pub fn detect_gpus() -> Vec<Gpu> {
    let nvml = match nvml_wrapper::Nvml::init() {
        Ok(n) => n,
        Err(e) => {
            tracing::info!(reason = %e, "no NVML on this machine: offering no GPUs");
            return Vec::new();
        }
    };
    let count = match nvml.device_count() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "NVML found no devices");
            return Vec::new();
        }
    };
    let mut gpus = Vec::new();
    for index in 0..count {
        match nvml.device_by_index(index) {
            Ok(d) => gpus.push(Gpu {
                index,
                uuid: d.uuid().unwrap_or_default(),
                model: d.name().unwrap_or_default(),
                memory_bytes: d.memory_info().map(|m| m.total).unwrap_or(0),
            }),
            Err(e) => tracing::warn!(index, error = %e, "NVML could not open a GPU; skipping it"),
        }
    }
    gpus
}

fn parse_meminfo(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_meminfo() {
        assert_eq!(
            super::parse_meminfo("MemTotal:       16384 kB\nMemFree: 1 kB\n"),
            Some(16384 * 1024)
        );
        assert!(super::detect_cpu_millis() >= 1000);
    }
}
