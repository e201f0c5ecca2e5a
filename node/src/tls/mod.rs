//! TLS for clients and peers (rustls with the ring provider), from PEM files that are read
//! again when they change: a renewed certificate is served to the next connection, with no
//! restart and no failed request.
//!
//! One port serves clients and peers. With `--tls-cert`/`--tls-key` it speaks TLS only. A
//! client certificate, when one is sent, is checked at the handshake against the CAs this node
//! trusts (`--tls-client-ca` for clients, `--peer-ca` for members); a certificate neither
//! signed is refused there. What a connection proved ([`ConnIdentity`]) travels with each of
//! its requests, and `api/mod.rs` decides from it: once `--peer-ca` is set, the Raft routes
//! accept only a certificate from the peer CA whose name `--peer-names` allows, never a key.
//! Dialing a peer, a member presents its own certificate and checks the peer's against the
//! peer CA and the address it dials.

mod conn;
pub mod names;

use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::RwLock;
use std::time::Duration;

use rustls::RootCertStore;
use rustls::ServerConfig;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::client::danger::ServerCertVerified;
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::ServerName;
use rustls::pki_types::UnixTime;
use rustls::pki_types::pem::PemObject;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::sign::CertifiedKey;

pub use self::conn::Conn;
pub use self::conn::MovableTcp;
pub use self::names::NamePattern;

/// How often the files are read again to see whether they changed.
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// The TLS flags, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CAs whose client certificates authenticate clients; with it, the data and admin routes
    /// need one (besides a key).
    pub client_ca: Option<PathBuf>,
    /// CAs whose certificates identify members: peer traffic is mutual TLS.
    pub peer_ca: Option<PathBuf>,
    pub peer_names: Vec<NamePattern>,
    /// The host this node advertises to its peers: its own certificate must be valid for it.
    pub advertise_host: String,
    /// Turning TLS on in a running cluster: plaintext is served too (and its Raft routes take
    /// the admin key).
    pub accept_plaintext: bool,
    /// Turning TLS on in a running cluster: peers are dialed in plaintext.
    pub dial_peers_plaintext: bool,
}

/// What a connection proved at its handshake; each of its requests carries it.
#[derive(Debug, Clone, Default)]
pub struct ConnIdentity {
    pub tls: bool,
    /// The first name of a client certificate signed by `--tls-client-ca`.
    pub client: Option<Arc<str>>,
    /// The name of a member: a certificate from `--peer-ca` with a name `--peer-names` allows.
    pub peer: Option<Arc<str>>,
    /// Why a certificate was not taken for a member's, to say so to the caller.
    pub not_a_peer: Option<Arc<str>>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path} holds no PEM private key (PKCS#8, PKCS#1 or SEC1): {message}")]
    NoKey { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Unusable { path: PathBuf, message: String },
    #[error("the certificate in {path} is valid from {not_before} to {not_after} (UTC), not now")]
    NotValidNow {
        path: PathBuf,
        not_before: String,
        not_after: String,
    },
    #[error(
        "the certificate in {cert} would be refused by this node's peers (peer CA {ca}): {message}"
    )]
    NotAPeerCertificate {
        cert: PathBuf,
        ca: PathBuf,
        message: String,
    },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The node's TLS: the files as last read, and what was built from them.
pub struct Tls {
    settings: Settings,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<Loaded>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Everything built from one reading of the files.
struct Loaded {
    files: Files,
    key: Arc<CertifiedKey>,
    not_after: i64,
    server: Arc<ServerConfig>,
    /// The peer CA alone: whether a client certificate is a member's.
    peer_clients: Option<Arc<dyn ClientCertVerifier>>,
    /// The client CA alone: whether a client certificate is a client's.
    clients: Option<Arc<dyn ClientCertVerifier>>,
    /// The peer CA alone, dialing a member.
    peer_servers: Option<Arc<WebPkiServerVerifier>>,
}

impl Tls {
    /// Reads the files and checks them as a peer and a client would: a certificate that is
    /// expired, not yet valid, not matching its key or (with `--peer-ca`) not signed by the
    /// peer CA, not valid for the advertised host or not named in `--peer-names` is refused.
    pub fn load(settings: Settings) -> Result<Arc<Self>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let files = read_files(&settings)?;
        let loaded = build(&settings, &provider, files)?;
        Ok(Arc::new(Self {
            settings,
            provider,
            current: RwLock::new(Arc::new(loaded)),
        }))
    }

