//! The worker's actor: owns the local table of allocations and turns
//! desired sets (from the leader) and process exits into actions, through
//! the pure reconciler. One method per action.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coop_proto::worker::Assignment;
use tokio::sync::mpsc;

use crate::agent::{Identity, Report};
use crate::error::WorkerError;
use crate::executor::{self, Exit, Launch};
use crate::model::{self, ModelJob};
use crate::reconcile::{reconcile, Action, Desired, Local};

pub enum Event {
    /// A leader's set of this node's allocations, at its applied index.
    Desired(u64, Vec<Assignment>),
    Exited(u64, Exit),
    /// No leader with its quorum answered for this long: stop everything.
    CutOff(Duration),
}

/// Tombstones kept of forgotten allocations (ids only; oldest dropped first).
const TOMBSTONES: usize = 65_536;

struct Actor {
    id: Arc<Identity>,
    local: Arc<Mutex<BTreeMap<u64, Local>>>,
    events_tx: mpsc::Sender<Event>,
    reports: mpsc::UnboundedSender<Report>,
    pgids: BTreeMap<u64, u32>,
    specs: BTreeMap<u64, Assignment>,
    desired: BTreeMap<u64, Desired>,
    /// The applied index of the newest set taken: an older one is ignored
    /// (a replica behind the last leader would undo what it decided).
    applied_index: u64,
    tombstones: BTreeSet<u64>,
}

/// Owns the local table; turns desired sets and exits into actions.
pub async fn actor(
    id: Arc<Identity>,
    local: Arc<Mutex<BTreeMap<u64, Local>>>,
    mut events: mpsc::Receiver<Event>,
    events_tx: mpsc::Sender<Event>,
    reports: mpsc::UnboundedSender<Report>,
) {
    let mut a = Actor {
        id,
        local,
        events_tx,
        reports,
        pgids: BTreeMap::new(),
        specs: BTreeMap::new(),
        desired: BTreeMap::new(),
        applied_index: 0,
        tombstones: BTreeSet::new(),
    };
    while let Some(event) = events.recv().await {
        match event {
            Event::Desired(index, set) => a.on_desired(index, set),
            Event::CutOff(silent) => {
                tracing::warn!(
                    ?silent,
                    "no leader with a quorum has answered: stopping every allocation here before the cluster runs them elsewhere"
                );
                // Nothing is wanted until a leader says so again.
                a.desired.clear();
            }
            Event::Exited(alloc, exit) => {
                a.pgids.remove(&alloc);
                executor::record_running(&a.id.work_dir, &a.pgids);
                a.end(alloc, exit);
            }
        }
        let actions = {
            let table = a.local.lock().unwrap_or_else(|p| p.into_inner());
            reconcile(&a.desired, &table, &a.tombstones)
        };
        for action in actions {
            match action {
                Action::Start(alloc) => a.start(alloc),
                Action::Stop(alloc) => a.stop(alloc),
                Action::ReportNeverStarted(alloc) => {
                    a.end(alloc, Exit::error("cancelled before it started"))
                }
                Action::Forget(alloc) => {
                    a.table().remove(&alloc);
                    a.tombstones.insert(alloc);
                    if a.tombstones.len() > TOMBSTONES {
                        a.tombstones.pop_first();
                    }
                }
            }
        }
    }
}

