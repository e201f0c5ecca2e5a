//! Concurrent clients that record every operation, and a sampler of every node's status.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::RwLock;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use concordance_client::Client;
use concordance_client::Compare;
use concordance_client::CompareOp;
use concordance_client::CompareTarget;
use concordance_client::Consistency;
use concordance_client::Error;
use concordance_client::ErrorCode;
use concordance_client::TxnOp;
use concordance_client::TxnRequest;
use concordance_client::TxnResponse;
use rand::Rng;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::Value;
use serde_json::json;

use crate::checker::Input;
use crate::checker::Operation;
use crate::checker::Output;
use crate::cluster::client_for;
use crate::history::LeaderSample;
use crate::history::Record;
use crate::history::Status;

/// How long a client waits for one answer before calling the operation indeterminate.
pub const OP_TIMEOUT: Duration = Duration::from_secs(3);

/// The nodes clients may talk to (name, port); the fault schedule updates it.
pub type Endpoints = Arc<RwLock<Vec<(String, u16)>>>;

/// Nanoseconds since `t0`: the history's clock (monotonic, one per run).
pub fn since(t0: Instant) -> u64 {
    t0.elapsed().as_nanos() as u64
}

/// What an error says about whether the operation applied. A `no_space` refusal is given by
/// the leader before it proposes anything, so it is definite, but only for a request sent
/// once: after a retry, an earlier attempt may still be on its way (`single_attempt`).
fn classify(e: &Error, single_attempt: bool) -> Status {
    match e {
        Error::Transport(t) if t.is_connect() => Status::Fail(e.to_string()),
        _ if single_attempt && e.error_code() == Some(ErrorCode::NoSpace) => {
            Status::Fail(e.to_string())
        }
        _ => Status::Indeterminate(e.to_string()),
    }
}

fn text(v: &Value) -> Option<String> {
    v.as_str().map(String::from)
}

pub struct Workload {
    /// Requests are sent once, never retried by the client (so refusals are definite).
    pub single_attempt: bool,
    pub keys: usize,
    pub clients: usize,
}

