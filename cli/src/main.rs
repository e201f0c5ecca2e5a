//! `concordancectl`: Concordance's command-line client. Readable output by default, `-o json`
//! for scripts; failures print the API's error code and exit non-zero.

mod args;
mod output;

use std::io::Read;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use concordance_client::CampaignRequest;
use concordance_client::Client;
use concordance_client::Compare;
use concordance_client::Consistency;
use concordance_client::Error;
use concordance_client::ErrorCode;
use concordance_client::LockRequest;
use concordance_client::PutRequest;
use concordance_client::RetryPolicy;
use concordance_client::TxnOp;
use concordance_client::TxnRequest;
use concordance_client::WatchOptions;
use concordance_client::membership::JoinRequest;
use futures::StreamExt;
use serde_json::Value;

use crate::args::*;
use crate::output::Printer;

/// Exit codes: 0 done, 1 the operation failed (an API error, a key not found, a transaction
/// whose conditions failed under `--require-success`), 2 usage, 3 no endpoint reachable.
const EXIT_FAILED: u8 = 1;
const EXIT_UNREACHABLE: u8 = 3;

/// A failure to report: an API or transport error, or a local one (with the API's code when
/// it means the same, e.g. a key that does not exist).
enum Failure {
    Client(Error),
    Local {
        code: Option<ErrorCode>,
        message: String,
    },
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Client(e)
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Failure::Local {
            code: None,
            message,
        }
    }
}

type Outcome = Result<ExitCode, Failure>;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let out = Printer::new(cli.output);
    let mut builder = Client::builder()
        .endpoints(cli.endpoints.iter().cloned())
        .request_timeout(cli.timeout)
        .retry(if cli.retry_for.is_zero() {
            RetryPolicy::none()
        } else {
            RetryPolicy {
                max_total_delay: cli.retry_for,
                ..RetryPolicy::default()
            }
        });
    if let Some(k) = cli.api_key.as_deref().filter(|k| !k.is_empty()) {
        builder = builder.api_key(k);
    }
    let tls = |builder: concordance_client::ClientBuilder| {
        let builder = match &cli.ca_file {
            Some(ca) => builder.ca_file(ca)?,
            None => builder,
        };
        match (&cli.cert_file, &cli.key_file) {
            (Some(cert), Some(key)) => builder.client_certificate_files(cert, key),
            _ => Ok(builder),
        }
    };
    let client = match tls(builder).and_then(|b| b.build()) {
        Ok(c) => c,
        Err(e) => return out.failure(&Failure::Client(e), EXIT_FAILED),
    };
    match run(&client, cli.command, &out).await {
        Ok(code) => code,
        Err(f) => {
            let code = match &f {
                Failure::Client(Error::Transport(_)) => EXIT_UNREACHABLE,
                _ => EXIT_FAILED,
            };
            out.failure(&f, code)
        }
    }
}

/// A value argument: `-` reads stdin; JSON if it parses (unless `string`), else a string.
fn parse_value(raw: &str, string: bool) -> Result<Value, String> {
    let text = if raw == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| format!("reading stdin: {e}"))?;
        s.trim_end_matches('\n').to_string()
    } else {
        raw.to_string()
    };
    if string {
        return Ok(Value::String(text));
    }
    Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn split_pair<'a>(arg: &'a str, flag: &str) -> Result<(&'a str, &'a str), String> {
    arg.split_once('=')
        .ok_or_else(|| format!("--{flag} takes KEY=VALUE, got {arg:?}"))
}

fn consistency(read: &ReadArgs) -> Consistency {
    if read.serializable {
        Consistency::Serializable
    } else {
        Consistency::Linearizable
    }
}

