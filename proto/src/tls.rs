//! TLS for Coop: the cluster CA, replica certificates, and trust on first
//! use for clients and workers.
//!
//! ```text
//!  cluster CA (ca.pem, ca.key)          made once by `coop cluster ca`
//!    └─ replica certificate             one per replica (`coop cluster cert`),
//!         names "coop-replica"           server and client auth (mutual TLS
//!                                        between replicas)
//!  client / worker: pins the CA          first contact: the CA the replica
//!                                        presents is recorded (like ssh's
//!                                        known_hosts); later: only it is trusted
//! ```
//!
//! A replica is named by what it is, not where it is: every replica
//! certificate carries the name `coop-replica`, and clients verify that name
//! against the pinned cluster CA, so an address can change without
//! reissuing certificates while no one outside the CA can pose as a replica.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// The name every replica certificate carries and every client checks.
pub const REPLICA_NAME: &str = "coop-replica";

const CA_NAME: &str = "coop cluster CA";

/// How long a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot reach {addr} to learn its CA: {message}")]
    Probe { addr: String, message: String },
    #[error("{0} is not a PEM certificate")]
    NotPem(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The CA's own certificate parameters: the same every time, so a stored
/// CA key can issue again (the issuer name is the CA's subject).
fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, CA_NAME);
    p.distinguished_name = name;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

/// The cluster's certificate authority: it issues replica certificates.
/// Its key is the one secret that admits a machine to the replica group.
pub struct ClusterCa {
    pub cert_pem: String,
    key_pem: String,
}

/// A replica's TLS identity: the cluster CA, and its own certificate
/// (followed by the CA's, so a client can learn the CA on first contact)
/// with its key.
#[derive(Clone)]
pub struct ReplicaIdentity {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// The files of a CA directory.
pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca.key";

impl ClusterCa {
    /// A new CA with a fresh ECDSA P-256 key.
    pub fn generate() -> Result<Self, TlsError> {
        let key = KeyPair::generate()?;
        let cert = ca_params().self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Reads `ca.pem` and `ca.key` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, TlsError> {
        let cert = dir.join(CA_CERT_FILE);
        let key = dir.join(CA_KEY_FILE);
        Ok(Self {
            cert_pem: std::fs::read_to_string(&cert).map_err(io(&cert))?,
            key_pem: std::fs::read_to_string(&key).map_err(io(&key))?,
        })
    }

    /// Writes `ca.pem` and `ca.key` (mode 0600) into `dir`; never overwrites.
    pub fn save(&self, dir: &Path) -> Result<(), TlsError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        write_new(&dir.join(CA_CERT_FILE), &self.cert_pem, 0o644)?;
        write_new(&dir.join(CA_KEY_FILE), &self.key_pem, 0o600)
    }

    /// A certificate for one replica (server and client authentication).
    /// Its key is Ed25519: the same key signs the replica's checkpoints,
    /// so the CA's certificate is what vouches for them.
    pub fn issue_replica(&self) -> Result<ReplicaIdentity, TlsError> {
        let issuer = Issuer::new(ca_params(), KeyPair::from_pem(&self.key_pem)?);
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
        let mut p = CertificateParams::new(vec![REPLICA_NAME.to_string()])?;
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, REPLICA_NAME);
        p.distinguished_name = name;
        p.is_ca = IsCa::ExplicitNoCa;
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = p.signed_by(&key, &issuer)?;
        Ok(ReplicaIdentity {
            ca_pem: self.cert_pem.clone(),
            cert_pem: format!("{}{}", cert.pem(), self.cert_pem),
            key_pem: key.serialize_pem(),
        })
    }
}

fn write_new(path: &Path, text: &str, mode: u32) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io(path))?;
    f.write_all(text.as_bytes()).map_err(io(path))
}

