//! `coop-scheduler`'s own command line (`coop_scheduler::cli`), built here
//! so the end-to-end tests can run replicas as real processes.

fn main() {
    std::process::exit(coop_scheduler::cli::main());
}
