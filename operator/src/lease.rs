//! Leader election on a `coordination.k8s.io` Lease, so two operator replicas can run: one
//! reconciles, the other waits. Optimistic concurrency (the Lease's resourceVersion) makes
//! acquiring and renewing safe against a racing replica.
//!
//! Time is read from this replica's own monotonic clock only, as client-go does: a candidate
//! counts a holder's lease as running from when it last *saw the record change*, never from
//! the times written in it, which come from another replica's clock and may be off by any
//! amount. The holder stops leading a third of the lease before anyone may take over, counted
//! from when it *sent* its last successful renewal, and every call to the API server has a
//! deadline, so a hung call cannot keep it leading past that.

use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::time::Instant;

/// Why one attempt to take or renew the lease did not answer.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("the API server did not answer within {0:?}")]
    TimedOut(Duration),
}

/// What this replica last saw of the Lease, and when by its own clock.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    /// The record's resourceVersion: any write by anyone changes it.
    pub version: Option<String>,
    pub holder: Option<String>,
    /// The duration the holder asked for.
    pub duration: Duration,
    /// When this replica first saw this version.
    pub seen_at: Instant,
}

impl Observation {
    /// Whether someone else holds the lease at `now`: they named themselves and the record
    /// changed less than its duration ago, by this replica's clock.
    pub fn held_by_another(&self, me: &str, now: Instant) -> bool {
        let named = self
            .holder
            .as_deref()
            .is_some_and(|h| !h.is_empty() && h != me);
        named && now < self.seen_at + self.duration
    }

    /// The observation after reading `lease` at `now`: unchanged (its clock keeps running)
    /// while the record is the one already seen.
    pub fn after_reading(previous: Option<&Observation>, lease: &Lease, now: Instant) -> Self {
        let spec = lease.spec.clone().unwrap_or_default();
        let version = lease.metadata.resource_version.clone();
        match previous {
            Some(p) if p.version == version => p.clone(),
            _ => Observation {
                version,
                holder: spec.holder_identity,
                duration: Duration::from_secs(
                    spec.lease_duration_seconds.unwrap_or(15).max(1) as u64
                ),
                seen_at: now,
            },
        }
    }
}

pub struct LeaderLease {
    api: Api<Lease>,
    name: String,
    holder: String,
    duration: Duration,
    /// The longest one call to the API server may take.
    call_timeout: Duration,
    observed: Mutex<Option<Observation>>,
}

