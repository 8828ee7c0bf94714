//! A member's key and contexts: `coop key new|show`, `coop context
//! set|use|list`.

use std::path::PathBuf;

use anyhow::{bail, Result};
use serde_json::json;

use crate::identity::{generate_key, load_key, write_key, ConfigFile, Context, Settings};
use crate::output::{print_json, table, Format};

pub fn key_new(settings: &Settings, fmt: Format, force: bool) -> Result<i32> {
    let key = generate_key()?;
    write_key(&settings.key, &key, force)?;
    let public = key.public_key();
    match fmt {
        Format::Json => {
            print_json(&json!({"key_file": settings.key, "public_key": public.to_string()}))
        }
        Format::Table => {
            println!("wrote {} (readable by you alone)", settings.key.display());
            println!("public key: {public}");
            println!(
                "give it to the cooperative: it is listed at genesis, or admitted by a member vote"
            );
        }
    }
    Ok(0)
}

pub fn key_show(settings: &Settings, fmt: Format) -> Result<i32> {
    let public = load_key(&settings.key)?.public_key();
    match fmt {
        Format::Json => {
            print_json(&json!({"key_file": settings.key, "public_key": public.to_string()}))
        }
        Format::Table => println!("{public}"),
    }
    Ok(0)
}

pub fn context_set(
    name: &str,
    addr: Option<String>,
    member: Option<String>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
) -> Result<i32> {
    if name.is_empty() {
        bail!("a context needs a name");
    }
    let mut file = ConfigFile::load()?;
    let ctx = file
        .contexts
        .entry(name.to_string())
        .or_insert_with(Context::default);
    if addr.is_some() {
        ctx.addr = addr;
    }
    if member.is_some() {
        ctx.member = member;
    }
    if key.is_some() {
        ctx.key = key;
    }
    if let Some(ca) = ca {
        // Checked now, not at the first call that needs it.
        let pem = std::fs::read_to_string(&ca)
            .map_err(|e| anyhow::anyhow!("--ca {}: {e}", ca.display()))?;
        coop_proto::tls::fingerprint(&pem)?;
        ctx.ca = Some(ca);
    }
    if file.current.is_none() {
        file.current = Some(name.to_string());
    }
    file.save()?;
    println!("context {name} saved in {}", ConfigFile::path().display());
    Ok(0)
}

pub fn context_use(name: &str) -> Result<i32> {
    let mut file = ConfigFile::load()?;
    if !file.contexts.contains_key(name) {
        bail!("no context {name:?}: coop context set {name} --addr HOST:PORT --member NAME");
    }
    file.current = Some(name.to_string());
    file.save()?;
    println!("using context {name}");
    Ok(0)
}

pub fn context_list(fmt: Format) -> Result<i32> {
    let file = ConfigFile::load()?;
    if fmt == Format::Json {
        print_json(
            &json!({"current": file.current, "contexts": file.contexts.iter().map(|(n, c)| json!({
            "name": n, "addr": c.addr, "member": c.member, "key": c.key,
        })).collect::<Vec<_>>()}),
        );
        return Ok(0);
    }
    let mut t = table(&["", "CONTEXT", "ADDRESS", "MEMBER", "KEY"]);
    for (name, c) in &file.contexts {
        t.add_row(vec![
            if file.current.as_deref() == Some(name) {
                "*"
            } else {
                ""
            }
            .to_string(),
            name.clone(),
            c.addr.clone().unwrap_or_default(),
            c.member.clone().unwrap_or_default(),
            c.key
                .as_ref()
                .map(|k| k.display().to_string())
                .unwrap_or_default(),
        ]);
    }
    println!("{t}");
    Ok(0)
}
