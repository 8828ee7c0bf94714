//! Every metric a worker exports, in one place (`coop_worker_*`); see
//! docs/metrics.md.

use std::time::Duration;

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntGauge, Opts, Registry, TextEncoder,
};

pub struct WorkerMetrics {
    registry: Registry,
    running: IntGauge,
    job_duration: HistogramVec,
    capacity: GaugeVec,
    gpu_info: GaugeVec,
    gpu_utilization: GaugeVec,
    gpu_memory_used: GaugeVec,
    gpu_memory_total: GaugeVec,
    /// Present where NVML loaded; read at each scrape.
    nvml: Option<nvml_wrapper::Nvml>,
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let g = GaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("registered once");
    g
}

impl WorkerMetrics {
    pub fn new(capacity: &coop_proto::api::Resources, gpus: &[coop_proto::api::GpuInfo]) -> Self {
        let r = Registry::new();
        let running = IntGauge::new("coop_worker_running_jobs", "Jobs running on this worker.")
            .expect("valid metric");
        r.register(Box::new(running.clone()))
            .expect("registered once");
        let job_duration = HistogramVec::new(
            HistogramOpts::new(
                "coop_worker_job_duration_seconds",
                "How long jobs ran, by kind and outcome.",
            )
            .buckets(prometheus::exponential_buckets(0.01, 4.0, 12).expect("buckets")),
            &["kind", "outcome"],
        )
        .expect("valid metric");
        r.register(Box::new(job_duration.clone()))
            .expect("registered once");
        let m = Self {
            running,
            job_duration,
            capacity: gauge_vec(
                &r,
                "coop_worker_capacity",
                "What this worker offers the pool (GPUs, cores, bytes).",
                &["resource"],
            ),
            gpu_info: gauge_vec(
                &r,
                "coop_worker_gpu_info",
                "One series per GPU in the inventory (value 1).",
                &["index", "model", "uuid"],
            ),
            gpu_utilization: gauge_vec(
                &r,
                "coop_worker_gpu_utilization_ratio",
                "GPU busy fraction over NVML's last sample period.",
                &["index"],
            ),
            gpu_memory_used: gauge_vec(
                &r,
                "coop_worker_gpu_memory_used_bytes",
                "GPU memory in use (NVML).",
                &["index"],
            ),
            gpu_memory_total: gauge_vec(
                &r,
                "coop_worker_gpu_memory_total_bytes",
                "GPU memory (inventory).",
                &["index"],
            ),
            nvml: if gpus.is_empty() {
                None
            } else {
                nvml_wrapper::Nvml::init().ok()
            },
            registry: r,
        };
        m.capacity
            .with_label_values(&["gpu"])
            .set(capacity.gpus as f64);
        m.capacity
            .with_label_values(&["cpu"])
            .set(capacity.cpu_millis as f64 / 1000.0);
        m.capacity
            .with_label_values(&["memory"])
            .set(capacity.memory_bytes as f64);
        for g in gpus {
            let index = g.index.to_string();
            m.gpu_info
                .with_label_values(&[index.as_str(), g.model.as_str(), g.uuid.as_str()])
                .set(1.0);
            m.gpu_memory_total
                .with_label_values(&[index.as_str()])
                .set(g.memory_bytes as f64);
        }
        m
    }

    pub fn job_ended(&self, kind: &str, outcome: &str, ran: Duration) {
        self.job_duration
            .with_label_values(&[kind, outcome])
            .observe(ran.as_secs_f64());
    }

    pub fn render(&self, running: usize) -> String {
        self.running.set(running as i64);
        if let Some(nvml) = &self.nvml {
            if let Ok(count) = nvml.device_count() {
                for i in 0..count {
                    let Ok(d) = nvml.device_by_index(i) else {
                        continue;
                    };
                    let index = i.to_string();
                    if let Ok(u) = d.utilization_rates() {
                        self.gpu_utilization
                            .with_label_values(&[index.as_str()])
                            .set(u.gpu as f64 / 100.0);
                    }
                    if let Ok(mem) = d.memory_info() {
                        self.gpu_memory_used
                            .with_label_values(&[index.as_str()])
                            .set(mem.used as f64);
                    }
                }
            }
        }
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}
