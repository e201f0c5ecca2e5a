//! Which names a peer's certificate may carry (`--peer-names`): exact DNS names or IP
//! addresses, or `*.suffix` for any one label under a suffix (as a certificate wildcard).

use std::net::IpAddr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamePattern {
    Exact(String),
    /// `*.<suffix>`: exactly one more label before `.<suffix>`.
    AnyLabelUnder(String),
}

impl NamePattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim().to_ascii_lowercase();
        let valid_dns = |s: &str| {
            !s.is_empty()
                && s.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                })
        };
        if let Some(suffix) = text.strip_prefix("*.") {
            if valid_dns(suffix) {
                return Ok(Self::AnyLabelUnder(suffix.to_string()));
            }
        } else if text.parse::<IpAddr>().is_ok() || valid_dns(&text) {
            return Ok(Self::Exact(text));
        }
        Err(format!(
            "{text:?} is not a DNS name, an IP address or *.<domain>"
        ))
    }

    /// Whether a certificate name (a DNS name or an IP address as text) matches.
    pub fn matches(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        match self {
            Self::Exact(exact) => *exact == name,
            Self::AnyLabelUnder(suffix) => name
                .strip_suffix(suffix.as_str())
                .and_then(|head| head.strip_suffix('.'))
                .is_some_and(|label| !label.is_empty() && !label.contains('.')),
        }
    }
}

impl std::fmt::Display for NamePattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exact(name) => f.write_str(name),
            Self::AnyLabelUnder(suffix) => write!(f, "*.{suffix}"),
        }
    }
}

/// Why a certificate carrying `names` is not a member's under `allowed`.
pub fn not_allowed(allowed: &[NamePattern], names: &[String]) -> String {
    let allowed: Vec<String> = allowed.iter().map(|p| p.to_string()).collect();
    format!(
        "its certificate's names {names:?} are not among --peer-names {}",
        allowed.join(",")
    )
}

/// The first of `names` that one of `allowed` matches; with no patterns, any name.
pub fn first_allowed<'a>(allowed: &[NamePattern], names: &'a [String]) -> Option<&'a str> {
    names
        .iter()
        .find(|name| allowed.is_empty() || allowed.iter().any(|p| p.matches(name)))
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_names_addresses_and_one_label_wildcards() {
        let any = NamePattern::parse("*.demo.ns.svc").unwrap();
        assert!(any.matches("demo-0.demo.ns.svc"));
        assert!(any.matches("DEMO-1.demo.ns.svc"));
        assert!(!any.matches("a.b.demo.ns.svc"), "one label only");
        assert!(!any.matches("demo.ns.svc"));
        assert!(!any.matches("xdemo.ns.svc"));
        let ip = NamePattern::parse("10.0.0.7").unwrap();
        assert!(ip.matches("10.0.0.7"));
        assert!(!ip.matches("10.0.0.70"));
        assert!(NamePattern::parse("node1").unwrap().matches("node1"));
        for bad in ["", "*.", "a..b", "*", "a b", "*.*.x"] {
            assert!(NamePattern::parse(bad).is_err(), "{bad:?}");
        }
        let allowed = vec![NamePattern::parse("node2").unwrap()];
        let names = vec!["node1".to_string(), "node2".to_string()];
        assert_eq!(first_allowed(&allowed, &names), Some("node2"));
        assert_eq!(first_allowed(&[], &names), Some("node1"));
        assert_eq!(first_allowed(&allowed, &names[..1]), None);
    }
}
