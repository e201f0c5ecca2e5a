//! The admin and agent keys from files (`--api-key-file`, `--agent-key-file`) instead of
//! flags: one key per line, every one accepted, read again when the file changes, so a key
//! rotates with no restart. The first admin key is the one a node calls its peers with.
//!
//! ```text
//! # the admin keys: the first is the one members call each other with
//! <new admin key>
//! <old admin key, until every client has moved>
//! ```

use std::path::Path;

use super::credentials::MIN_TOKEN_BYTES;

/// Why a key file was not taken. It never shows a key.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read the key file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the key file {path}: {message}")]
    Invalid { path: String, message: String },
}

/// The keys of a key file, in order: every line but blank ones and `#` comments.
pub fn read(path: &Path) -> Result<Vec<String>, KeyFileError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Read {
        path: shown.clone(),
        source,
    })?;
    parse(&text).map_err(|message| KeyFileError::Invalid {
        path: shown,
        message,
    })
}

fn parse(text: &str) -> Result<Vec<String>, String> {
    let mut keys: Vec<String> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.len() < MIN_TOKEN_BYTES || line.chars().any(char::is_whitespace) {
            return Err(format!(
                "line {}: a key must be at least {MIN_TOKEN_BYTES} characters with no spaces",
                i + 1
            ));
        }
        if keys.iter().any(|k| k == line) {
            return Err(format!("line {}: the same key twice", i + 1));
        }
        keys.push(line.to_string());
    }
    if keys.is_empty() {
        return Err("no key in it (one per line; blank lines and # comments are skipped)".into());
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_key_per_line_in_order_with_comments_and_blank_lines_skipped() {
        let keys =
            parse("# admin\n new-admin-key-0123456789 \n\nold-admin-key-0123456789\n").unwrap();
        assert_eq!(
            keys,
            ["new-admin-key-0123456789", "old-admin-key-0123456789"]
        );
        for (text, expected) in [
            ("", "no key"),
            ("# only a comment\n", "no key"),
            ("short\n", "line 1: a key must be at least 16"),
            (
                "new-admin-key-0123456789\nwith a space 0123456789\n",
                "line 2",
            ),
            (
                "same-key-0123456789\nsame-key-0123456789\n",
                "the same key twice",
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(expected), "{text:?}: {e}");
            assert!(!e.contains("0123456789"), "no key in an error: {e}");
        }
    }
}