    fn current(&self) -> Arc<Loaded> {
        self.current.read().expect("not poisoned").clone()
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Whether peers talk mutual TLS (and the Raft routes take certificates only).
    pub fn peer_tls(&self) -> bool {
        self.settings.peer_ca.is_some()
    }

    /// Whether clients must send a certificate from `--tls-client-ca`.
    pub fn client_certificates_required(&self) -> bool {
        self.settings.client_ca.is_some()
    }

    /// The server configuration for the next connection.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.current().server.clone()
    }

    /// When the served certificate expires (seconds since the epoch).
    pub fn not_after(&self) -> i64 {
        self.current().not_after
    }

    /// What the certificates a connection's client sent (already verified at the handshake
    /// against the client and peer CAs together) make it.
    pub fn identify(&self, sent: Option<&[CertificateDer<'static>]>) -> ConnIdentity {
        let mut identity = ConnIdentity {
            tls: true,
            ..Default::default()
        };
        let Some((end_entity, intermediates)) = sent.and_then(|c| c.split_first()) else {
            return identity;
        };
        let names = match certificate_names(end_entity) {
            Ok(names) => names,
            Err(e) => {
                identity.not_a_peer = Some(format!("its certificate is unreadable: {e}").into());
                return identity;
            }
        };
        let loaded = self.current();
        if let Some(peers) = &loaded.peer_clients {
            match peers.verify_client_cert(end_entity, intermediates, UnixTime::now()) {
                Ok(_) => match names::first_allowed(&self.settings.peer_names, &names) {
                    Some(name) => identity.peer = Some(name.into()),
                    None => {
                        identity.not_a_peer =
                            Some(names::not_allowed(&self.settings.peer_names, &names).into())
                    }
                },
                Err(e) => {
                    identity.not_a_peer =
                        Some(format!("its certificate is not from the peer CA: {e}").into())
                }
            }
        }
        if let Some(clients) = &loaded.clients
            && identity.peer.is_none()
            && clients
                .verify_client_cert(end_entity, intermediates, UnixTime::now())
                .is_ok()
        {
            identity.client = Some(names.first().cloned().unwrap_or_default().into());
        }
        identity
    }

    /// The client side of peer traffic: the peer CA checks the member dialed, and this node's
    /// certificate (as reloaded) is its own credential. `None` without `--peer-ca`, or while
    /// peers are dialed in plaintext (`--dial-peers-plaintext`).
    pub fn peer_client_config(self: &Arc<Self>) -> Option<rustls::ClientConfig> {
        self.settings.peer_ca.as_ref()?;
        if self.settings.dial_peers_plaintext {
            return None;
        }
        let config = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PeerServers(self.clone())))
            .with_client_cert_resolver(Arc::new(OwnCertificate(self.clone())));
        Some(config)
    }

    /// Reads the files again; on a change, serves what they now hold, or keeps what it has and
    /// says why. `Ok(true)` when it changed what it serves.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let files = read_files(&self.settings)?;
        if files == self.current().files {
            return Ok(false);
        }
        let loaded = build(&self.settings, &self.provider, files)?;
        *self.current.write().expect("not poisoned") = Arc::new(loaded);
        Ok(true)
    }

    /// Reads the files every [`RELOAD_EVERY`] and logs what changed, or why a change was not
    /// taken (once per change); keeps the expiry metric current.
    pub fn spawn_reload(
        self: &Arc<Self>,
        metrics: crate::metrics::Metrics,
        stopping: tokio_util::sync::CancellationToken,
    ) {
        let tls = self.clone();
        metrics.set_tls_certificate_expiry(tls.not_after());
        tokio::spawn(async move {
            let mut refused: Option<String> = None;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(RELOAD_EVERY) => {}
                    _ = stopping.cancelled() => return,
                }
                let tls = tls.clone();
                let reloaded = tokio::task::spawn_blocking(move || {
                    let result = tls.reload();
                    (result, tls.not_after())
                })
                .await;
                match reloaded {
                    Ok((Ok(true), not_after)) => {
                        refused = None;
                        metrics.set_tls_certificate_expiry(not_after);
                        tracing::info!(
                            valid_until = %format_time(not_after),
                            "TLS certificates changed on disk: serving the new ones to new connections"
                        );
                    }
                    Ok((Ok(false), _)) => {}
                    Ok((Err(e), _)) => {
                        let message = e.to_string();
                        if refused.as_ref() != Some(&message) {
                            tracing::error!(error = %message, "TLS certificates changed on disk but cannot be used; still serving the previous ones");
                            refused = Some(message);
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "reading the TLS certificates failed"),
                }
            }
        });
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// The files' bytes as read, to build from and to tell when they change.
#[derive(PartialEq)]
struct Files {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
    peer_ca: Option<Vec<u8>>,
}

