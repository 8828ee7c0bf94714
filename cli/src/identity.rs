//! Who the CLI acts as: the member's key file, the contexts of
//! `~/.config/coop/config.toml`, and signing member requests.
//!
//! ```text
//!  address  --addr / COOP_ADDR    > the context's addr   > 127.0.0.1:7001
//!  member   --member / COOP_MEMBER > the context's member > $USER
//!  key      --key / COOP_KEY      > the context's key    > ~/.config/coop/key
//!  context  --context / COOP_CONTEXT > `current` in config.toml
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context as _, Result};
use coop_core::{JobId, MemberId, MemberRequest, SecretKey};
use coop_proto::api::{
    AddNodeRequest, AddReplicaRequest, CancelRequest, ClusterStatusRequest, JobSpec, SubmitRequest,
};
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

use crate::client::{wait_for_cluster_id, Client};

/// Where a replica is when nothing else says.
pub const DEFAULT_ADDR: &str = "127.0.0.1:7001";

/// `$XDG_CONFIG_HOME/coop`, or `~/.config/coop`.
pub fn config_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("coop");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
    PathBuf::from(home).join(".config").join("coop")
}

pub fn default_key_path() -> PathBuf {
    config_dir().join("key")
}

/// One named cluster-and-identity, like a kubectl context.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Context {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// The cluster CA's certificate; without one, the CA a replica first
    /// presents is pinned (trust on first use).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
}

/// `config.toml`: the contexts and which one is current.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

impl ConfigFile {
    pub fn path() -> PathBuf {
        config_dir().join("config.toml")
    }

    /// The file, or an empty config when there is none.
    pub fn load() -> Result<Self> {
        let path = Self::path();
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).with_context(|| format!("{}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
        }
    }

    pub fn save(&self) -> Result<()> {
        let path = Self::path();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        }
        let text = toml::to_string(self).context("encode config")?;
        std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))
    }
}

/// What the flags, the environment and the context say, resolved once.
#[derive(Clone, Debug)]
pub struct Settings {
    pub addr: String,
    pub member: Option<String>,
    pub key: PathBuf,
    pub ca: Option<PathBuf>,
}

impl Settings {
    pub fn resolve(
        addr: Option<String>,
        context: Option<String>,
        key: Option<PathBuf>,
        ca: Option<PathBuf>,
    ) -> Result<Self> {
        let file = ConfigFile::load()?;
        let name = context.or(file.current.clone());
        let ctx =
            match &name {
                Some(n) => file.contexts.get(n).cloned().ok_or_else(|| {
                    anyhow!("no context {n:?} in {}", ConfigFile::path().display())
                })?,
                None => Context::default(),
            };
        Ok(Self {
            addr: addr
                .or(ctx.addr)
                .unwrap_or_else(|| DEFAULT_ADDR.to_string()),
            member: ctx.member,
            key: key.or(ctx.key).unwrap_or_else(default_key_path),
            ca: ca.or(ctx.ca),
        })
    }

    /// The member to act as: the flag, else the context's, else `$USER`.
    pub fn member(&self, flag: Option<String>) -> Result<String> {
        match flag
            .or_else(|| std::env::var("COOP_MEMBER").ok().filter(|m| !m.is_empty()))
            .or_else(|| self.member.clone())
            .or_else(|| std::env::var("USER").ok())
            .filter(|m| !m.is_empty())
        {
            Some(m) => Ok(m),
            None => bail!(
                "say who you are: --member NAME, COOP_MEMBER, or a context (coop context set)"
            ),
        }
    }

    /// The signer for `member`, with the key file this resolves to.
    pub fn signer(&self, member: Option<String>) -> Result<Signer> {
        Ok(Signer::new(
            MemberId::new(self.member(member)?),
            load_key(&self.key)?,
        ))
    }
}

/// A fresh key from the operating system's randomness.
pub fn generate_key() -> Result<SecretKey> {
    Ok(coop_proto::keyfile::generate()?)
}

/// Writes a secret key (hex) readable by its owner alone.
pub fn write_key(path: &Path, key: &SecretKey, overwrite: bool) -> Result<()> {
    Ok(coop_proto::keyfile::write(path, key, overwrite)?)
}

