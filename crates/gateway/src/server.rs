//! Accepting client connections: TLS termination when configured (`tls`), HTTP/1.1 and HTTP/2, a
//! deadline on request headers, and a graceful drain.
//!
//! The gateway runs its own accept loop instead of `axum::serve` for two things that one lacks:
//! a header read timeout (a slowloris client that sends its headers a byte at a time would
//! otherwise hold a connection and a task forever; body slowness is `body_read_timeout_ms`'s
//! job), and TLS. A TLS handshake gets the same deadline as the headers.
//!
//! Every request goes straight to the proxy handler, with no router in between: the proxy
//! listener has one route, and what a router costs per request is a measurable share of a
//! proxy's work (docs/BENCHMARKS.md).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::convert::Infallible;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

use crate::client::Peer;
use crate::proxy::{self, Shared};
use crate::tls;

/// How connections are accepted and served.
pub struct Listener {
    pub tcp: TcpListener,
    pub tls: Option<Arc<tls::ServingCertificate>>,
    pub header_read_timeout: Duration,
}

/// Serves the proxy on every connection until `stop` completes, then stops accepting and lets each
/// connection finish its request in flight (and close) for at most `drain`. Answers whether
/// everything finished in time.
pub async fn serve(
    listener: Listener,
    shared: Arc<Shared>,
    stop: impl Future<Output = ()>,
    drain: Duration,
) -> bool {
    let Listener { tcp, tls, header_read_timeout } = listener;
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let mut stop = std::pin::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut stop => break,
            accepted = accept(&tcp) => accepted,
        };
        let (shared, builder, tls, watcher) =
            (shared.clone(), builder.clone(), tls.clone(), graceful.watcher());
        tokio::spawn(async move {
            let Some(certificate) = tls else {
                return serve_connection(&builder, watcher, stream, shared, peer).await;
            };
            let acceptor = certificate.acceptor();
            if let Some(stream) = tls::handshake(&acceptor, stream, peer, header_read_timeout).await {
                serve_connection(&builder, watcher, stream, shared, peer).await;
            }
        });
    }
    drop(tcp);
    tokio::time::timeout(drain, graceful.shutdown()).await.is_ok()
}

/// The next connection, with Nagle's delay off. A failed accept (out of file descriptors and
/// the like) is logged and waited out instead of spun on.
pub(crate) async fn accept(tcp: &TcpListener) -> (TcpStream, SocketAddr) {
    loop {
        match tcp.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                return (stream, peer);
            }
            Err(err) => {
                tracing::warn!(error = %err, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Serves one client connection (plain or TLS) until it closes or the drain ends it.
async fn serve_connection<I>(
    builder: &Builder<TokioExecutor>,
    watcher: Watcher,
    io: I,
    shared: Arc<Shared>,
    peer: SocketAddr,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let facts = Arc::new(Peer::new(peer.ip(), &shared.trusted_proxies));
    let service = hyper::service::service_fn(move |request: http::Request<Incoming>| {
        let (shared, facts) = (shared.clone(), facts.clone());
        async move { Ok::<_, Infallible>(proxy::handle(&shared, &facts, request).await) }
    });
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    // A client that hangs up or times out is routine, not an error of the gateway.
    if let Err(err) = watcher.watch(connection.into_owned()).await {
        tracing::debug!(%peer, error = %err, "client connection ended with an error");
    }
}
