//! `concordance certs`: a CA and the node and client certificates it signs, for people
//! without a PKI of their own. Keys are ECDSA P-256, written 0600; nothing is overwritten.
//!
//! ```text
//! concordance certs ca --dir certs
//! concordance certs node --dir certs --name node1 --host node1.example.com --host 10.0.0.11
//! concordance certs client --dir certs --name agent-a17
//! ```

use std::io::Write;
use std::net::IpAddr;
use std::path::Path;
use std::path::PathBuf;

use rcgen::BasicConstraints;
use rcgen::CertificateParams;
use rcgen::DnType;
use rcgen::ExtendedKeyUsagePurpose;
use rcgen::IsCa;
use rcgen::Issuer;
use rcgen::KeyPair;
use rcgen::KeyUsagePurpose;
use rcgen::SanType;

use crate::error::BoxError;

#[derive(Debug, clap::Subcommand)]
pub enum CertsCommand {
    /// Make a CA: `ca.crt` (give it to nodes and clients) and `ca.key` (keep it safe).
    Ca {
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// The CA's name (its subject's common name).
        #[arg(long, default_value = "Concordance CA")]
        name: String,
        #[arg(long, default_value_t = 3650, value_parser = clap::value_parser!(u32).range(1..=36500))]
        days: u32,
    },
    /// Make a node's certificate, signed by the CA in `--dir`: `<name>.crt` and `<name>.key`,
    /// valid for serving clients and peers and as a client of its peers.
    Node {
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// The node's name: the files' names and its certificate's common name.
        #[arg(long)]
        name: String,
        /// A host name or IP address clients and peers reach it by (repeat for each; its
        /// `--advertise` host must be one).
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=36500))]
        days: u32,
    },
    /// Make a client's certificate, signed by the CA in `--dir`: `<name>.crt` and `<name>.key`.
    Client {
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// The client's name: the files' names, its certificate's common name and DNS name.
        #[arg(long)]
        name: String,
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=36500))]
        days: u32,
    },
}

pub fn run(command: CertsCommand) -> Result<(), BoxError> {
    match command {
        CertsCommand::Ca { dir, name, days } => make_ca(&dir, &name, days),
        CertsCommand::Node {
            dir,
            name,
            hosts,
            days,
        } => make_signed(&dir, &name, &hosts, days, Kind::Node),
        CertsCommand::Client { dir, name, days } => {
            make_signed(&dir, &name, std::slice::from_ref(&name), days, Kind::Client)
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Node,
    Client,
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = time::OffsetDateTime::now_utc();
    // A minute back: a peer whose clock is a little behind still takes it at once.
    params.not_before = now - time::Duration::minutes(1);
    params.not_after = now + time::Duration::days(i64::from(days));
}

fn make_ca(dir: &Path, name: &str, days: u32) -> Result<(), BoxError> {
    let (crt, key) = (dir.join("ca.crt"), dir.join("ca.key"));
    refuse_to_overwrite(&[&crt, &key])?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, days);
    let key_pair = KeyPair::generate()?;
    let cert = params.self_signed(&key_pair)?;
    write_new(&key, key_pair.serialize_pem().as_bytes(), 0o600)?;
    write_new(&crt, cert.pem().as_bytes(), 0o644)?;
    println!(
        "wrote {} and {} (valid {days} days); give {} to nodes and clients, keep {} secret",
        crt.display(),
        key.display(),
        crt.display(),
        key.display()
    );
    Ok(())
}

fn make_signed(
    dir: &Path,
    name: &str,
    hosts: &[String],
    days: u32,
    kind: Kind,
) -> Result<(), BoxError> {
    if !crate::config::valid_name(name) {
        return Err(format!(
            "--name {name:?} is not a valid name: use 1-63 letters, digits, '.', '-' or '_'"
        )
        .into());
    }
    let (ca_crt, ca_key) = (dir.join("ca.crt"), dir.join("ca.key"));
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|e| {
            format!(
                "cannot read {}: {e} (make the CA first: concordance certs ca --dir {})",
                path.display(),
                dir.display()
            )
        })
    };
    let ca_key_pair = KeyPair::from_pem(&read(&ca_key)?)
        .map_err(|e| format!("{} is not a usable key: {e}", ca_key.display()))?;
    let issuer = Issuer::from_ca_cert_pem(&read(&ca_crt)?, ca_key_pair)
        .map_err(|e| format!("{} is not a usable CA certificate: {e}", ca_crt.display()))?;

    let (crt, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    refuse_to_overwrite(&[&crt, &key])?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    for host in hosts {
        let san = match host.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                host.clone()
                    .try_into()
                    .map_err(|e| format!("--host {host:?} is not a DNS name: {e}"))?,
            ),
        };
        params.subject_alt_names.push(san);
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = match kind {
        Kind::Node => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        Kind::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, days);
    let key_pair = KeyPair::generate()?;
    let cert = params.signed_by(&key_pair, &issuer)?;
    write_new(&key, key_pair.serialize_pem().as_bytes(), 0o600)?;
    write_new(&crt, cert.pem().as_bytes(), 0o644)?;
    println!(
        "wrote {} and {} (valid {days} days, for {})",
        crt.display(),
        key.display(),
        hosts.join(", ")
    );
    Ok(())
}

