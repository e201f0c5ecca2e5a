//! Concordance's HTTP API types and a typed async client.
//!
//! ```no_run
//! # async fn demo() -> Result<(), concordance_client::Error> {
//! use concordance_client::{Client, Compare, Txn, TxnOp};
//! // Several endpoints: the client follows the leader, retries with backoff, and gives every
//! // write an idempotency key so a retry applies once.
//! let client = Client::builder()
//!     .endpoints(["10.0.0.1:4100", "10.0.0.2:4100", "10.0.0.3:4100"])
//!     .api_key("secret")
//!     .build()?;
//! client.put("agents/a17/state", &serde_json::json!({"step": 3})).await?;
//! let kv = client.get("agents/a17/state").await?;
//! let claimed = client
//!     .txn(&Txn::new()
//!         .when(Compare::missing("jobs/42/owner"))
//!         .then(TxnOp::put("jobs/42/owner", serde_json::json!("a17")))
//!         .build())
//!     .await?
//!     .succeeded;
//! # Ok(()) }
//! ```

mod client;
#[cfg(feature = "dev")]
pub mod dev;
mod error;
mod lease;
mod lock;
pub mod membership;
mod txn;
pub mod types;
mod watch;

pub use crate::client::Client;
pub use crate::client::ClientBuilder;
pub use crate::client::RetryPolicy;
pub use crate::error::Error;
pub use crate::lease::KeepAlive;
pub use crate::txn::Txn;
pub use crate::types::*;
pub use crate::watch::WatchOptions;
pub use crate::watch::WatchStream;
/// Re-exported for [`Client::call`].
pub use reqwest::Method;