impl Actor {
    fn table(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Local>> {
        self.local.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn on_desired(&mut self, index: u64, set: Vec<Assignment>) {
        if index < self.applied_index {
            tracing::info!(
                index,
                newest = self.applied_index,
                "ignored an older assignment set"
            );
            return;
        }
        self.applied_index = index;
        let stopping = coop_proto::api::AllocState::Stopping as i32;
        self.desired = set
            .iter()
            .map(|a| {
                let d = if a.state == stopping {
                    Desired::Stop
                } else {
                    Desired::Run
                };
                (a.alloc_id, d)
            })
            .collect();
        self.specs = set.into_iter().map(|a| (a.alloc_id, a)).collect();
    }

    /// Records the end of an allocation and reports it.
    fn end(&self, alloc: u64, exit: Exit) {
        // On disk before it is sent: a crash from here on loses nothing.
        let entry = crate::outbox::Entry::new(alloc, self.id.incarnation, &exit);
        if let Err(e) = crate::outbox::record(&self.id.work_dir, &entry) {
            tracing::error!(alloc, error = %e, "cannot record the run's end in the outbox");
        }
        self.table().insert(alloc, Local::Ended);
        tracing::info!(alloc, node = %self.id.node_id, "ended");
        let _ = self.reports.send(Report::Finished(alloc, exit));
    }

    fn start(&mut self, alloc: u64) {
        let Some(a) = self.specs.get(&alloc) else {
            return;
        };
        let spec = a.spec.clone().unwrap_or_default();
        let job_id = a.job_id;
        // Only the job's member may read what it writes.
        if let Err(e) = executor::write_reader(&self.id.work_dir, alloc, &a.member, &a.member_key) {
            return self.end(alloc, Exit::error(e.to_string()));
        }
        let gpu_indices = a.gpu_indices.clone();
        let mut env: BTreeMap<String, String> = spec.env.clone().into_iter().collect();
        if let Some(index) = a.array_index {
            env.insert("COOP_ARRAY_INDEX".into(), index.to_string());
        }
        let model_job = match coop_core::JobSpec::try_from(&spec) {
            Ok(s) if model::is_model_job(&s.kind) => Some(s.kind),
            Ok(_) => None,
            Err(e) => {
                return self.end(
                    alloc,
                    Exit::error(format!("the job spec does not convert: {e}")),
                )
            }
        };
        let argv = match &model_job {
            Some(job) => {
                env.insert(
                    model::artifact::CACHE_LIMIT_ENV.into(),
                    self.id.cache_max_bytes.to_string(),
                );
                if let Some(lib) = &self.id.onnxruntime {
                    env.insert(
                        model::engine::ONNXRUNTIME_ENV.into(),
                        lib.display().to_string(),
                    );
                }
                // As many engine threads as the CPUs the job was given.
                let cpus = spec.resources.map(|r| r.cpu_millis).unwrap_or(1000);
                env.insert(
                    model::engine::THREADS_ENV.into(),
                    cpus.div_ceil(1000).max(1).to_string(),
                );
                match prepare_model_job(&self.id, alloc, job) {
                    Ok(argv) => argv,
                    Err(e) => return self.end(alloc, Exit::error(e.to_string())),
                }
            }
            None => spec.argv.clone(),
        };
        let launch = Launch {
            alloc_id: alloc,
            job_id,
            argv: &argv,
            env: &env,
            gpu_indices: &gpu_indices,
            cpu_millis: spec.resources.map(|r| r.cpu_millis).unwrap_or(0),
            memory_bytes: spec.resources.map(|r| r.memory_bytes).unwrap_or(0),
            // A uid per allocation, reused only after the range wraps.
            run_as: self.id.job_uids.map(|(base, count)| {
                let uid = base + (alloc % u64::from(count)) as u32;
                (uid, uid)
            }),
        };
        let timeout = spec.timeout_secs.map(Duration::from_secs);
        let grace = self.id.stop_grace;
        let started = match executor::launcher().start(
            &self.id.work_dir,
            &launch,
            self.id.cgroups.as_deref(),
            timeout,
            grace,
        ) {
            Ok(started) => started,
            Err(e) => {
                tracing::warn!(alloc, error = %e, "could not start");
                return self.end(alloc, Exit::error(e.to_string()));
            }
        };
        if let Some(pid) = started.pgid {
            self.pgids.insert(alloc, pid);
            executor::record_running(&self.id.work_dir, &self.pgids);
        }
        self.table().insert(alloc, Local::Running);
        let _ = self.reports.send(Report::Started(alloc));
        // The simulation reads these two events as each run's life.
        tracing::info!(alloc, job = job_id, node = %self.id.node_id, "started");
        let tx = self.events_tx.clone();
        let dir = executor::alloc_dir(&self.id.work_dir, alloc);
        let memory_limit = launch.memory_bytes;
        let kind = match &model_job {
            Some(ModelJob::Inference { .. }) => "inference",
            Some(ModelJob::Evaluation { .. }) => "evaluation",
            Some(ModelJob::Command { .. }) | None => "command",
        };
        let is_model = model_job.is_some();
        let metrics = self.id.metrics.clone();
        let began = std::time::Instant::now();
        tokio::spawn(async move {
            let mut exit = started.exit.await;
            if is_model {
                collect_model_outcome(&dir, &mut exit, memory_limit);
            }
            let outcome = if exit.code == Some(0) && exit.error.is_empty() {
                "succeeded"
            } else if exit.signal.is_some() {
                "killed"
            } else {
                "failed"
            };
            metrics.job_ended(kind, outcome, began.elapsed());
            let _ = tx.send(Event::Exited(alloc, exit)).await;
        });
    }

    fn stop(&self, alloc: u64) {
        self.table().insert(alloc, Local::Stopping);
        if let Some(&pgid) = self.pgids.get(&alloc) {
            // A reclaim carries the policy's grace; a cancel uses the worker's.
            let grace = self
                .specs
                .get(&alloc)
                .filter(|a| a.stop_grace_ms > 0)
                .map(|a| Duration::from_millis(a.stop_grace_ms))
                .unwrap_or(self.id.stop_grace);
            tracing::info!(alloc, ?grace, "stopping");
            tokio::spawn(executor::launcher().stop(pgid, grace));
        }
    }
}

/// Writes a model job's spec into its work dir and returns the argv that
/// runs it in a child process (see `model`).
fn prepare_model_job(
    id: &Identity,
    alloc: u64,
    job: &ModelJob,
) -> Result<Vec<String>, WorkerError> {
    let dir = executor::alloc_dir(&id.work_dir, alloc);
    std::fs::create_dir_all(&dir).map_err(WorkerError::io(format!(
        "create work dir {}",
        dir.display()
    )))?;
    let bytes = serde_json::to_vec_pretty(job).expect("a job kind always serializes");
    std::fs::write(dir.join(model::SPEC_FILE), bytes)
        .map_err(WorkerError::io(format!("write {}", model::SPEC_FILE)))?;
    let cache = model::cache_dir(&id.work_dir);
    std::fs::create_dir_all(&cache)
        .map_err(WorkerError::io(format!("create cache {}", cache.display())))?;
    Ok(vec![
        id.runner.display().to_string(),
        "run-model".into(),
        dir.display().to_string(),
        cache.display().to_string(),
    ])
}

/// Reads what the model child left: its result, or the reason it failed,
/// with running out of memory named as such.
fn collect_model_outcome(dir: &std::path::Path, exit: &mut Exit, memory_limit: u64) {
    collect_model_result(dir, exit);
    if exit.code != Some(0) && ran_out_of_memory(dir, exit) {
        exit.error = out_of_memory_message(memory_limit);
    }
}

/// The message for a model job that ran out of memory.
pub fn out_of_memory_message(limit: u64) -> String {
    format!(
        "out of memory: the job's memory limit is {} and the model with its data needed more; \
         resubmit with a larger --memory (e.g. --memory {})",
        coop_core::resources::format_bytes(limit),
        coop_core::resources::format_bytes(limit.saturating_mul(2))
    )
}

/// Whether the child died of an allocation that failed: Rust aborts with
/// "memory allocation of N bytes failed" (SIGABRT under the rlimit), the
/// kernel's OOM killer sends SIGKILL (under cgroup v2, counted in
/// memory.events), and ONNX Runtime reports a failed allocation as an error.
fn ran_out_of_memory(dir: &std::path::Path, exit: &Exit) -> bool {
    let stderr = std::fs::read(dir.join("stderr.log")).unwrap_or_default();
    let tail =
        String::from_utf8_lossy(&stderr[stderr.len().saturating_sub(64 * 1024)..]).to_string();
    let said = |t: &str| {
        t.contains("memory allocation of")
            || t.contains("bad_alloc")
            || t.contains("Failed to allocate memory")
            || t.contains("out of memory")
    };
    said(&tail) || said(&exit.error) || exit.oom_killed
}

/// Reads what the model child left: its result, or the reason it failed.
fn collect_model_result(dir: &std::path::Path, exit: &mut Exit) {
    if exit.code == Some(0) {
        match std::fs::read_to_string(dir.join(model::RESULT_FILE)) {
            Ok(json) => match serde_json::from_str(&json) {
                Ok(result) => exit.result = Some(Box::new(result)),
                Err(e) => exit.error = format!("the model job left an unreadable result: {e}"),
            },
            Err(e) => exit.error = format!("the model job left no result: {e}"),
        }
    } else if let Ok(reason) = std::fs::read_to_string(dir.join(model::ERROR_FILE)) {
        exit.error = reason;
    } else if exit.signal.is_some() {
        exit.error = format!(
            "the model job's process was killed by signal {}",
            exit.signal.unwrap_or(0)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::Report;

    #[test]
    fn a_model_child_out_of_memory_is_named_with_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let died = |stderr: &str| {
            std::fs::write(dir.path().join("stderr.log"), stderr).unwrap();
            let mut exit = Exit {
                code: None,
                signal: Some(6),
                error: String::new(),
                result: None,
                oom_killed: false,
            };
            collect_model_outcome(dir.path(), &mut exit, 256 << 20);
            exit
        };
        // What Rust's allocator prints before it aborts.
        let oom = died("memory allocation of 4294967296 bytes failed\n");
        assert!(oom.error.starts_with("out of memory"), "{}", oom.error);
        assert!(
            oom.error.contains("256Mi") && oom.error.contains("--memory"),
            "{}",
            oom.error
        );
        // Another crash is not called one.
        let crash = died("thread 'main' panicked\n");
        assert!(
            crash.error.contains("killed by signal 6"),
            "{}",
            crash.error
        );
        // The kernel's OOM killer, as the cgroup counts it.
        std::fs::write(dir.path().join("stderr.log"), "").unwrap();
        let mut killed = Exit {
            code: None,
            signal: Some(9),
            error: String::new(),
            result: None,
            oom_killed: true,
        };
        collect_model_outcome(dir.path(), &mut killed, 1 << 30);
        assert!(
            killed.error.starts_with("out of memory"),
            "{}",
            killed.error
        );
    }

    fn identity(work_dir: &std::path::Path) -> Arc<Identity> {
        let capacity = coop_proto::api::Resources {
            cpu_millis: 1000,
            memory_bytes: 1 << 30,
            gpus: 0,
        };
        Arc::new(Identity {
            onnxruntime: None,
            advertised: Default::default(),
            node_id: "n1".into(),
            owner: "ana".into(),
            metrics: Arc::new(crate::metrics::WorkerMetrics::new(&capacity, &[])),
            capacity,
            gpus: Vec::new(),
            addr: "127.0.0.1:1".into(),
            incarnation: 1,
            work_dir: work_dir.to_path_buf(),
            stop_grace: Duration::from_millis(100),
            runner: std::path::PathBuf::from("/nonexistent"),
            cache_max_bytes: 0,
            job_uids: None,
            cgroups: None,
            key: coop_core::SecretKey::from_bytes(&[1; 32]),
            cluster_id: Default::default(),
            session: Default::default(),
            clock: crate::system_clock(),
        })
    }

    fn sleeper(alloc: u64) -> Assignment {
        Assignment {
            alloc_id: alloc,
            job_id: alloc,
            member: "ana".into(),
            spec: Some(coop_proto::api::JobSpec {
                argv: vec!["sleep".into(), "600".into()],
                resources: Some(coop_proto::api::Resources {
                    cpu_millis: 100,
                    memory_bytes: 1 << 20,
                    gpus: 0,
                }),
                ..Default::default()
            }),
            state: coop_proto::api::AllocState::Assigned as i32,
            member_key: coop_core::SecretKey::from_bytes(&[2; 32])
                .public_key()
                .0
                .to_vec(),
            ..Default::default()
        }
    }

    /// Receives reports up to the end of `alloc`; returns those before it.
    async fn until_finished(
        reports: &mut mpsc::UnboundedReceiver<Report>,
        alloc: u64,
    ) -> Vec<Report> {
        let mut before = Vec::new();
        loop {
            match reports.recv().await.expect("the actor runs") {
                Report::Finished(a, _) if a == alloc => return before,
                r => before.push(r),
            }
        }
    }

    /// A set read at an older applied index (a replica behind the leader
    /// that decided the newer one) changes nothing: the allocation it no
    /// longer lists keeps running. A newer set that drops it stops it.
    #[tokio::test]
    async fn an_older_assignment_set_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let local = Arc::new(Mutex::new(BTreeMap::new()));
        let (tx, rx) = mpsc::channel(16);
        let (reports_tx, mut reports) = mpsc::unbounded_channel();
        let task = tokio::spawn(actor(
            identity(dir.path()),
            local.clone(),
            rx,
            tx.clone(),
            reports_tx,
        ));
        tx.send(Event::Desired(10, vec![sleeper(1)])).await.unwrap();
        assert!(matches!(reports.recv().await, Some(Report::Started(1))));

        tx.send(Event::Desired(5, Vec::new())).await.unwrap();
        // The end of an allocation it never had: once it is reported, every
        // event before it has been handled.
        tx.send(Event::Exited(999, Exit::error("marker")))
            .await
            .unwrap();
        let between = until_finished(&mut reports, 999).await;
        assert!(between.is_empty(), "{between:?}");
        assert_eq!(local.lock().unwrap().get(&1), Some(&Local::Running));

        tx.send(Event::Desired(11, Vec::new())).await.unwrap();
        until_finished(&mut reports, 1).await;
        task.abort();
    }
}