impl ReplicaIdentity {
    /// Reads the CA certificate, the replica certificate and its key.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Self, TlsError> {
        Ok(Self {
            ca_pem: std::fs::read_to_string(ca).map_err(io(ca))?,
            cert_pem: std::fs::read_to_string(cert).map_err(io(cert))?,
            key_pem: std::fs::read_to_string(key).map_err(io(key))?,
        })
    }

    /// Writes `replica.pem` and `replica.key` (mode 0600) into `dir`.
    pub fn save(&self, dir: &Path) -> Result<(), TlsError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        write_new(&dir.join("replica.pem"), &self.cert_pem, 0o644)?;
        write_new(&dir.join("replica.key"), &self.key_pem, 0o600)
    }

    /// The replica port: TLS for everyone; a client certificate is asked
    /// for and, when given, must chain to the cluster CA (replicas give
    /// theirs; what only replicas may call checks for it).
    pub fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
            .client_auth_optional(true)
            .timeout(HANDSHAKE_TIMEOUT)
    }

    /// The replica's key as an Ed25519 signing key (for checkpoints), or
    /// `None` for a certificate of another kind (made before replica keys
    /// were Ed25519: issue a new one with `coop cluster cert`).
    pub fn signing_key(&self) -> Option<coop_core::SecretKey> {
        let block = pem::parse(&self.key_pem).ok()?;
        ed25519_seed(block.contents()).map(|seed| coop_core::SecretKey::from_bytes(&seed))
    }

    /// Calls to other replicas: mutual TLS with this replica's certificate.
    pub fn client(&self) -> ClientTlsConfig {
        client(&self.ca_pem).identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
    }
}

/// Calls to replicas, trusting only the cluster CA.
pub fn client(ca_pem: &str) -> ClientTlsConfig {
    ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name(REPLICA_NAME)
        .timeout(HANDSHAKE_TIMEOUT)
}

/// The SHA-256 fingerprint of the first certificate in `pem`, as people
/// compare them (`ab:cd:...`).
pub fn fingerprint(pem: &str) -> Result<String, TlsError> {
    let der = first_der(pem)?;
    let digest = Sha256::digest(&der);
    Ok(digest
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":"))
}

fn first_der(pem: &str) -> Result<Vec<u8>, TlsError> {
    let parsed = pem::parse_many(pem).map_err(|e| TlsError::NotPem(e.to_string()))?;
    parsed
        .into_iter()
        .find(|p| p.tag() == "CERTIFICATE")
        .map(|p| p.into_contents())
        .ok_or_else(|| TlsError::NotPem("no CERTIFICATE block".into()))
}

/// Trust on first use: connects to `addr` accepting whatever it presents,
/// and returns the last certificate of its chain (a replica sends the
/// cluster CA there) as PEM. The caller pins it; every later connection
/// verifies against it, so a changed CA is noticed.
pub async fn probe_ca(addr: &str) -> Result<String, TlsError> {
    let fail = |message: String| TlsError::Probe {
        addr: addr.to_string(),
        message,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let recorder = Arc::new(Recorder {
        chain: Mutex::new(Vec::new()),
        provider: provider.clone(),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(recorder.clone())
        .with_no_client_auth();
    let tcp = tokio::time::timeout(HANDSHAKE_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| fail("timed out".into()))?
        .map_err(|e| fail(e.to_string()))?;
    let name = ServerName::try_from(REPLICA_NAME).map_err(|e| fail(e.to_string()))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, tcp))
        .await
        .map_err(|_| fail("the TLS handshake timed out".into()))?
        .map_err(|e| {
            fail(format!(
                "TLS handshake: {e} (is it a coop replica with TLS?)"
            ))
        })?;
    let chain = recorder.chain.lock().unwrap_or_else(|p| p.into_inner());
    let ca = chain
        .last()
        .ok_or_else(|| fail("it presented no certificate".into()))?;
    Ok(pem::encode(&pem::Pem::new("CERTIFICATE", ca.to_vec())))
}

/// Accepts any server certificate during a probe and keeps the chain.
#[derive(Debug)]
struct Recorder {
    chain: Mutex<Vec<CertificateDer<'static>>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut chain = vec![end_entity.clone().into_owned()];
        chain.extend(intermediates.iter().map(|c| c.clone().into_owned()));
        *self.chain.lock().unwrap_or_else(|p| p.into_inner()) = chain;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Whether a call came over a connection whose client certificate chains
/// to the cluster CA: only replicas hold one.
pub fn from_replica<T>(request: &tonic::Request<T>) -> bool {
    request.peer_certs().is_some_and(|c| !c.is_empty())
}

/// The name in a node's self-signed certificate (which means nothing by
/// itself: see `node_channel`).
pub const NODE_NAME: &str = "coop-node";

/// A node's TLS identity from its node key: a self-signed certificate for
/// the worker's log service. What makes it the node is the key: replicas
/// check the handshake signature against the key the node's owner
/// authorized (`node_channel`), as with raw public keys (RFC 7250).
pub fn node_identity(key: &coop_core::SecretKey) -> Result<Identity, TlsError> {
    let mut der = ED25519_PKCS8_PREFIX.to_vec();
    der.extend_from_slice(&key.to_bytes());
    let pkcs8 = rustls::pki_types::PrivatePkcs8KeyDer::from(der);
    let pair = KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &rcgen::PKCS_ED25519)?;
    let mut p = CertificateParams::new(vec![NODE_NAME.to_string()])?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, NODE_NAME);
    p.distinguished_name = name;
    let cert = p.self_signed(&pair)?;
    Ok(Identity::from_pem(cert.pem(), pair.serialize_pem()))
}