async fn run(client: &Client, command: Command, out: &Printer) -> Outcome {
    match command {
        Command::Put {
            key,
            value,
            lease,
            string,
        } => {
            let value = parse_value(&value, string)?;
            let r = client
                .put_with(&key, &PutRequest { value, lease }, None)
                .await?;
            out.put(&key, &r);
        }
        Command::Get { key, read } => match client.get_with(&key, consistency(&read)).await? {
            Some(r) => out.get(&r),
            None => {
                return Err(Failure::Local {
                    code: Some(ErrorCode::KeyNotFound),
                    message: format!("{key:?} does not exist"),
                });
            }
        },
        Command::List {
            prefix,
            limit,
            keys_only,
            read,
        } => {
            let c = consistency(&read);
            let (kvs, revision) = match limit {
                Some(l) => {
                    let page = client.list(&prefix, None, Some(l), c).await?;
                    (page.kvs, Some(page.revision))
                }
                None => (client.list_all(&prefix, 1000, c).await?, None),
            };
            out.list(&kvs, revision, keys_only);
        }
        Command::Del { key, prefix } => {
            if prefix {
                let r = client
                    .txn(&TxnRequest {
                        success: vec![TxnOp::delete_prefix(key.clone())],
                        ..TxnRequest::default()
                    })
                    .await?;
                let deleted = match r.results.first() {
                    Some(concordance_client::TxnOpResult::DeletePrefix { deleted }) => *deleted,
                    _ => 0,
                };
                out.deleted(deleted, r.revision);
            } else {
                let r = client.delete(&key).await?;
                out.deleted(r.deleted, r.revision);
            }
        }
        Command::Txn(args) => {
            let txn = build_txn(&args)?;
            let r = client.txn(&txn).await?;
            out.txn(&r);
            if args.require_success && !r.succeeded {
                return Ok(ExitCode::from(EXIT_FAILED));
            }
        }
        Command::Lease(cmd) => return lease(client, cmd, out).await,
        Command::Lock {
            name,
            ttl,
            wait,
            no_wait,
            command,
        } => return lock(client, name, ttl, wait, no_wait, command, out).await,
        Command::Election(cmd) => return election(client, cmd, out).await,
        Command::Watch {
            key,
            prefix,
            from_revision,
            count,
        } => {
            let mut opts = if prefix {
                WatchOptions::prefix(key)
            } else {
                WatchOptions::key(key)
            };
            opts.start_revision = from_revision;
            let mut stream = client.watch(opts);
            let mut seen = 0;
            loop {
                tokio::select! {
                    item = stream.next() => match item {
                        Some(Ok(change)) => {
                            out.change(&change);
                            seen += 1;
                            if count.is_some_and(|c| seen >= c) {
                                break;
                            }
                        }
                        Some(Err(e)) => return Err(e.into()),
                        None => break,
                    },
                    _ = tokio::signal::ctrl_c() => break,
                }
            }
        }
        Command::Status => out.status(&client.status().await?),
        Command::Member(cmd) => match cmd {
            MemberCommand::List => out.members(&client.status().await?),
            MemberCommand::Add {
                node_id,
                address,
                raft_id,
                expected_version,
            } => {
                let r = client
                    .member_join(&JoinRequest {
                        node_id,
                        address,
                        raft_id,
                        cluster_id: None,
                        expected_version,
                    })
                    .await?;
                out.membership(&r);
            }
            MemberCommand::Remove {
                node_id,
                expected_version,
            } => out.membership(&client.member_remove(&node_id, expected_version).await?),
            MemberCommand::TransferLeader { to } => {
                out.transfer(&client.transfer_leader(to.as_deref()).await?)
            }
        },
        Command::Version => out.version(&client.version().await?),
    }
    Ok(ExitCode::SUCCESS)
}

fn build_txn(args: &TxnArgs) -> Result<TxnRequest, String> {
    let mut txn: TxnRequest = match &args.file {
        None => TxnRequest::default(),
        Some(path) => {
            let text = if path.as_os_str() == "-" {
                let mut s = String::new();
                std::io::stdin()
                    .read_to_string(&mut s)
                    .map_err(|e| format!("reading stdin: {e}"))?;
                s
            } else {
                std::fs::read_to_string(path)
                    .map_err(|e| format!("reading {}: {e}", path.display()))?
            };
            serde_json::from_str(&text).map_err(|e| format!("the transaction is not valid: {e}"))?
        }
    };
    for k in &args.if_exists {
        txn.compare.push(Compare::exists(k.clone()));
    }
    for k in &args.if_missing {
        txn.compare.push(Compare::missing(k.clone()));
    }
    for kv in &args.if_value {
        let (k, v) = split_pair(kv, "if-value")?;
        txn.compare
            .push(Compare::value_equals(k, parse_value(v, false)?));
    }
    for kv in &args.if_mod_revision {
        let (k, v) = split_pair(kv, "if-mod-revision")?;
        let rev = v
            .parse()
            .map_err(|_| format!("--if-mod-revision: {v:?} is not a revision"))?;
        txn.compare.push(Compare::mod_revision_equals(k, rev));
    }
    for (puts, gets, deletes, branch) in [
        (&args.put, &args.get, &args.delete, &mut txn.success),
        (
            &args.else_put,
            &args.else_get,
            &args.else_delete,
            &mut txn.failure,
        ),
    ] {
        for kv in puts {
            let (k, v) = split_pair(kv, "put")?;
            branch.push(TxnOp::put(k, parse_value(v, false)?));
        }
        branch.extend(gets.iter().map(|k| TxnOp::get(k.clone())));
        branch.extend(deletes.iter().map(|k| TxnOp::delete(k.clone())));
    }
    Ok(txn)
}

async fn lease(client: &Client, cmd: LeaseCommand, out: &Printer) -> Outcome {
    match cmd {
        LeaseCommand::Grant { ttl } => out.lease_granted(&client.lease_grant(ttl).await?),
        LeaseCommand::Keepalive { id, follow } => {
            let r = client.lease_keep_alive(id).await?;
            out.lease_kept(&r);
            if follow {
                let mut tick = tokio::time::interval(
                    (Duration::from_millis(r.ttl_ms) / 3).max(Duration::from_millis(100)),
                );
                tick.tick().await;
                loop {
                    tokio::select! {
                        _ = tick.tick() => out.lease_kept(&client.lease_keep_alive(id).await?),
                        _ = tokio::signal::ctrl_c() => break,
                    }
                }
            }
        }
        LeaseCommand::Revoke { id } => out.lease_revoked(&client.lease_revoke(id).await?),
        LeaseCommand::List => out.leases(&client.lease_list().await?),
        LeaseCommand::Get { id } => match client.lease_get(id).await? {
            Some(l) => out.lease(&l),
            None => {
                return Err(Failure::Local {
                    code: Some(ErrorCode::LeaseNotFound),
                    message: format!("lease {id} does not exist or has expired"),
                });
            }
        },
    }
    Ok(ExitCode::SUCCESS)
}