impl LeaderLease {
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        holder: &str,
        duration: Duration,
    ) -> Self {
        LeaderLease {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            holder: holder.to_string(),
            duration,
            call_timeout: duration / 3,
            observed: Mutex::new(None),
        }
    }

    /// How long after the start of its last successful renewal the holder stops leading:
    /// two thirds of the lease, so it stops well before a candidate may take over.
    fn renew_deadline(&self) -> Duration {
        self.duration * 2 / 3
    }

    fn spec(&self, transitions: i32, acquired: Option<MicroTime>) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        LeaseSpec {
            holder_identity: Some(self.holder.clone()),
            lease_duration_seconds: Some(self.duration.as_secs() as i32),
            acquire_time: Some(acquired.unwrap_or_else(|| now.clone())),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    async fn call<T>(
        &self,
        limit: Duration,
        f: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, LeaseError> {
        let limit = limit.min(self.call_timeout);
        Ok(tokio::time::timeout(limit, f)
            .await
            .map_err(|_| LeaseError::TimedOut(limit))??)
    }

    /// One attempt to take or renew the lease, each call within `limit`: `Ok(true)` while it
    /// is ours.
    pub async fn try_acquire(&self, limit: Duration) -> Result<bool, LeaseError> {
        let Some(mut lease) = self.call(limit, self.api.get_opt(&self.name)).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(self.spec(0, None)),
            };
            return match self
                .call(limit, self.api.create(&PostParams::default(), &lease))
                .await
            {
                Ok(_) => Ok(true),
                Err(LeaseError::Kube(kube::Error::Api(e))) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let now = Instant::now();
        let seen = {
            let mut observed = self.observed.lock().unwrap_or_else(|p| p.into_inner());
            let seen = Observation::after_reading(observed.as_ref(), &lease, now);
            *observed = Some(seen.clone());
            seen
        };
        if seen.held_by_another(&self.holder, now) {
            return Ok(false);
        }
        let spec = lease.spec.clone().unwrap_or_default();
        let ours = spec.holder_identity.as_deref() == Some(&self.holder);
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!ours);
        lease.spec = Some(self.spec(transitions, if ours { spec.acquire_time } else { None }));
        match self
            .call(
                limit,
                self.api.replace(&self.name, &PostParams::default(), &lease),
            )
            .await
        {
            Ok(_) => Ok(true),
            // Someone else wrote it first.
            Err(LeaseError::Kube(kube::Error::Api(e))) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits until the lease is ours; returns when the attempt that took it started (the
    /// holder's deadlines count from there).
    pub async fn acquire(&self) -> Instant {
        loop {
            let started = Instant::now();
            match self.try_acquire(self.call_timeout).await {
                Ok(true) => return started,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "leader lease"),
            }
            tokio::time::sleep(self.duration / 4).await;
        }
    }

    /// Renews the lease; returns when it is lost: taken by someone else, or not renewed
    /// within [`Self::renew_deadline`] of the start of the last renewal that succeeded
    /// (`acquired`: the start of the attempt that took it).
    pub async fn hold(&self, acquired: Instant) {
        let mut renewed = acquired;
        loop {
            let deadline = renewed + self.renew_deadline();
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::error!("the leader lease was not renewed in time");
                return;
            }
            tokio::time::sleep((self.duration / 4).min(left)).await;
            let started = Instant::now();
            let left = deadline.saturating_duration_since(started);
            if left.is_zero() {
                continue;
            }
            match self.try_acquire(left).await {
                Ok(true) => renewed = started,
                Ok(false) => return,
                Err(e) => tracing::warn!(error = %e, "renewing the leader lease"),
            }
        }
    }

    /// Gives the lease up so a standby takes over at once (on a clean shutdown).
    pub async fn release(&self) {
        let limit = self.call_timeout;
        if let Ok(Some(mut lease)) = self.call(limit, self.api.get_opt(&self.name)).await
            && let Some(spec) = lease.spec.as_mut()
            && spec.holder_identity.as_deref() == Some(&self.holder)
        {
            spec.holder_identity = None;
            spec.renew_time = None;
            let _ = self
                .call(
                    limit,
                    self.api.replace(&self.name, &PostParams::default(), &lease),
                )
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(version: &str, holder: &str, renewed: Timestamp) -> Lease {
        Lease {
            metadata: ObjectMeta {
                resource_version: Some(version.into()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                lease_duration_seconds: Some(10),
                renew_time: Some(MicroTime(renewed)),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn a_holder_whose_clock_is_an_hour_behind_keeps_the_lease_while_it_renews() {
        let an_hour_ago = Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_hours(1);
        let t0 = Instant::now();
        let mut seen = Observation::after_reading(None, &lease("1", "a", an_hour_ago), t0);
        // It renews every 2.5 s; its renew times are an hour old by our clock.
        for (i, at) in (1..=8).map(|i| (i, t0 + Duration::from_millis(2500 * i))) {
            let version = (i + 1).to_string();
            seen = Observation::after_reading(Some(&seen), &lease(&version, "a", an_hour_ago), at);
            assert!(seen.held_by_another("b", at), "taken over at {i}");
        }
    }

    #[test]
    fn a_holder_whose_clock_is_an_hour_ahead_loses_the_lease_a_duration_after_it_stops() {
        let in_an_hour = Timestamp::now() + k8s_openapi::jiff::SignedDuration::from_hours(1);
        let t0 = Instant::now();
        let first = Observation::after_reading(None, &lease("7", "a", in_an_hour), t0);
        // The same record read again and again: its clock runs from the first reading.
        let later = t0 + Duration::from_secs(9);
        let seen = Observation::after_reading(Some(&first), &lease("7", "a", in_an_hour), later);
        assert!(seen.held_by_another("b", later));
        let after = t0 + Duration::from_millis(10_001);
        assert!(!seen.held_by_another("b", after));
        // Our own record or nobody's is never held against us.
        assert!(!seen.held_by_another("a", later));
        let released = Observation::after_reading(Some(&seen), &lease("8", "", in_an_hour), later);
        assert!(!released.held_by_another("b", later));
    }

    /// A server that accepts connections and never answers.
    async fn hung_server() -> (Client, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accept = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
        (Client::try_from(config).unwrap(), accept)
    }

    #[tokio::test]
    async fn a_hung_api_server_ends_the_hold_within_the_renew_deadline() {
        let (client, server) = hung_server().await;
        let lease = LeaderLease::new(client, "default", "l", "a", Duration::from_secs(3));
        let acquired = Instant::now();
        let held = tokio::time::timeout(Duration::from_secs(10), lease.hold(acquired)).await;
        assert!(held.is_ok(), "hold did not return on a hung API server");
        let took = acquired.elapsed();
        // It keeps trying for two thirds of the 3 s lease, and stops before the lease could
        // pass to a candidate (3 s after it last saw a renewal).
        assert!(
            took >= Duration::from_secs(2) && took < Duration::from_secs(3),
            "stopped after {took:?}"
        );
        let attempt = lease.try_acquire(Duration::from_secs(5)).await;
        assert!(
            matches!(attempt, Err(LeaseError::TimedOut(d)) if d == Duration::from_secs(1)),
            "{attempt:?}"
        );
        server.abort();
    }
}
