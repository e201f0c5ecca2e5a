//! The full-disk fault: a filler writes large values through every member until the cluster
//! refuses with the `no_space` alarm, holds it there while the workload runs, then makes
//! room (deletes its keys, compacts the history) and disarms the alarm.

use std::time::Duration;
use std::time::Instant;

use concordance_client::Client;
use concordance_client::ErrorCode;

use crate::cluster::client_for;
use crate::watcher::Outside;

const VALUE_BYTES: usize = 256 << 10;
/// Far more than the volumes hold.
const MAX_WRITES: usize = 4000;
/// The filler's writes that may fail with something else than `no_space` (a leader change).
const MAX_OTHER_ERRORS: usize = 50;
/// How long the alarm stays raised while the workload runs against it.
const HOLD: Duration = Duration::from_secs(2);

/// Fills the members' volumes until `no_space`, holds, then makes room and disarms. What it
/// did, or why the fault did not take effect; the revisions it wrote go to `outside` (they
/// are outside the workload's prefix, so the watch does not see them).
pub async fn fill_then_make_room(
    endpoints: &[(String, u16)],
    round: usize,
    outside: &mut Outside,
) -> Result<String, String> {
    let clients: Vec<Client> = endpoints
        .iter()
        .map(|(_, port)| client_for(*port))
        .collect();
    let mut written = Vec::new();
    let mut other_errors = 0;
    let mut refused = false;
    for i in 0..MAX_WRITES {
        let key = format!("fill/{round}/{i:05}");
        let value = crate::common::incompressible(i, VALUE_BYTES);
        match clients[i % clients.len()].put(&key, &value).await {
            Ok(r) => {
                outside.revisions.insert(r.revision);
                written.push(key);
            }
            Err(e) if e.error_code() == Some(ErrorCode::NoSpace) => {
                refused = true;
                break;
            }
            Err(e) => {
                // It may have applied: it is deleted with the others.
                written.push(key);
                outside.unknown += 1;
                other_errors += 1;
                if other_errors > MAX_OTHER_ERRORS {
                    return Err(format!("the filler's writes keep failing: {e}"));
                }
            }
        }
    }
    if !refused {
        return Err(format!(
            "{MAX_WRITES} writes of {VALUE_BYTES} bytes never met the no_space alarm"
        ));
    }
    tokio::time::sleep(HOLD).await;

    for (i, key) in written.iter().enumerate() {
        let (deleted, failures) = retry(&format!("delete {key}"), || {
            clients[i % clients.len()].delete(key)
        })
        .await?;
        if deleted.deleted > 0 {
            outside.revisions.insert(deleted.revision);
        }
        // A failed attempt may have deleted it, at a revision not known.
        outside.unknown += failures;
    }
    retry("compact", || clients[0].compact(None)).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    for c in &clients {
        crate::common::space_clear(c, deadline)
            .await
            .map_err(|usage| {
                format!(
                    "the space did not come back within 60 s of deletes and a compaction: {usage:?}"
                )
            })?;
    }
    retry("disarm", || clients[0].disarm_no_space(None)).await?;
    Ok(format!(
        "filled the volumes with {} writes of {VALUE_BYTES} bytes until no_space, held it {HOLD:?}, \
         then deleted them, compacted and disarmed",
        written.len()
    ))
}

/// Runs `call` until it succeeds, for at most 30 s; its answer and the failed attempts.
async fn retry<T, F, Fut>(what: &str, mut call: F) -> Result<(T, usize), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, concordance_client::Error>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut failures = 0;
    loop {
        match call().await {
            Ok(v) => return Ok((v, failures)),
            Err(e) if Instant::now() > deadline => return Err(format!("{what}: {e}")),
            Err(_) => {
                failures += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
