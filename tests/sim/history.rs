//! What one simulated run leaves behind for the invariants to judge.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Duration;

use coop_core::ClusterState;

/// A submit the cluster acknowledged: its member, request id and job.
#[derive(Clone, Debug)]
pub struct Ack {
    pub member: String,
    pub request_id: String,
    pub job: u64,
}

/// One run of a job on a worker, in simulated time, as the worker's own
/// events tell it (`started` after the process is spawned, `ended` after
/// it has exited); a run on a crashed host ends when the host does.
#[derive(Clone, Debug)]
pub struct Run {
    pub alloc: u64,
    pub job: u64,
    pub node: String,
    pub start: Duration,
    pub end: Option<Duration>,
}

/// A replica's applied index and state digest at one moment.
#[derive(Clone, Debug)]
pub struct Sample {
    pub replica: String,
    pub applied: u64,
    pub digest: String,
}

/// A replica's state at the end, with its decision log's leaves.
pub struct Final {
    pub replica: String,
    pub applied: u64,
    pub state: ClusterState,
    pub leaves: Vec<Vec<u8>>,
}

#[derive(Default)]
pub struct History {
    pub acks: Vec<Ack>,
    /// Retries of an acknowledged request id and the job each returned.
    pub repeats: Vec<Ack>,
    /// Jobs the load cancelled (acknowledged cancels).
    pub cancelled: Vec<u64>,
    pub runs: Vec<Run>,
    pub samples: Vec<Sample>,
    pub finals: Vec<Final>,
    /// When the faults stopped, and whether every acknowledged job had
    /// ended (on every replica) by the end of the run.
    pub faults_ended: Duration,
    pub settled: Option<Duration>,
    pub leader_at_end: bool,
    /// What the load was doing last (for a failure's report).
    pub load_at: String,
    /// The faults, as they were applied.
    pub faults: Vec<String>,
}

thread_local! {
    /// The run events of the simulation on this thread (it runs on one).
    pub static RUNS: RefCell<Vec<Run>> = const { RefCell::new(Vec::new()) };
}

/// Ends every open run on `node` at `at` (its host went down).
pub fn host_down(node: &str, at: Duration) {
    RUNS.with(|r| {
        for run in r.borrow_mut().iter_mut() {
            if run.node == node && run.end.is_none() {
                run.end = Some(at);
            }
        }
    });
}

/// A tracing layer that keeps the workers' `started` and `ended` events,
/// stamped with simulated time.
pub struct RunEvents;

#[derive(Default)]
struct Fields {
    message: String,
    alloc: Option<u64>,
    job: Option<u64>,
    node: Option<String>,
}

impl tracing::field::Visit for Fields {
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        match field.name() {
            "alloc" => self.alloc = Some(value),
            "job" => self.job = Some(value),
            _ => {}
        }
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "node" {
            self.node = Some(value.to_string());
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "node" => self.node = Some(format!("{value:?}")),
            _ => {}
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for RunEvents {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if !event.metadata().target().starts_with("coop_worker::actor") {
            return;
        }
        let mut f = Fields::default();
        event.record(&mut f);
        let (Some(alloc), Some(node), Some(at)) = (f.alloc, f.node, turmoil::sim_elapsed()) else {
            return;
        };
        RUNS.with(|r| {
            let mut runs = r.borrow_mut();
            match (f.message.as_str(), f.job) {
                ("started", Some(job)) => runs.push(Run {
                    alloc,
                    job,
                    node,
                    start: at,
                    end: None,
                }),
                ("ended", _) => {
                    if let Some(run) = runs
                        .iter_mut()
                        .find(|r| r.alloc == alloc && r.node == node && r.end.is_none())
                    {
                        run.end = Some(at);
                    }
                }
                _ => {}
            }
        });
    }
}

/// Jobs by (member, request id), from a final state.
pub fn jobs_by_request(state: &ClusterState) -> BTreeMap<(String, String), Vec<u64>> {
    let mut out: BTreeMap<(String, String), Vec<u64>> = BTreeMap::new();
    for (id, job) in state.jobs() {
        out.entry((job.member.to_string(), job.request_id.clone()))
            .or_default()
            .push(id.0);
    }
    out
}

impl History {
    /// Everything the run did, in one string: two runs of one seed must
    /// give the same (the simulation is deterministic).
    pub fn fingerprint(&self) -> String {
        let mut out = String::new();
        for f in &self.faults {
            out += &format!("fault {f}\n");
        }
        for a in &self.acks {
            out += &format!("ack {} {} {}\n", a.member, a.request_id, a.job);
        }
        for a in &self.repeats {
            out += &format!("repeat {} {} {}\n", a.member, a.request_id, a.job);
        }
        out += &format!("cancelled {:?}\n", self.cancelled);
        for r in &self.runs {
            out += &format!(
                "run {} {} {} {:?} {:?}\n",
                r.alloc, r.job, r.node, r.start, r.end
            );
        }
        for s in &self.samples {
            out += &format!("sample {} {} {}\n", s.replica, s.applied, s.digest);
        }
        for f in &self.finals {
            out += &format!("final {} {} {}\n", f.replica, f.applied, f.state.digest());
        }
        out += &format!("settled {:?} ended {:?}\n", self.settled, self.faults_ended);
        out
    }
}
