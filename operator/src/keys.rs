//! The admin and agent keys the members hold, and their rotation, as a pure decision.
//!
//! The members read their keys from files (`--api-key-file`, `--agent-key-file`) mounted from
//! the operator's own Secret `<name>-member-keys`; every key of a file is accepted, and the
//! first admin key is the one members call each other with. The key Secrets (the user's, or
//! generated) say which key is wanted. When one changes, the operator rotates with no restart
//! and no refused request, each phase waiting until every member holds it (it asks each
//! member with the key the phase added):
//!
//! 1. `Adding`: `[old, new]`, until every member accepts the new key.
//! 2. `Switching` (admin only): `[new, old, marker]`, a random marker key, until every member
//!    accepts the marker: then every member calls the others with the new key.
//! 3. `Retiring`: `[new, old]` for `keyRotationGraceSeconds`, so clients can move.
//! 4. `Dropping`: `[new, marker]`, until every member accepts the marker: then no member
//!    takes the old key any more.
//! 5. `InForce`: `[new]`.
//!
//! A member killed in the middle starts again on the Secret as it is then. A key changed again
//! during a rotation is taken once the rotation under way has ended.

use std::fmt;

use crate::resources::KeyKind;

/// The shortest key a member takes from a file.
pub const MIN_KEY_BYTES: usize = 16;

/// A key, never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Key(pub String);

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(…)")
    }
}

impl Key {
    /// Why a member would not take it from a file, if it would not.
    pub fn unusable(&self) -> Option<String> {
        (self.0.len() < MIN_KEY_BYTES || self.0.chars().any(char::is_whitespace)).then(|| {
            format!(
                "a key must be at least {MIN_KEY_BYTES} characters with no spaces (this one is {})",
                self.0.chars().count()
            )
        })
    }
}

/// Where one key file is in its rotation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Phase {
    #[default]
    InForce,
    Adding,
    Switching,
    Retiring,
    Dropping,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::InForce => "InForce",
            Phase::Adding => "Adding",
            Phase::Switching => "Switching",
            Phase::Retiring => "Retiring",
            Phase::Dropping => "Dropping",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            Phase::InForce,
            Phase::Adding,
            Phase::Switching,
            Phase::Retiring,
            Phase::Dropping,
        ]
        .into_iter()
        .find(|p| p.name() == text)
    }
}

/// One key file as the members hold it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyFile {
    pub keys: Vec<Key>,
    pub phase: Phase,
    /// When `Retiring` began (RFC 3339); `None` in a step: now.
    pub retiring_since: Option<String>,
    /// Seconds since then, as observed.
    pub retiring_seconds: Option<i64>,
}

impl KeyFile {
    pub fn in_force(key: Key) -> Self {
        KeyFile {
            keys: vec![key],
            phase: Phase::InForce,
            retiring_since: None,
            retiring_seconds: None,
        }
    }

    fn next(keys: Vec<Key>, phase: Phase) -> Self {
        KeyFile {
            keys,
            phase,
            retiring_since: None,
            retiring_seconds: None,
        }
    }

    /// The key a phase waits for every member to accept: the one it added.
    pub fn awaited(&self) -> Option<&Key> {
        match self.phase {
            Phase::Adding | Phase::Dropping => self.keys.get(1),
            Phase::Switching => self.keys.get(2),
            Phase::InForce | Phase::Retiring => None,
        }
    }

    /// How many keys a file in `phase` holds.
    pub fn fits(phase: Phase) -> usize {
        match phase {
            Phase::InForce => 1,
            Phase::Adding | Phase::Retiring | Phase::Dropping => 2,
            Phase::Switching => 3,
        }
    }
}

/// Both key files, as the members hold them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    pub admin: KeyFile,
    pub agent: KeyFile,
}

impl Held {
    pub fn file(&self, kind: KeyKind) -> &KeyFile {
        match kind {
            KeyKind::Admin => &self.admin,
            KeyKind::Agent => &self.agent,
        }
    }
}

/// Whether every member accepts the key a phase waits on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Acceptance {
    All,
    /// Not yet: which member, and what it answered.
    Not(String),
}

/// The keys as observed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KeysState {
    /// `<name>-member-keys`, when it exists.
    pub held: Option<Held>,
    /// The key each key Secret holds; `None` when it cannot be read.
    pub given_admin: Option<Key>,
    pub given_agent: Option<Key>,
    /// For a file in `Adding` or `Switching`: whether every member accepts its awaited key.
    pub admin_accepted: Option<Acceptance>,
    pub agent_accepted: Option<Acceptance>,
}

impl KeysState {
    fn given(&self, kind: KeyKind) -> Option<&Key> {
        match kind {
            KeyKind::Admin => self.given_admin.as_ref(),
            KeyKind::Agent => self.given_agent.as_ref(),
        }
    }

    fn accepted(&self, kind: KeyKind) -> Option<&Acceptance> {
        match kind {
            KeyKind::Admin => self.admin_accepted.as_ref(),
            KeyKind::Agent => self.agent_accepted.as_ref(),
        }
    }

    /// The admin key every member accepts: the one members call each other with.
    pub fn admin_key(&self) -> Option<&Key> {
        match &self.held {
            Some(h) => h.admin.keys.first(),
            None => self.given_admin.as_ref(),
        }
    }
}

/// The member keys Secret's next content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NextKeys {
    pub admin: KeyFile,
    pub agent: KeyFile,
    /// Append a new random marker key to the admin file (it enters `Switching` or
    /// `Dropping`), or to the agent file (`Dropping`).
    pub admin_marker: bool,
    pub agent_marker: bool,
    pub why: String,
}

