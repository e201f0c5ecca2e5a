//! TLS on both sides of a comparison: one CA and one certificate for 127.0.0.1, made with
//! `concordance certs`, served by every member of both systems and used between their peers.

use std::path::Path;
use std::path::PathBuf;
use std::process::Command;

use anyhow::Context;
use anyhow::bail;

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The folder holding them, removed when the last copy goes.
    _dir: std::sync::Arc<tempfile::TempDir>,
}

impl TlsFiles {
    /// Makes the CA and a certificate for `127.0.0.1` (server and client uses) in a new folder
    /// under `dir`, with `concordance` (the binary under test).
    pub fn make(concordance_bin: &Path, dir: &Path) -> anyhow::Result<Self> {
        let folder = tempfile::Builder::new()
            .prefix("bench-certs-")
            .tempdir_in(dir)?;
        let certs = folder.path().to_path_buf();
        let certs_arg = certs.to_str().context("a UTF-8 folder")?;
        for args in [
            vec!["certs", "ca", "--dir", certs_arg],
            vec![
                "certs",
                "node",
                "--dir",
                certs_arg,
                "--name",
                "member",
                "--host",
                "127.0.0.1",
            ],
        ] {
            let out = Command::new(concordance_bin).args(&args).output()?;
            if !out.status.success() {
                bail!(
                    "concordance {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        Ok(Self {
            ca: certs.join("ca.crt"),
            cert: certs.join("member.crt"),
            key: certs.join("member.key"),
            _dir: std::sync::Arc::new(folder),
        })
    }

    /// A Concordance member's flags: TLS for clients, mutual TLS between peers.
    pub fn concordance_args(&self) -> Vec<String> {
        vec![
            format!("--tls-cert={}", self.cert.display()),
            format!("--tls-key={}", self.key.display()),
            format!("--peer-ca={}", self.ca.display()),
        ]
    }

    /// An etcd member's flags for the same: its own client and peer TLS flags. No client CA:
    /// with `--trusted-ca-file` etcd asks every client for a certificate, and Concordance's
    /// members here ask none.
    pub fn etcd_args(&self) -> Vec<String> {
        vec![
            format!("--cert-file={}", self.cert.display()),
            format!("--key-file={}", self.key.display()),
            format!("--peer-cert-file={}", self.cert.display()),
            format!("--peer-key-file={}", self.key.display()),
            format!("--peer-trusted-ca-file={}", self.ca.display()),
            "--peer-client-cert-auth".to_string(),
        ]
    }

    pub fn ca_certificate(&self) -> anyhow::Result<reqwest::Certificate> {
        Ok(reqwest::Certificate::from_pem(&std::fs::read(&self.ca)?)?)
    }
}