fn read_files(settings: &Settings) -> Result<Files, TlsError> {
    let read_ca = |ca: &Option<PathBuf>| ca.as_deref().map(read).transpose();
    Ok(Files {
        cert: read(&settings.cert)?,
        key: read(&settings.key)?,
        client_ca: read_ca(&settings.client_ca)?,
        peer_ca: read_ca(&settings.peer_ca)?,
    })
}

fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Unusable {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

fn roots(path: &Path, pem: &[u8], into: &mut RootCertStore) -> Result<(), TlsError> {
    for cert in certificates(path, pem)? {
        into.add(cert).map_err(|e| TlsError::Unusable {
            path: path.to_path_buf(),
            message: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(())
}

fn build(
    settings: &Settings,
    provider: &Arc<CryptoProvider>,
    files: Files,
) -> Result<Loaded, TlsError> {
    let chain = certificates(&settings.cert, &files.cert)?;
    let key = PrivateKeyDer::from_pem_slice(&files.key).map_err(|e| TlsError::NoKey {
        path: settings.key.clone(),
        message: e.to_string(),
    })?;
    let certified =
        CertifiedKey::from_der(chain.clone(), key, provider).map_err(|e| TlsError::Unusable {
            path: settings.key.clone(),
            message: format!("the key does not go with {}: {e}", settings.cert.display()),
        })?;
    let (not_before, not_after) = validity(&chain[0]).map_err(|message| TlsError::Unusable {
        path: settings.cert.clone(),
        message,
    })?;
    let now = crate::clock::now_ms() as i64 / 1000;
    if now < not_before || now > not_after {
        return Err(TlsError::NotValidNow {
            path: settings.cert.clone(),
            not_before: format_time(not_before),
            not_after: format_time(not_after),
        });
    }

    let mut client_roots = RootCertStore::empty();
    if let (Some(ca), Some(pem)) = (&settings.client_ca, &files.client_ca) {
        roots(ca, pem, &mut client_roots)?;
    }
    let mut peer_roots = RootCertStore::empty();
    if let (Some(ca), Some(pem)) = (&settings.peer_ca, &files.peer_ca) {
        roots(ca, pem, &mut peer_roots)?;
    }

    let unusable_ca = |ca: &Path| {
        let path = ca.to_path_buf();
        move |e: rustls::client::VerifierBuilderError| TlsError::Unusable {
            path,
            message: e.to_string(),
        }
    };
    let clients = match &settings.client_ca {
        Some(ca) => Some(
            WebPkiClientVerifier::builder_with_provider(
                Arc::new(client_roots.clone()),
                provider.clone(),
            )
            .build()
            .map_err(unusable_ca(ca))?,
        ),
        None => None,
    };
    let mut peer_clients = None;
    let mut peer_servers = None;
    if let Some(ca) = &settings.peer_ca {
        let peer_roots = Arc::new(peer_roots.clone());
        let clients =
            WebPkiClientVerifier::builder_with_provider(peer_roots.clone(), provider.clone())
                .build()
                .map_err(unusable_ca(ca))?;
        let servers = WebPkiServerVerifier::builder_with_provider(peer_roots, provider.clone())
            .build()
            .map_err(unusable_ca(ca))?;
        check_own_certificate(settings, ca, &chain, clients.as_ref(), servers.as_ref())?;
        peer_clients = Some(clients);
        peer_servers = Some(servers);
    }

    // At the handshake a client certificate may come from either CA; none is required there
    // (probes and key-only clients send none), the routes decide what each may call.
    let mut trusted = client_roots;
    trusted.extend(peer_roots.roots);
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = if trusted.is_empty() {
        builder.with_no_client_auth()
    } else {
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(trusted), provider.clone())
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError::Config(rustls::Error::General(e.to_string())))?;
        builder.with_client_cert_verifier(verifier)
    };
    let certified = Arc::new(certified);
    let mut server = builder.with_cert_resolver(Arc::new(Fixed(certified.clone())));
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Loaded {
        files,
        key: certified,
        not_after,
        server: Arc::new(server),
        peer_clients,
        clients,
        peer_servers,
    })
}

/// With peer TLS, this node's own certificate must pass what its peers will check: as a
/// client (the peer CA, a name `--peer-names` allows) and as a server (the advertised host).
fn check_own_certificate(
    settings: &Settings,
    ca: &Path,
    chain: &[CertificateDer<'static>],
    as_client: &dyn ClientCertVerifier,
    as_server: &WebPkiServerVerifier,
) -> Result<(), TlsError> {
    let refused = |message: String| TlsError::NotAPeerCertificate {
        cert: settings.cert.clone(),
        ca: ca.to_path_buf(),
        message,
    };
    let now = UnixTime::now();
    as_client
        .verify_client_cert(&chain[0], &chain[1..], now)
        .map_err(|e| refused(format!("as a client: {e}")))?;
    let host = ServerName::try_from(settings.advertise_host.clone()).map_err(|e| {
        refused(format!(
            "the advertised host {:?}: {e}",
            settings.advertise_host
        ))
    })?;
    as_server
        .verify_server_cert(&chain[0], &chain[1..], &host, &[], now)
        .map_err(|e| {
            refused(format!(
                "as a server for the advertised host {}: {e}",
                settings.advertise_host
            ))
        })?;
    let names = certificate_names(&chain[0]).map_err(refused)?;
    if names::first_allowed(&settings.peer_names, &names).is_none() {
        return Err(refused(names::not_allowed(&settings.peer_names, &names)));
    }
    Ok(())
}

/// The DNS names and IP addresses a certificate is for (its subject alternative names).
pub fn certificate_names(der: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => names.push(dns.to_ascii_lowercase()),
                GeneralName::IPAddress(bytes) => {
                    let ip = match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes).map(std::net::IpAddr::from).ok(),
                        16 => <[u8; 16]>::try_from(*bytes)
                            .map(std::net::IpAddr::from)
                            .ok(),
                        _ => None,
                    };
                    names.extend(ip.map(|ip| ip.to_string()));
                }
                _ => {}
            }
        }
    }
    Ok(names)
}

/// A certificate's validity period (seconds since the epoch).
fn validity(der: &CertificateDer<'_>) -> Result<(i64, i64), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let validity = cert.validity();
    Ok((
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    ))
}

/// Seconds since the epoch as RFC 3339 (UTC).
pub fn format_time(secs: i64) -> String {
    x509_parser::time::ASN1Time::from_timestamp(secs)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| secs.to_string())
}

/// The served certificate: the one read last when the connection started.
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl rustls::server::ResolvesServerCert for Fixed {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// This node's certificate as a client of its peers, as reloaded.
#[derive(Debug)]
struct OwnCertificate(Arc<Tls>);

impl rustls::client::ResolvesClientCert for OwnCertificate {
    fn resolve(&self, _: &[&[u8]], _: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Checks a dialed member's certificate against the peer CA as reloaded.
#[derive(Debug)]
struct PeerServers(Arc<Tls>);

impl PeerServers {
    fn verifier(&self) -> Arc<WebPkiServerVerifier> {
        self.0
            .current()
            .peer_servers
            .clone()
            .expect("built only with a peer CA")
    }
}

impl ServerCertVerifier for PeerServers {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.verifier().verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.verifier().supported_verify_schemes()
    }
}