impl Workload {
    /// Runs `self.clients` clients until `stop`; returns every client's records.
    pub async fn run(
        &self,
        seed: u64,
        t0: Instant,
        endpoints: Endpoints,
        stop: Arc<AtomicBool>,
    ) -> Vec<Record> {
        let mut tasks = Vec::new();
        for c in 0..self.clients {
            let endpoints = endpoints.clone();
            let stop = stop.clone();
            let keys = self.keys;
            let single_attempt = self.single_attempt;
            tasks.push(tokio::spawn(async move {
                client_loop(c, seed, keys, single_attempt, t0, endpoints, stop).await
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("client task"));
        }
        all
    }
}

async fn client_loop(
    id: usize,
    seed: u64,
    keys: usize,
    single_attempt: bool,
    t0: Instant,
    endpoints: Endpoints,
    stop: Arc<AtomicBool>,
) -> Vec<Record> {
    let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(1000).wrapping_add(id as u64));
    let mut clients: HashMap<u16, Client> = HashMap::new();
    let mut out = Vec::new();
    let mut n = 0u64;
    // The last value this client read per key: what its compare-and-swaps expect.
    let mut last_seen: HashMap<String, Option<String>> = HashMap::new();
    while !stop.load(Ordering::Relaxed) {
        let (node, port) = {
            let eps = endpoints.read().unwrap();
            eps[rng.random_range(0..eps.len())].clone()
        };
        let client = clients
            .entry(port)
            .or_insert_with(|| {
                let c = client_for(port);
                if single_attempt {
                    c.with_retry(concordance_client::RetryPolicy::none())
                } else {
                    c
                }
            })
            .clone();
        let key = format!("reg/{}", rng.random_range(0..keys));
        n += 1;
        let value = format!("c{id}-{n}");
        let roll = rng.random_range(0..100);
        let expect = last_seen.get(&key).cloned().flatten();
        let rec = one_op(
            &client,
            id,
            &node,
            &key,
            &value,
            expect,
            roll,
            t0,
            single_attempt,
        )
        .await;
        if let (Input::Get, Output::Read(v)) = (&rec.op.input, &rec.op.output) {
            last_seen.insert(key.clone(), v.clone());
        }
        let failed = rec.status != Status::Ok;
        out.push(rec);
        if failed {
            // Give a faulty node a moment; the next operation picks a node afresh.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    out
}

/// One random operation: 30% put, 25% linearizable get, 15% serializable get, 10% delete,
/// 20% compare-and-swap (a transaction: if the value is `expect`, or the key is absent when
/// `expect` is `None`, put `value`).
#[allow(clippy::too_many_arguments)]
async fn one_op(
    client: &Client,
    id: usize,
    node: &str,
    key: &str,
    value: &str,
    expect: Option<String>,
    roll: u32,
    t0: Instant,
    single_attempt: bool,
) -> Record {
    let call = since(t0);
    let mut rec = Record {
        op: Operation {
            key: key.into(),
            client: id,
            input: Input::Get,
            output: Output::Unknown,
            call,
            ret: None,
        },
        node: node.into(),
        serializable: false,
        status: Status::Ok,
        revision: None,
        mod_revision: None,
    };
    let timed_out = || Status::Indeterminate("timeout".into());
    if roll >= 80 {
        rec.op.input = Input::Cas {
            expect: expect.clone(),
            new: value.into(),
        };
        let compare = match &expect {
            Some(v) => Compare {
                key: key.into(),
                target: CompareTarget::Value,
                op: CompareOp::Equal,
                value: json!(v),
            },
            None => Compare {
                key: key.into(),
                target: CompareTarget::Exists,
                op: CompareOp::Equal,
                value: json!(false),
            },
        };
        let req = TxnRequest {
            compare: vec![compare],
            success: vec![TxnOp::Put {
                key: key.into(),
                value: json!(value),
                lease: None,
            }],
            failure: vec![],
        };
        let call = client.call::<_, TxnResponse>(reqwest::Method::POST, "txn", Some(&req));
        match tokio::time::timeout(OP_TIMEOUT, call).await {
            Ok(Ok(r)) => {
                rec.op.output = Output::Swapped(r.succeeded);
                rec.revision = Some(r.revision);
            }
            Ok(Err(e)) => rec.status = classify(&e, single_attempt),
            Err(_) => rec.status = timed_out(),
        }
    } else if roll < 30 {
        rec.op.input = Input::Put(value.into());
        match tokio::time::timeout(OP_TIMEOUT, client.put(key, &json!(value))).await {
            Ok(Ok(r)) => {
                rec.op.output = Output::Ok;
                rec.revision = Some(r.revision);
            }
            Ok(Err(e)) => rec.status = classify(&e, single_attempt),
            Err(_) => rec.status = timed_out(),
        }
    } else if roll < 70 {
        rec.serializable = roll >= 55;
        let consistency = if rec.serializable {
            Consistency::Serializable
        } else {
            Consistency::Linearizable
        };
        match tokio::time::timeout(OP_TIMEOUT, client.get_with(key, consistency)).await {
            Ok(Ok(Some(r))) => {
                rec.op.output = Output::Read(text(&r.kv.value));
                rec.revision = Some(r.revision);
                rec.mod_revision = Some(r.kv.mod_revision);
            }
            Ok(Ok(None)) => rec.op.output = Output::Read(None),
            Ok(Err(e)) => rec.status = classify(&e, single_attempt),
            Err(_) => rec.status = timed_out(),
        }
    } else {
        // 70..80
        rec.op.input = Input::Delete;
        match tokio::time::timeout(OP_TIMEOUT, client.delete(key)).await {
            Ok(Ok(r)) => {
                rec.op.output = Output::Deleted(r.deleted > 0);
                rec.revision = Some(r.revision);
            }
            Ok(Err(e)) => rec.status = classify(&e, single_attempt),
            Err(_) => rec.status = timed_out(),
        }
    }
    if rec.status == Status::Ok {
        rec.op.ret = Some(since(t0));
    }
    rec
}

/// Samples `/cluster/status` of every endpoint every 100 ms until `stop`.
pub async fn sample_leaders(
    t0: Instant,
    endpoints: Endpoints,
    stop: Arc<AtomicBool>,
) -> Vec<LeaderSample> {
    let mut out = Vec::new();
    let mut clients: HashMap<u16, Client> = HashMap::new();
    while !stop.load(Ordering::Relaxed) {
        let eps = endpoints.read().unwrap().clone();
        for (name, port) in eps {
            let c = clients
                .entry(port)
                .or_insert_with(|| client_for(port))
                .clone();
            if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_millis(300), c.status()).await {
                out.push(LeaderSample {
                    at: since(t0),
                    node: name,
                    role: s.role,
                    term: s.term,
                    leader: s.leader,
                });
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    out
}
