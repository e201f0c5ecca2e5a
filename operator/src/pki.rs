//! A cluster's own CA and its members' certificate, made by the operator when a cluster runs
//! TLS and no PKI is given: ECDSA P-256 keys, the CA valid [`CA_DAYS`], the members' one
//! certificate [`CERTIFICATE_DAYS`] (renewed [`RENEW_BEFORE_DAYS`] before it expires).

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::error::Error;

pub const CA_DAYS: i64 = 3650;
pub const CERTIFICATE_DAYS: i64 = 90;
/// A certificate this close to its expiry is replaced: the kubelet takes up to a minute or two
/// to hand the new files to the members, and an operator may be down for a while.
pub const RENEW_BEFORE_DAYS: i64 = 30;

/// A PEM certificate and its PEM private key.
#[derive(Clone)]
pub struct Pair {
    pub certificate: String,
    pub key: String,
}

fn failed(what: &str) -> impl Fn(rcgen::Error) -> Error + '_ {
    move |e| Error::Certificate(format!("{what}: {e}"))
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    // A minute back: a member whose clock is a little behind takes it at once.
    params.not_before = now - time::Duration::minutes(1);
    params.not_after = now + time::Duration::days(days);
}

/// A new self-signed CA, named after the cluster.
pub fn new_ca(cluster: &str, namespace: &str) -> Result<Pair, Error> {
    let mut params =
        CertificateParams::new(Vec::<String>::new()).map_err(failed("the CA's parameters"))?;
    params.distinguished_name.push(
        DnType::CommonName,
        format!("Concordance CA {namespace}/{cluster}"),
    );
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, CA_DAYS);
    let key = KeyPair::generate().map_err(failed("a key for the CA"))?;
    let certificate = params
        .self_signed(&key)
        .map_err(failed("the CA's certificate"))?;
    Ok(Pair {
        certificate: certificate.pem(),
        key: key.serialize_pem(),
    })
}

/// A certificate for `names` (DNS names, or IP addresses), signed by `ca`, good for serving
/// clients and peers and as a client of peers.
pub fn issue(ca: &Pair, common_name: &str, names: &[String]) -> Result<Pair, Error> {
    let ca_key = KeyPair::from_pem(&ca.key).map_err(failed("the CA Secret's key"))?;
    let issuer = Issuer::from_ca_cert_pem(&ca.certificate, ca_key)
        .map_err(failed("the CA Secret's certificate"))?;
    let mut params =
        CertificateParams::new(Vec::<String>::new()).map_err(failed("the parameters"))?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    for name in names {
        let san = match name.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                name.clone()
                    .try_into()
                    .map_err(failed("a member's DNS name"))?,
            ),
        };
        params.subject_alt_names.push(san);
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, CERTIFICATE_DAYS);
    let key = KeyPair::generate().map_err(failed("a key for the members"))?;
    let certificate = params
        .signed_by(&key, &issuer)
        .map_err(failed("the members' certificate"))?;
    Ok(Pair {
        certificate: certificate.pem(),
        key: key.serialize_pem(),
    })
}

/// When the first certificate of a PEM expires, in seconds since the epoch; `None` when it
/// holds no readable certificate.
pub fn expiry(pem: &[u8]) -> Option<i64> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).ok()?;
    let certificate = pem.parse_x509().ok()?;
    Some(certificate.validity().not_after.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_members_certificate_chains_to_the_ca_and_carries_the_names() {
        let ca = new_ca("demo", "ns").unwrap();
        let names = vec![
            "*.demo-peers.ns.svc.cluster.local".to_string(),
            "demo.ns.svc".to_string(),
            "127.0.0.1".to_string(),
        ];
        let member = issue(&ca, "demo", &names).unwrap();

        let (_, pem) = x509_parser::pem::parse_x509_pem(member.certificate.as_bytes()).unwrap();
        let certificate = pem.parse_x509().unwrap();
        let (_, ca_pem) = x509_parser::pem::parse_x509_pem(ca.certificate.as_bytes()).unwrap();
        let ca_certificate = ca_pem.parse_x509().unwrap();
        assert_eq!(certificate.issuer(), ca_certificate.subject());
        assert!(ca_certificate.is_ca());
        // Signed by this CA's key, not another CA of the same name: the key identifiers match.
        use x509_parser::extensions::ParsedExtension;
        let authority = certificate
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::AuthorityKeyIdentifier(a) => a.key_identifier.clone(),
                _ => None,
            });
        let subject = ca_certificate
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(k) => Some(k.clone()),
                _ => None,
            });
        assert_eq!(
            authority.map(|k| k.0.to_vec()),
            subject.map(|k| k.0.to_vec())
        );
        let sans = certificate
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>();
        assert_eq!(sans.len(), 3, "{sans:?}");
        assert!(
            sans[0].contains("*.demo-peers.ns.svc.cluster.local"),
            "{sans:?}"
        );

        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let expires = expiry(member.certificate.as_bytes()).unwrap();
        let days = (expires - now) as f64 / 86_400.0;
        assert!((days - CERTIFICATE_DAYS as f64).abs() < 0.01, "{days}");
        assert!(expiry(ca.certificate.as_bytes()).unwrap() > expires);
        assert_eq!(expiry(b"not a certificate"), None);
    }

    #[test]
    fn a_damaged_ca_secret_is_an_error_not_a_panic() {
        let ca = new_ca("demo", "ns").unwrap();
        let damaged = Pair {
            certificate: ca.certificate.clone(),
            key: "garbage".to_string(),
        };
        let err = issue(&damaged, "demo", &["demo".to_string()])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("the CA Secret's key"), "{err}");
    }
}
