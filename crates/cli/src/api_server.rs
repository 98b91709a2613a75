//! The API's accept loop: HTTP/1.1 and HTTP/2 with the limits a slow or greedy client must not
//! get past (DESIGN §5), which `axum::serve` does not offer.
//!
//! - a deadline on request headers: a client that sends them a byte at a time (slowloris) would
//!   otherwise hold a connection and a task for ever;
//! - a cap on open connections: past it the loop stops accepting, and the kernel's backlog (then
//!   the client's connect timeout) absorbs the excess instead of this process's memory;
//! - HTTP/2: a bound on concurrent streams per connection, on the header list, and a keep-alive
//!   ping that finds dead peers.
//!
//! Each request carries its client's address (`ConnectInfo<SocketAddr>`), which the API limits
//! failed authentications by.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::connect_info::ConnectInfo;
use axum::serve::Listener;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt;

/// What one process lets its clients hold.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    pub http2_max_concurrent_streams: u32,
    pub max_header_bytes: usize,
}

/// How long a connection accepted during the drain is served before it is asked to close: a
/// client whose load balancer has not yet seen `/readyz` fail still gets its answers, on
/// connections that do not outlive the drain.
const LATE_CONNECTION_GRACE: Duration = Duration::from_secs(1);

/// Serves `router` on `listener` until `stop` completes with how long the drain may take, then
/// drains: open connections are closed once their requests in flight are answered (idle ones at
/// once), new connections are still accepted and served for a short while (a load balancer
/// takes a moment to see `/readyz` fail), and once no connection is left, or the drain's time
/// has passed, it returns. Answers whether every connection finished in time.
pub async fn serve<L>(
    mut listener: L,
    router: Router,
    limits: ServerLimits,
    stop: impl Future<Output = Duration>,
) -> bool
where
    L: Listener<Addr = SocketAddr>,
{
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    let builder = Arc::new(builder);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (draining_tx, draining) = watch::channel(false);
    let open = Arc::new(watch::Sender::new(0usize));
    let mut idle = open.subscribe();
    let mut stop = std::pin::pin!(stop);
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        // A free slot first: at the cap, connections wait in the kernel's backlog.
        let next = async {
            let permit = slots.clone().acquire_owned().await;
            (permit, listener.accept().await)
        };
        let (permit, (io, peer)) = tokio::select! {
            drain = &mut stop, if deadline.is_none() => {
                draining_tx.send_replace(true);
                deadline = Some(tokio::time::Instant::now() + drain);
                continue;
            }
            () = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => {
                return false;
            }
            _ = idle.wait_for(|open| *open == 0), if deadline.is_some() => return true,
            next = next => next,
        };
        let Ok(permit) = permit else { return deadline.is_none() };
        let late = deadline.is_some();
        let (builder, router, mut draining) = (builder.clone(), router.clone(), draining.clone());
        open.send_modify(|open| *open += 1);
        let open = OpenConnection(open.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |mut request: http::Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                let router = router.clone();
                async move {
                    Ok::<_, Infallible>(router.oneshot(request).await.unwrap_or_else(|never| match never {}))
                }
            });
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service).into_owned();
            let mut connection = std::pin::pin!(connection);
            let asked_to_close = async {
                // Also when the server is gone (the sender dropped): nothing waits for us then.
                let _ = draining.wait_for(|draining| *draining).await;
                if late {
                    tokio::time::sleep(LATE_CONNECTION_GRACE).await;
                }
            };
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                () = asked_to_close => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            // A client that hangs up or is timed out is routine, not an error of the server.
            if let Err(err) = ended {
                tracing::debug!(%peer, error = %err, "client connection ended with an error");
            }
            drop((permit, open));
        });
    }
}

/// Counts one open connection for as long as it lives.
struct OpenConnection(Arc<watch::Sender<usize>>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.send_modify(|open| *open -= 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    async fn start(limits: ServerLimits) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new().route(
            "/",
            axum::routing::get(
                |ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.ip().to_string() },
            ),
        );
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let stop = async {
            let _ = stop_rx.await;
            Duration::from_secs(1)
        };
        tokio::spawn(serve(listener, router, limits, stop));
        (addr, stop_tx)
    }

    fn limits() -> ServerLimits {
        ServerLimits {
            header_read_timeout: Duration::from_millis(200),
            max_connections: 1,
            http2_max_concurrent_streams: 8,
            max_header_bytes: 16 * 1024,
        }
    }

    const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n";

    /// Reads until a whole answer came (its body is the client's address), the peer closed, or
    /// `within` passed; answers what came and whether the peer closed.
    async fn read_for(stream: &mut TcpStream, within: Duration) -> (String, bool) {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        let closed = tokio::time::timeout(within, async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return true,
                    Ok(n) => {
                        got.extend_from_slice(&buf[..n]);
                        if got.windows(9).any(|w| w == b"127.0.0.1") {
                            return false;
                        }
                    }
                }
            }
        })
        .await
        .unwrap_or(false);
        (String::from_utf8_lossy(&got).into_owned(), closed)
    }

    #[tokio::test]
    async fn a_client_that_never_finishes_its_headers_is_cut_off() {
        let (addr, _stop) = start(limits()).await;
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n").await.unwrap();
        let (answer, closed) = read_for(&mut slow, Duration::from_secs(10)).await;
        assert!(
            closed && !answer.contains("200 OK"),
            "a request whose headers never end kept its connection"
        );
    }

    #[tokio::test]
    async fn past_the_connection_cap_a_client_waits_until_a_slot_frees() {
        // Idle keep-alive connections are closed after the header deadline too: a long one here.
        let limits = ServerLimits { header_read_timeout: Duration::from_secs(30), ..limits() };
        let (addr, _stop) = start(limits).await;
        let mut first = TcpStream::connect(addr).await.unwrap();
        first.write_all(REQUEST).await.unwrap();
        let (answer, _) = read_for(&mut first, Duration::from_millis(500)).await;
        assert!(answer.contains("127.0.0.1"), "the handler sees the client's address: {answer}");

        // The first connection is kept alive and holds the only slot.
        let mut second = TcpStream::connect(addr).await.unwrap();
        second.write_all(REQUEST).await.unwrap();
        let (answer, _) = read_for(&mut second, Duration::from_millis(300)).await;
        assert!(answer.is_empty(), "served past the cap: {answer}");
        drop(first);
        let (answer, _) = read_for(&mut second, Duration::from_secs(10)).await;
        assert!(answer.contains("200 OK"), "{answer}");
    }
}