/// What the keys need this pass.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KeysDecision {
    pub next: Option<NextKeys>,
    /// Why a rotation is not over, or why a key Secret's key is not used.
    pub waiting: Vec<String>,
    /// A key Secret holds a key members would not take.
    pub unusable: bool,
}

/// The next content of `<name>-member-keys`, and what is awaited. `grace_seconds`:
/// `spec.keyRotationGraceSeconds`.
pub fn decide(state: &KeysState, grace_seconds: i64) -> KeysDecision {
    let mut out = KeysDecision::default();
    let unusable = |kind: KeyKind, key: &Key| {
        key.unusable().map(|why| {
            format!(
                "the {} key Secret's key is not used: {why}; the members keep their key",
                kind.word()
            )
        })
    };
    let Some(held) = &state.held else {
        // Made once both keys are known and usable; until then the members take their keys
        // from the key Secrets directly (as clusters of an earlier operator do).
        let (Some(admin), Some(agent)) = (&state.given_admin, &state.given_agent) else {
            return out;
        };
        for (kind, key) in [(KeyKind::Admin, admin), (KeyKind::Agent, agent)] {
            if let Some(why) = unusable(kind, key) {
                out.waiting.push(why);
                out.unusable = true;
            }
        }
        if !out.unusable {
            out.next = Some(NextKeys {
                admin: KeyFile::in_force(admin.clone()),
                agent: KeyFile::in_force(agent.clone()),
                admin_marker: false,
                agent_marker: false,
                why: "the members' keys are kept in their own Secret, which rotates them".into(),
            });
        }
        return out;
    };
    let mut next = held.clone();
    let (mut admin_marker, mut agent_marker) = (false, false);
    let mut why = Vec::new();
    for kind in [KeyKind::Admin, KeyKind::Agent] {
        let file = held.file(kind);
        let word = kind.word();
        let changed = match file.phase {
            Phase::InForce => match state.given(kind) {
                Some(given) if file.keys.first() != Some(given) => {
                    let Some(current) = file.keys.first() else {
                        continue;
                    };
                    if let Some(why) = unusable(kind, given) {
                        out.waiting.push(why);
                        out.unusable = true;
                        None
                    } else {
                        why.push(format!(
                            "a new {word} key was given: the members take it beside the old one"
                        ));
                        Some(KeyFile::next(
                            vec![current.clone(), given.clone()],
                            Phase::Adding,
                        ))
                    }
                }
                _ => None,
            },
            Phase::Adding | Phase::Switching => match state.accepted(kind) {
                Some(Acceptance::All) => {
                    let (Some(first), Some(second)) = (file.keys.first(), file.keys.get(1)) else {
                        continue;
                    };
                    let (old, new) = match file.phase {
                        Phase::Adding => (first.clone(), second.clone()),
                        _ => (second.clone(), first.clone()),
                    };
                    if kind == KeyKind::Admin && file.phase == Phase::Adding {
                        why.push("every member holds the new admin key: members now call each other with it".into());
                        admin_marker = true;
                        Some(KeyFile::next(vec![new, old], Phase::Switching))
                    } else {
                        why.push(format!(
                            "every member holds the new {word} key: the old one is accepted for \
                             {grace_seconds} s more (keyRotationGraceSeconds)"
                        ));
                        Some(KeyFile::next(vec![new, old], Phase::Retiring))
                    }
                }
                Some(Acceptance::Not(who)) => {
                    out.waiting.push(match file.phase {
                        Phase::Adding => format!(
                            "the new {word} key is being added: waiting for every member to \
                             hold it ({who})"
                        ),
                        _ => format!(
                            "members are moving to calling each other with the new admin key \
                             ({who})"
                        ),
                    });
                    None
                }
                None => {
                    out.waiting
                        .push(format!("the new {word} key: no member was asked yet"));
                    None
                }
            },
            Phase::Dropping => match state.accepted(kind) {
                Some(Acceptance::All) => file.keys.first().map(|new| {
                    why.push(format!("no member takes the old {word} key any more"));
                    KeyFile::in_force(new.clone())
                }),
                Some(Acceptance::Not(who)) => {
                    out.waiting.push(format!(
                        "the old {word} key is being dropped: waiting for every member to read \
                         its file without it ({who})"
                    ));
                    None
                }
                None => None,
            },
            Phase::Retiring => {
                let elapsed = file.retiring_seconds.unwrap_or(0);
                if let Some(new) = file.keys.first().filter(|_| elapsed >= grace_seconds) {
                    why.push(format!("the old {word} key is dropped"));
                    match kind {
                        KeyKind::Admin => admin_marker = true,
                        KeyKind::Agent => agent_marker = true,
                    }
                    Some(KeyFile::next(vec![new.clone()], Phase::Dropping))
                } else {
                    out.waiting.push(format!(
                        "the old {word} key is still accepted for {} s (keyRotationGraceSeconds): \
                         move clients to the new one",
                        grace_seconds - elapsed
                    ));
                    None
                }
            }
        };
        if let Some(file) = changed {
            match kind {
                KeyKind::Admin => next.admin = file,
                KeyKind::Agent => next.agent = file,
            }
        }
    }
    if next != *held {
        out.next = Some(NextKeys {
            admin: next.admin,
            agent: next.agent,
            admin_marker,
            agent_marker,
            why: why.join("; "),
        });
    }
    out
}
