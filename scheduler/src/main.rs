//! `coop-scheduler`: runs one replica of Coop's scheduler.

fn main() {
    std::process::exit(coop_scheduler::cli::main());
}
