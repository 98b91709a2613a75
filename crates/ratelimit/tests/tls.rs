//! Shared limits over TLS: a `redis-server` of the test's own that speaks only TLS (a
//! certificate from the test's own authority) answers a `rediss://` limiter that trusts that
//! authority, and no limiter that trusts another one or speaks plain `redis://` to it.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use coffer_ratelimit::{Decision, Rate, RedisLimits};

const TIMEOUT: Duration = Duration::from_millis(500);

type TestCa = rcgen::CertifiedIssuer<'static, rcgen::KeyPair>;

fn test_ca() -> TestCa {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap()
}

/// redis-server on `port`, TLS only (`--port 0`), clients not asked for certificates.
struct TlsRedis(Child);

impl TlsRedis {
    fn start(dir: &Path, ca: &TestCa, port: u16) -> Option<TlsRedis> {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap().signed_by(&key, ca).unwrap();
        for (name, pem) in
            [("redis.pem", cert.pem()), ("redis.key", key.serialize_pem()), ("ca.pem", ca.pem())]
        {
            std::fs::write(dir.join(name), pem).unwrap();
        }
        let file = |name: &str| dir.join(name).display().to_string();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--tls-cert-file", &file("redis.pem"), "--tls-key-file", &file("redis.key")])
            .args(["--tls-ca-cert-file", &file("ca.pem"), "--tls-auth-clients", "no"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn();
        let child = match child {
            Ok(child) => TlsRedis(child),
            Err(e) => return coffer_testkit::missing("redis-server on the PATH", e),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start with TLS (built without it?)");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(child)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn rediss_reaches_a_tls_redis_whose_certificate_it_trusts_and_no_other() {
    // What the coffer binary does at start: the redis client's TLS uses the process's provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let (ca, stranger) = (test_ca(), test_ca());
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let Some(_redis) = TlsRedis::start(dir.path(), &ca, port) else { return };
    std::fs::write(dir.path().join("stranger.pem"), stranger.pem()).unwrap();
    let prefix = format!("coffer-test-{}", uuid::Uuid::new_v4().simple());
    let url = format!("rediss://127.0.0.1:{port}");
    let rate = Rate::new(std::num::NonZeroU32::MIN, std::num::NonZeroU32::MIN);

    let trusting = RedisLimits::new(&url, &prefix, TIMEOUT, Some(&dir.path().join("ca.pem"))).unwrap();
    let first = trusting.check("key", rate).await.expect("Redis answers over TLS");
    let second = trusting.check("key", rate).await.expect("Redis answers over TLS");
    assert_eq!(first, Decision::Allowed);
    assert!(matches!(second, Decision::Limited { .. }), "Redis kept the count: {second:?}");

    let doubting = RedisLimits::new(&url, &prefix, TIMEOUT, Some(&dir.path().join("stranger.pem"))).unwrap();
    assert!(doubting.check("key", rate).await.is_err(), "a certificate from another authority was trusted");
    let plain = RedisLimits::new(&format!("redis://127.0.0.1:{port}"), &prefix, TIMEOUT, None).unwrap();
    assert!(plain.check("key", rate).await.is_err(), "plain redis:// was answered on the TLS port");
}
