//! One HTTP/1.1 keep-alive connection of the load generator, on hyper directly so that the
//! client costs as little CPU as possible on the machine it shares with the server.

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;

/// Where the server is and how to authenticate.
#[derive(Clone)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub authorization: String,
}

impl Target {
    pub fn parse(url: &str, token: &str) -> anyhow::Result<Self> {
        let uri: hyper::Uri = url.parse().with_context(|| format!("bad --url {url:?}"))?;
        if uri.scheme_str() != Some("http") {
            bail!("--url must be an http:// URL");
        }
        let host = uri.host().context("--url has no host")?.to_owned();
        Ok(Self { host, port: uri.port_u16().unwrap_or(80), authorization: format!("Bearer {token}") })
    }
}

pub struct Connection {
    target: Target,
    sender: SendRequest<Full<Bytes>>,
}

impl Connection {
    pub async fn open(target: &Target) -> anyhow::Result<Self> {
        Self::open_from(target, None).await
    }

    /// A connection from the local address `source` (one of many loopback addresses, so the
    /// server sees many clients), or from the one the system picks.
    pub async fn open_from(target: &Target, source: Option<std::net::IpAddr>) -> anyhow::Result<Self> {
        let cannot = || format!("cannot connect to {}:{}", target.host, target.port);
        let stream = match source {
            None => tokio::net::TcpStream::connect((target.host.as_str(), target.port)).await,
            Some(source) => {
                let server = tokio::net::lookup_host((target.host.as_str(), target.port))
                    .await
                    .with_context(cannot)?
                    .find(|addr| addr.is_ipv4() == source.is_ipv4())
                    .with_context(cannot)?;
                let socket = if source.is_ipv4() {
                    tokio::net::TcpSocket::new_v4()?
                } else {
                    tokio::net::TcpSocket::new_v6()?
                };
                socket.bind((source, 0).into()).with_context(|| format!("cannot bind to {source}"))?;
                socket.connect(server).await
            }
        }
        .with_context(cannot)?;
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(Self { target: target.clone(), sender })
    }

    /// Sends a JSON POST and returns the status and the whole body.
    pub async fn post(&mut self, path: &str, body: String) -> anyhow::Result<(StatusCode, Bytes)> {
        self.send(path, Some(body)).await
    }

    /// Sends a GET with this Authorization header instead of the target's, and returns the status
    /// (the body is read and dropped).
    pub async fn send_as(&mut self, path: &str, authorization: &str) -> anyhow::Result<StatusCode> {
        let request = Request::builder()
            .uri(path)
            .header(hyper::header::HOST, &self.target.host)
            .header(hyper::header::AUTHORIZATION, authorization)
            .method(Method::GET)
            .body(Full::new(Bytes::new()))?;
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        response.into_body().collect().await?;
        Ok(status)
    }

    /// Sends a JSON POST when there is a body and a GET when there is none, and returns the status
    /// and the whole body: the loop in `drive` times both kinds through this one path.
    pub async fn send(&mut self, path: &str, body: Option<String>) -> anyhow::Result<(StatusCode, Bytes)> {
        let builder = Request::builder()
            .uri(path)
            .header(hyper::header::HOST, &self.target.host)
            .header(hyper::header::AUTHORIZATION, &self.target.authorization);
        let request = match body {
            Some(body) => builder
                .method(Method::POST)
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(body)))?,
            None => builder.method(Method::GET).body(Full::new(Bytes::new()))?,
        };
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}