/// PKCS#8 v1 for an Ed25519 seed (RFC 8410): this prefix, then the 32 bytes.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// The seed of an Ed25519 PKCS#8 key, v1 or v2 (RFC 8410, RFC 5958): the
/// algorithm identifier and the octet string around it are fixed.
fn ed25519_seed(der: &[u8]) -> Option<[u8; 32]> {
    const ALGORITHM_AND_SEED: [u8; 11] = [
        0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
    ];
    if der.len() < 48 || der[0] != 0x30 || der[5..16] != ALGORITHM_AND_SEED {
        return None;
    }
    der[16..48].try_into().ok()
}

/// Checks that `cert_pem` (a replica's chain, its own certificate first)
/// is one the cluster CA `ca_pem` issued for a replica and that its key
/// made `signature` over `message`: what vouches for a checkpoint.
pub fn vouches(
    ca_pem: &str,
    cert_pem: &str,
    message: &[u8],
    signature: &[u8],
) -> Result<(), String> {
    let ca = pem::parse(ca_pem).map_err(|e| format!("the CA: {e}"))?;
    let cert = pem::parse(cert_pem).map_err(|e| format!("the certificate: {e}"))?;
    let ca_der = CertificateDer::from(ca.contents());
    let anchor = webpki::anchor_from_trusted_cert(&ca_der).map_err(|e| format!("the CA: {e}"))?;
    let cert_der = CertificateDer::from(cert.contents());
    let ee =
        webpki::EndEntityCert::try_from(&cert_der).map_err(|e| format!("the certificate: {e}"))?;
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &[anchor],
        &[],
        UnixTime::now(),
        webpki::KeyUsage::server_auth(),
        None,
        None,
    )
    .map_err(|e| format!("the certificate is not the cluster CA's: {e}"))?;
    ee.verify_signature(webpki::ring::ED25519, message, signature)
        .map_err(|e| format!("the signature is not the certificate's key's: {e}"))
}

/// One replica's checkpoint signature, checked: a head of `cluster_id`,
/// a signature that verifies, and (with the cluster CA) a certificate from
/// the CA that vouches for the key. What replicas and auditors both check.
pub fn check_checkpoint(
    s: &coop_core::checkpoint::Signed,
    cluster_id: &str,
    ca_pem: Option<&str>,
) -> Result<(), String> {
    if s.head.cluster_id != cluster_id {
        return Err(format!(
            "replica {} signed a head of cluster {:?}",
            s.replica, s.head.cluster_id
        ));
    }
    if !s.verifies() {
        return Err(format!("replica {}'s signature does not verify", s.replica));
    }
    if let Some(ca) = ca_pem {
        vouches(ca, &s.cert_pem, &s.head.signing_bytes(), &s.signature.0)
            .map_err(|e| format!("replica {}: {e}", s.replica))?;
    }
    Ok(())
}

