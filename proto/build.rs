//! Compiles the protos with protox (pure Rust), so no system `protoc` is
//! needed, and lists every RPC (`coop_proto::RPCS`) so that tests can check
//! that each one is covered.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["coop/api.proto", "coop/worker.proto", "coop/raft.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    let mut rpcs = Vec::new();
    for file in &fds.file {
        for service in &file.service {
            for method in &service.method {
                rpcs.push(format!(
                    "{}.{}/{}",
                    file.package(),
                    service.name(),
                    method.name()
                ));
            }
        }
    }
    let list: String = rpcs.iter().map(|r| format!("    {r:?},\n")).collect();
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("rpcs.rs");
    std::fs::write(
        out,
        format!("/// Every RPC of every service, `package.Service/Method`.\npub const RPCS: &[&str] = &[\n{list}];\n"),
    )?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
