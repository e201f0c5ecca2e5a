//! Leases under faults (clock jumps and skews among them): a lease a live client keeps alive
//! all through the run never ends, and a lease left alone from the start has ended by the end.

use std::time::Duration;
use std::time::Instant;

use crate::cluster::client_for;
use crate::workload::Endpoints;

/// The kept lease's TTL: well above the longest a fault keeps every member from answering
/// (a power cut's hold and restart), so keep-alives always land within it.
pub const KEPT_TTL: Duration = Duration::from_secs(15);
/// The abandoned lease's TTL (the shortest a lease may have).
pub const ABANDONED_TTL: Duration = Duration::from_secs(1);

/// What the keeper saw.
#[derive(Debug, Default)]
pub struct LeaseLog {
    pub kept: u64,
    pub abandoned: u64,
    pub keep_alives_ok: usize,
    pub keep_alives_failed: usize,
    /// The longest time between two answered keep-alives (or the grant and the first).
    pub longest_gap: Duration,
    /// The keep-alive answered `lease_not_found`: the lease had ended.
    pub lost: Option<String>,
}

/// Asks `ask` of the endpoints in turn, each within 3 s, until one answers, for at most 30 s.
async fn through_any<T, F, Fut>(endpoints: &Endpoints, what: &str, ask: F) -> Result<T, String>
where
    F: Fn(concordance_client::Client) -> Fut,
    Fut: std::future::Future<Output = Result<T, concordance_client::Error>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while Instant::now() < deadline {
        let all = endpoints.read().unwrap().clone();
        for (_, port) in all {
            match tokio::time::timeout(Duration::from_secs(3), ask(client_for(port))).await {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "timed out".into(),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!("could not {what} within 30 s: {last}"))
}

/// Grants a lease of `ttl` through any endpoint.
async fn grant(endpoints: &Endpoints, ttl: Duration) -> Result<u64, String> {
    through_any(endpoints, "grant a lease", |c| async move {
        c.lease_grant(ttl).await.map(|g| g.id)
    })
    .await
}

/// Grants the lease to keep and the one to abandon.
pub async fn grant_both(endpoints: &Endpoints) -> Result<LeaseLog, String> {
    Ok(LeaseLog {
        kept: grant(endpoints, KEPT_TTL).await?,
        abandoned: grant(endpoints, ABANDONED_TTL).await?,
        ..LeaseLog::default()
    })
}

/// Keeps `log.kept` alive every 500 ms through the endpoints in turn until `stop`.
pub async fn keep(
    endpoints: Endpoints,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    mut log: LeaseLog,
) -> LeaseLog {
    let mut last_ok = Instant::now();
    let mut turn = 0usize;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let all = endpoints.read().unwrap().clone();
        let (_, port) = all[turn % all.len()].clone();
        turn += 1;
        let answer = tokio::time::timeout(
            Duration::from_secs(2),
            client_for(port).lease_keep_alive(log.kept),
        )
        .await;
        match answer {
            Ok(Ok(_)) => {
                log.longest_gap = log.longest_gap.max(last_ok.elapsed());
                last_ok = Instant::now();
                log.keep_alives_ok += 1;
            }
            Ok(Err(e)) if e.to_string().contains("lease_not_found") => {
                log.lost = Some(format!(
                    "{} s after the last answered keep-alive: {e}",
                    last_ok.elapsed().as_secs_f64()
                ));
                break;
            }
            _ => log.keep_alives_failed += 1,
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    log.longest_gap = log.longest_gap.max(last_ok.elapsed());
    log
}

/// The kept lease lives (its keep-alives never stopped for a TTL), the abandoned one ended.
/// Read linearizably through any endpoint of the healed cluster.
pub async fn check(endpoints: &Endpoints, log: &LeaseLog) -> Result<(), String> {
    if let Some(lost) = &log.lost {
        return Err(format!(
            "the lease a live client kept alive ended ({lost}); longest gap between answered \
             keep-alives {:?}, TTL {KEPT_TTL:?}",
            log.longest_gap
        ));
    }
    if log.longest_gap >= KEPT_TTL {
        return Err(format!(
            "no keep-alive was answered for {:?}, longer than the lease's TTL {KEPT_TTL:?}",
            log.longest_gap
        ));
    }
    let kept = exists(endpoints, log.kept).await?;
    let abandoned = exists(endpoints, log.abandoned).await?;
    if !kept {
        return Err(format!(
            "the kept lease {} is gone though its keep-alives were answered \
             (longest gap {:?})",
            log.kept, log.longest_gap
        ));
    }
    if abandoned {
        return Err(format!(
            "the lease {} left alone since the start still exists",
            log.abandoned
        ));
    }
    Ok(())
}

async fn exists(endpoints: &Endpoints, id: u64) -> Result<bool, String> {
    through_any(endpoints, &format!("read lease {id}"), |c| async move {
        c.lease_get(id).await.map(|found| found.is_some())
    })
    .await
}