/// Reads a secret key, refusing one that others may read (as ssh does).
pub fn load_key(path: &Path) -> Result<SecretKey> {
    if !path.exists() {
        bail!(
            "no key at {}: create one with `coop key new`, or point COOP_KEY at yours",
            path.display()
        );
    }
    Ok(coop_proto::keyfile::load(path)?)
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A member and its key: signs that member's requests.
pub struct Signer {
    pub member: MemberId,
    key: Arc<SecretKey>,
    cluster_id: OnceCell<String>,
}

impl Signer {
    pub fn new(member: MemberId, key: SecretKey) -> Self {
        Self {
            member,
            key: Arc::new(key),
            cluster_id: OnceCell::new(),
        }
    }

    /// Makes this process read as this member (see `client::read_as`).
    pub fn read_as(&self) {
        crate::client::read_as(self.member.clone(), self.key.clone());
    }

    /// The cluster's id, asked once of the replica.
    async fn cluster_id(&self, client: &Client) -> Result<&str> {
        let id = self
            .cluster_id
            .get_or_try_init(|| async {
                wait_for_cluster_id(|| {
                    let mut c = client.clone();
                    async move { c.cluster_status(ClusterStatusRequest {}).await }
                })
                .await?
                .ok_or_else(|| {
                    anyhow!("the cluster has no id yet (not initialized): coop cluster init")
                })
            })
            .await?;
        Ok(id)
    }

    pub async fn submit(
        &self,
        client: &Client,
        request_id: &str,
        spec: JobSpec,
    ) -> Result<SubmitRequest> {
        let cluster = self.cluster_id(client).await?;
        // Sign exactly what the replica will decode: the core spec of this message.
        let core = coop_core::JobSpec::try_from(&spec).map_err(|e| anyhow!("invalid job: {e}"))?;
        // The env values stay private: what is signed (and recorded) is
        // each value's commitment under a salt only this member can derive
        // (from its secret key and the request id, so a retry matches).
        let salt = self.env_salt(request_id);
        let auth = self.key.sign_request(
            cluster,
            &self.member,
            request_id,
            now_ms(),
            &MemberRequest::Submit {
                spec: &core.committed(&salt),
            },
        );
        Ok(SubmitRequest {
            member: self.member.to_string(),
            request_id: request_id.to_string(),
            spec: Some(spec),
            issued_at_ms: auth.issued_at_ms,
            signature: auth.signature.0.to_vec(),
            env_salt: salt.0.to_vec(),
        })
    }

    pub async fn cancel(
        &self,
        client: &Client,
        request_id: &str,
        job: u64,
        array: bool,
    ) -> Result<CancelRequest> {
        let cluster = self.cluster_id(client).await?;
        let request = if array {
            MemberRequest::CancelArray { job: JobId(job) }
        } else {
            MemberRequest::Cancel { job: JobId(job) }
        };
        let auth = self
            .key
            .sign_request(cluster, &self.member, request_id, now_ms(), &request);
        Ok(CancelRequest {
            job_id: job,
            member: self.member.to_string(),
            request_id: request_id.to_string(),
            issued_at_ms: auth.issued_at_ms,
            signature: auth.signature.0.to_vec(),
            array,
        })
    }

    /// Asks for a replica to join the replica group, signed.
    pub async fn add_replica(
        &self,
        client: &Client,
        request_id: &str,
        id: u64,
        addr: &str,
    ) -> Result<AddReplicaRequest> {
        let cluster = self.cluster_id(client).await?;
        let auth = self.key.sign_request(
            cluster,
            &self.member,
            request_id,
            now_ms(),
            &MemberRequest::AddReplica { id, addr },
        );
        Ok(AddReplicaRequest {
            id,
            addr: addr.to_string(),
            member: self.member.to_string(),
            request_id: request_id.to_string(),
            issued_at_ms: auth.issued_at_ms,
            signature: auth.signature.0.to_vec(),
        })
    }

    /// The secret salt of a request's env commitments.
    fn env_salt(&self, request_id: &str) -> coop_core::EnvSalt {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(b"coop/v1/env-salt\0");
        h.update(self.key.to_bytes());
        h.update(request_id.as_bytes());
        let digest: [u8; 32] = h.finalize().into();
        let mut salt = [0u8; 16];
        salt.copy_from_slice(&digest[..16]);
        coop_core::EnvSalt(salt)
    }

    /// Signs any member request for this cluster, issued now.
    pub async fn sign(
        &self,
        client: &Client,
        request_id: &str,
        request: &MemberRequest<'_>,
    ) -> Result<coop_core::Auth> {
        let cluster = self.cluster_id(client).await?;
        Ok(self
            .key
            .sign_request(cluster, &self.member, request_id, now_ms(), request))
    }

    /// Asks for a replica to leave the replica group, signed.
    pub async fn remove_replica(
        &self,
        client: &Client,
        request_id: &str,
        id: u64,
    ) -> Result<coop_proto::api::RemoveReplicaRequest> {
        let cluster = self.cluster_id(client).await?;
        let auth = self.key.sign_request(
            cluster,
            &self.member,
            request_id,
            now_ms(),
            &MemberRequest::RemoveReplica { id },
        );
        Ok(coop_proto::api::RemoveReplicaRequest {
            id,
            member: self.member.to_string(),
            request_id: request_id.to_string(),
            issued_at_ms: auth.issued_at_ms,
            signature: auth.signature.0.to_vec(),
        })
    }

    /// Authorizes a node of this member's with `key`, signed.
    pub async fn add_node(
        &self,
        client: &Client,
        request_id: &str,
        node: &str,
        key: &coop_core::PublicKey,
    ) -> Result<AddNodeRequest> {
        let cluster = self.cluster_id(client).await?;
        let node_id = coop_core::NodeId::new(node);
        let auth = self.key.sign_request(
            cluster,
            &self.member,
            request_id,
            now_ms(),
            &MemberRequest::AddNode {
                node: &node_id,
                key,
            },
        );
        Ok(AddNodeRequest {
            node_id: node.to_string(),
            member: self.member.to_string(),
            key: key.to_string(),
            request_id: request_id.to_string(),
            issued_at_ms: auth.issued_at_ms,
            signature: auth.signature.0.to_vec(),
        })
    }
}