fn refuse_to_overwrite(paths: &[&Path]) -> Result<(), BoxError> {
    for path in paths {
        if path.exists() {
            return Err(format!(
                "{} exists; move it away first (nothing was written)",
                path.display()
            )
            .into());
        }
    }
    Ok(())
}

/// Creates `path` (and its folder, 0700) with `mode`, failing if it exists.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), BoxError> {
    use std::os::unix::fs::DirBuilderExt;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_signs_nodes_and_clients_and_nothing_is_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        let node = |name: &str| CertsCommand::Node {
            dir: certs.clone(),
            name: name.into(),
            hosts: vec!["node1.example".into(), "10.0.0.11".into()],
            days: 30,
        };
        let err = run(node("node1")).unwrap_err().to_string();
        assert!(err.contains("make the CA first"), "{err}");
        let ca = || CertsCommand::Ca {
            dir: certs.clone(),
            name: "Test CA".into(),
            days: 30,
        };
        run(ca()).unwrap();
        run(node("node1")).unwrap();
        run(CertsCommand::Client {
            dir: certs.clone(),
            name: "agent-a17".into(),
            days: 30,
        })
        .unwrap();

        // The node's certificate carries its hosts and passes the checks a node makes of its own.
        let pem = std::fs::read(certs.join("node1.crt")).unwrap();
        let der = rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
            .next()
            .unwrap()
            .unwrap();
        use rustls::pki_types::pem::PemObject;
        assert_eq!(
            crate::tls::certificate_names(&der).unwrap(),
            vec!["node1.example", "10.0.0.11"]
        );
        let tls = crate::tls::Tls::load(crate::tls::Settings {
            cert: certs.join("node1.crt"),
            key: certs.join("node1.key"),
            client_ca: Some(certs.join("ca.crt")),
            peer_ca: Some(certs.join("ca.crt")),
            peer_names: vec![crate::tls::NamePattern::parse("*.example").unwrap()],
            advertise_host: "node1.example".into(),
            accept_plaintext: false,
            dial_peers_plaintext: false,
        })
        .unwrap();
        assert!(tls.peer_tls());

        // Keys are private; nothing is written over.
        use std::os::unix::fs::PermissionsExt;
        for key in ["ca.key", "node1.key", "agent-a17.key"] {
            let mode = std::fs::metadata(certs.join(key))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
        let before = std::fs::read(certs.join("ca.key")).unwrap();
        let err = run(ca()).unwrap_err().to_string();
        assert!(err.contains("exists"), "{err}");
        assert!(run(node("node1")).is_err());
        assert_eq!(std::fs::read(certs.join("ca.key")).unwrap(), before);
    }
}
