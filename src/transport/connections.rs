//! The HTTP accept loop: how many connections the server holds, from whom,
//! and for how long a client may take to send a request. `axum::serve`
//! bounds none of these, so a slow or numerous client could hold the server
//! with connections that never finish a request.
//!
//! - At most `http.max_connections` connections in total (lowered to what
//!   the open-file limit allows) and `http.max_connections_per_address`
//!   from one client address; a connection past either limit is answered
//!   503 with `Retry-After` and closed, before a byte of it is read.
//! - A request head (request line and headers) must arrive within
//!   `http.header_timeout_ms`; the same bound holds for the silence between
//!   requests on a kept-alive connection. The body must arrive within
//!   `http.body_timeout_ms` (enforced where it is read, see `http.rs`).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio_util::sync::CancellationToken;

use crate::config::HttpConfig;

/// Open-file descriptors kept back from the connection limit for the
/// store, the database pools, JWKS fetches and terminal pipes.
const RESERVED_FDS: u64 = 256;

/// The whole answer to a connection past a limit.
const OVER_LIMIT: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 94\r\n\r\n{\"error\":\"temporarily_unavailable\",\"error_description\":\"too many connections; retry shortly\"}\n";

/// Counts connections in total and per client address.
#[derive(Clone)]
pub struct ConnectionLimits {
    inner: Arc<LimitState>,
}

struct LimitState {
    total: usize,
    per_address: usize,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// Holds one connection's place; gives it back when dropped.
pub struct Admitted {
    limits: ConnectionLimits,
    address: IpAddr,
}

impl ConnectionLimits {
    pub fn new(total: usize, per_address: usize) -> Self {
        Self {
            inner: Arc::new(LimitState {
                total,
                per_address,
                open: Mutex::new((0, HashMap::new())),
            }),
        }
    }

    /// A place for a connection from `address`, or `None` past a limit.
    pub fn admit(&self, address: IpAddr) -> Option<Admitted> {
        let mut open = self.inner.open.lock().unwrap_or_else(|e| e.into_inner());
        let (total, by_address) = &mut *open;
        let from_address = by_address.get(&address).copied().unwrap_or(0);
        if *total >= self.inner.total || from_address >= self.inner.per_address {
            return None;
        }
        *total += 1;
        by_address.insert(address, from_address + 1);
        Some(Admitted {
            limits: self.clone(),
            address,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.inner.open.lock().unwrap_or_else(|e| e.into_inner()).0
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self
            .limits
            .inner
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let (total, by_address) = &mut *open;
        *total = total.saturating_sub(1);
        if let Some(count) = by_address.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                by_address.remove(&self.address);
            }
        }
    }
}

/// Raises the soft open-file limit to the hard one and returns how many
/// connections fit under it beside everything else the server opens.
pub fn connection_capacity(configured: usize) -> usize {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return configured;
    };
    let soft = if hard > soft && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        hard
    } else {
        soft
    };
    let fits = usize::try_from(soft.saturating_sub(RESERVED_FDS)).unwrap_or(usize::MAX);
    if fits < configured {
        tracing::warn!(
            configured,
            fits,
            "http.max_connections is above what the open-file limit allows; using the lower figure"
        );
    }
    configured.min(fits).max(1)
}

/// Accepts until `stop` is cancelled, serving each admitted connection with
/// the configured timeouts; then lets every open connection finish the
/// request it is on and waits for them to close.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    config: &HttpConfig,
    limits: ConnectionLimits,
    refused: Arc<std::sync::atomic::AtomicU64>,
    stop: CancellationToken,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(config.header_timeout_ms))
        .keep_alive(true);
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors or a connection reset before it was
                    // accepted: pause briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let Some(admitted) = limits.admit(peer.ip()) else {
            refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!(client = %peer.ip(), "connection refused: connection limit");
            // Said without reading the request, so it costs an attacker's
            // connection nothing to be refused, and a legitimate client
            // learns why and when to retry (a fresh socket has room for it).
            let _ = stream.try_write(OVER_LIMIT);
            drop(stream);
            continue;
        };
        // Without TCP_NODELAY a response's last small segment waits for the
        // client's delayed ACK: measured here, every call took 44 ms on loopback.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY could not be set");
        }
        let router = router.clone();
        let service = hyper::service::service_fn(
            move |mut request: hyper::Request<hyper::body::Incoming>| {
                request
                    .extensions_mut()
                    .insert(ConnectInfo::<SocketAddr>(peer));
                let mut router = router.clone();
                async move { tower::Service::call(&mut router, request).await }
            },
        );
        let connection = graceful.watch(http1.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            let _admitted = admitted;
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection closed with an error");
            }
        });
    }
    graceful.shutdown().await;
}
