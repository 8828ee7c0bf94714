//! `coop-worker`: joins a machine to a Coop pool and runs its jobs.

fn main() {
    std::process::exit(coop_worker::cli::main());
}
