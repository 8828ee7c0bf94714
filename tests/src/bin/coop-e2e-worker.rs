//! `coop-worker`'s own command line (`coop_worker::cli`), built here so the
//! end-to-end tests can run it as a real process.

fn main() {
    std::process::exit(coop_worker::cli::main());
}