/// Grants a lease and keeps it alive while `body` runs; revokes it afterwards (releasing
/// whatever it held).
async fn with_lease<F, Fut>(client: &Client, ttl: Duration, body: F) -> Outcome
where
    F: FnOnce(u64) -> Fut,
    Fut: Future<Output = Outcome>,
{
    let lease = client.lease_grant(ttl).await?;
    let keeper = client.keep_alive_task(lease.id, ttl);
    let result = body(lease.id).await;
    drop(keeper);
    let revoked = client.lease_revoke(lease.id).await;
    match (result, revoked) {
        (Ok(code), Ok(_)) => Ok(code),
        (Ok(_), Err(e)) => Err(e.into()),
        (Err(f), _) => Err(f),
    }
}

async fn lock(
    client: &Client,
    name: String,
    ttl: Duration,
    wait: Option<Duration>,
    no_wait: bool,
    command: Vec<String>,
    out: &Printer,
) -> Outcome {
    with_lease(client, ttl, |lease| async move {
        let held = client
            .lock(&LockRequest {
                name: name.clone(),
                lease,
                wait: !no_wait,
                timeout_ms: wait.map(|w| w.as_millis() as u64),
            })
            .await?;
        out.locked(&held);
        let code = if command.is_empty() {
            let _ = tokio::signal::ctrl_c().await;
            ExitCode::SUCCESS
        } else {
            let status = tokio::process::Command::new(&command[0])
                .args(&command[1..])
                .env("CONCORDANCE_FENCING_TOKEN", held.fencing_token.to_string())
                .env("CONCORDANCE_LOCK_KEY", &held.key)
                .status()
                .await
                .map_err(|e| format!("running {:?}: {e}", command[0]))?;
            ExitCode::from(status.code().map_or(EXIT_FAILED, |c| c as u8))
        };
        client.unlock(&name, lease).await?;
        out.unlocked(&name);
        Ok(code)
    })
    .await
}

async fn election(client: &Client, cmd: ElectionCommand, out: &Printer) -> Outcome {
    match cmd {
        ElectionCommand::Campaign {
            name,
            value,
            ttl,
            wait,
        } => {
            let value = parse_value(&value, false)?;
            return with_lease(client, ttl, |lease| async move {
                let r = client
                    .campaign(&CampaignRequest {
                        name: name.clone(),
                        lease,
                        value,
                        timeout_ms: wait.map(|w| w.as_millis() as u64),
                    })
                    .await?;
                out.leading(&r);
                let _ = tokio::signal::ctrl_c().await;
                client.resign(&name, lease).await?;
                Ok(ExitCode::SUCCESS)
            })
            .await;
        }
        ElectionCommand::Observe { name, once } => {
            let first = client.election_leader(&name).await?;
            out.election_leader(&first);
            if once {
                return Ok(ExitCode::SUCCESS);
            }
            let mut last = first.leader.map(|l| l.revision);
            let mut changes = client.watch(
                WatchOptions::prefix(first.watch_prefix.clone()).from_revision(first.revision + 1),
            );
            loop {
                tokio::select! {
                    item = changes.next() => match item {
                        Some(Ok(_)) => {
                            let now = client.election_leader(&name).await?;
                            let rev = now.leader.as_ref().map(|l| l.revision);
                            if rev != last {
                                last = rev;
                                out.election_leader(&now);
                            }
                        }
                        Some(Err(e)) => return Err(e.into()),
                        None => break,
                    },
                    _ = tokio::signal::ctrl_c() => break,
                }
            }
        }
        ElectionCommand::Resign { name, lease } => {
            out.resigned(&client.resign(&name, lease).await?)
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_are_json_when_they_parse() {
        assert_eq!(parse_value("42", false).unwrap(), json!(42));
        assert_eq!(parse_value("{\"a\":1}", false).unwrap(), json!({"a": 1}));
        assert_eq!(parse_value("hello", false).unwrap(), json!("hello"));
        assert_eq!(parse_value("42", true).unwrap(), json!("42"));
    }

    #[test]
    fn transactions_from_flags() {
        use clap::Parser;
        let cli = Cli::parse_from([
            "concordancectl",
            "txn",
            "--if-missing",
            "a",
            "--if-value",
            "b=3",
            "--put",
            "a=1",
            "--else-get",
            "a",
        ]);
        let Command::Txn(args) = cli.command else {
            panic!("not a txn")
        };
        let t = build_txn(&args).unwrap();
        assert_eq!(t.compare.len(), 2);
        assert_eq!(t.compare[1].value, json!(3));
        assert_eq!(t.success, vec![TxnOp::put("a", json!(1))]);
        assert_eq!(t.failure, vec![TxnOp::get("a")]);
    }
}