/// SubjectPublicKeyInfo of an Ed25519 key (RFC 8410): this prefix, then the key.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// The longest a replica waits for an answer from another process on a
/// caller's behalf (the leader, for a forwarded call; a worker, for logs):
/// a peer that accepted the connection and went silent costs the caller an
/// error, not a hang. The caller's own deadline, in `grpc-timeout`, is
/// shorter when it has one.
pub const PEER_CALL_DEADLINE: Duration = Duration::from_secs(10);

/// A channel to a worker's log service over TLS 1.3 that only the holder
/// of `node_key` can answer: the handshake's signature must verify against
/// that key (the certificate itself is not trusted for anything).
pub fn node_channel(addr: &str, node_key: [u8; 32]) -> Result<tonic::transport::Channel, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut spki = ED25519_SPKI_PREFIX.to_vec();
    spki.extend_from_slice(&node_key);
    let verifier = Arc::new(NodeKey {
        spki,
        provider: provider.clone(),
    });
    let fail = |e: String| TlsError::Probe {
        addr: addr.to_string(),
        message: e,
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| fail(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let target = addr.to_string();
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| fail(e.to_string()))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(PEER_CALL_DEADLINE);
    Ok(endpoint.connect_with_connector_lazy(tower::service_fn(
        move |_: tonic::codegen::http::Uri| {
            let (connector, target) = (connector.clone(), target.clone());
            async move {
                let tcp = tokio::net::TcpStream::connect(&target).await?;
                tcp.set_nodelay(true)?;
                let name = ServerName::try_from(NODE_NAME).map_err(std::io::Error::other)?;
                let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, tcp))
                    .await
                    .map_err(|_| std::io::Error::other("TLS handshake timed out"))??;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        },
    )))
}

/// Accepts any certificate and checks the handshake against the expected
/// node key instead (TLS 1.3 only).
#[derive(Debug)]
struct NodeKey {
    spki: Vec<u8>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for NodeKey {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.3 only".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        _cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature_with_raw_key(
            message,
            &rustls::pki_types::SubjectPublicKeyInfoDer::from(self.spki.as_slice()),
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_key_signs_what_its_ca_vouches_for() {
        let ca = ClusterCa::generate().unwrap();
        let replica = ca.issue_replica().unwrap();
        let key = replica.signing_key().expect("replica keys are Ed25519");
        let head = coop_core::checkpoint::Head {
            cluster_id: "c".into(),
            size: 7,
            root: "aa".into(),
            state_digest: "dd".into(),
            policy_version: 1,
            at_ms: 3,
        };
        let signed = coop_core::checkpoint::Signed::sign(head, 1, &key, replica.cert_pem.clone());
        assert!(signed.verifies());
        let message = signed.head.signing_bytes();
        vouches(
            &ca.cert_pem,
            &replica.cert_pem,
            &message,
            &signed.signature.0,
        )
        .unwrap();
        // Another CA does not vouch for it.
        let other = ClusterCa::generate().unwrap();
        let err = vouches(
            &other.cert_pem,
            &replica.cert_pem,
            &message,
            &signed.signature.0,
        )
        .unwrap_err();
        assert!(err.contains("not the cluster CA's"), "{err}");
        // Its key did not sign another head.
        let mut changed = message.clone();
        changed[30] ^= 1;
        assert!(vouches(
            &ca.cert_pem,
            &replica.cert_pem,
            &changed,
            &signed.signature.0
        )
        .is_err());
        // A certificate from the CA does not vouch for another key's signature.
        let stranger = coop_core::SecretKey::from_bytes(&[9; 32]);
        let forged =
            coop_core::checkpoint::Signed::sign(signed.head.clone(), 1, &stranger, String::new());
        assert!(vouches(
            &ca.cert_pem,
            &replica.cert_pem,
            &message,
            &forged.signature.0
        )
        .is_err());
    }
}
