//! `coffer serve`'s start-up and shutdown, through the real binary: a mistake is one line on
//! standard error and exit code 1, before anything is created; a signal makes the process
//! unready, ends the event streams with a `shutdown` event and finishes the requests in flight;
//! a second signal ends it at once.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use common::{TOKEN, WEBHOOK_SECRET_KEY, free_port};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Generous: what these tests guard used to take 30 s (a drain held by a stream), and a loaded
/// machine must not fail them.
const PROMPTLY: Duration = Duration::from_secs(5);

/// A `coffer serve` whose standard output and error go to files of the test's.
struct Coffer {
    child: Child,
    port: u16,
    stdout: PathBuf,
    stderr: PathBuf,
}

/// `coffer serve` on `port` with its data in `data_dir`, logs as JSON at `info`, `env` added.
fn serve_command(
    data_dir: &Path,
    port: u16,
    env: &[(&str, &str)],
    logs: &Path,
) -> (Command, PathBuf, PathBuf) {
    let (stdout, stderr) = (logs.join("stdout"), logs.join("stderr"));
    let mut command = Command::new(env!("CARGO_BIN_EXE_coffer"));
    command
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(data_dir)
        .env("COFFER_LOG_LEVEL", "info")
        .env("COFFER_LOG_FORMAT", "json")
        .env_remove("COFFER_BOOTSTRAP_TOKEN")
        .envs(env.iter().copied())
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap());
    (command, stdout, stderr)
}

impl Coffer {
    /// Starts it and waits until `/readyz` answers 200.
    async fn start(data_dir: &Path, logs: &Path, env: &[(&str, &str)]) -> Coffer {
        let port = free_port();
        let (mut command, stdout, stderr) = serve_command(data_dir, port, env, logs);
        let child = command.spawn().expect("the coffer binary runs");
        let mut coffer = Coffer { child, port, stdout, stderr };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if coffer.readyz().await == Some(200) {
                return coffer;
            }
            if let Some(status) = coffer.child.try_wait().unwrap() {
                panic!("coffer serve exited ({status}) before it was ready: {}", coffer.stderr());
            }
            assert!(Instant::now() < deadline, "coffer serve did not become ready: {}", coffer.stderr());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// `/readyz`'s status, on a connection of its own; none when nothing answered.
    async fn readyz(&self) -> Option<u16> {
        let client = reqwest::Client::builder().no_proxy().pool_max_idle_per_host(0).build().unwrap();
        let answer = client.get(self.url("/readyz")).timeout(Duration::from_secs(2)).send().await;
        answer.ok().map(|r| r.status().as_u16())
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args([signal, &pid]).status().unwrap().success());
    }

    /// Its exit status, which must come `within`.
    fn exits_within(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "coffer serve did not exit within {within:?}: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap()
    }

    /// Waits until `/readyz` answers 503: the first signal has been taken.
    async fn unready_within(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let status = self.readyz().await;
            if status == Some(503) {
                return;
            }
            assert!(Instant::now() < deadline, "/readyz still answers {status:?} after the signal");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Coffer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `coffer serve` to its end, which must come within 30 s (start-up mistakes are found at
/// once): its exit status, standard output and error.
fn run_to_end(mut command: Command, stdout: &Path, stderr: &Path) -> (ExitStatus, String, String) {
    let mut child = command.spawn().expect("the coffer binary runs");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("coffer serve kept running: {}", std::fs::read_to_string(stderr).unwrap());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, std::fs::read_to_string(stdout).unwrap(), std::fs::read_to_string(stderr).unwrap())
}

/// A request whose body is still coming: in flight until [`finish_slow_request`].
async fn start_slow_request(port: u16) -> tokio::net::TcpStream {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let head = format!(
        "POST /v1/ledgers HTTP/1.1\r\nHost: coffer\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        SLOW_BODY.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&SLOW_BODY.as_bytes()[..1]).await.unwrap();
    stream
}

const SLOW_BODY: &str = r#"{"code":"SLOW","scale":2}"#;

/// Sends the rest of the body and answers the response's status line.
async fn finish_slow_request(mut stream: tokio::net::TcpStream) -> String {
    stream.write_all(&SLOW_BODY.as_bytes()[1..]).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(PROMPTLY, stream.read_to_end(&mut answer)).await;
    read.expect("the request in flight is answered").unwrap();
    String::from_utf8_lossy(&answer).lines().next().unwrap_or_default().to_owned()
}

#[test]
fn a_port_in_use_is_one_line_and_exit_1_before_anything_is_created() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    // No bootstrap token: a first start would make a key and print its token.
    let (command, stdout, stderr) = serve_command(&data_dir, port, &[], dir.path());
    let (status, out, err) = run_to_end(command, &stdout, &stderr);
    assert_eq!(status.code(), Some(1), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr, nothing before or after it: {err}");
    let line = lines[0];
    assert!(line.starts_with("coffer: "), "{line}");
    assert!(line.contains(&format!("127.0.0.1:{port}")), "names the address: {line}");
    assert!(line.contains("in use") && line.contains("--listen"), "says what to try: {line}");
    assert!(!out.contains("token") && !err.contains("token"), "no admin token printed: {out}{err}");
    assert!(!data_dir.exists(), "nothing was created in the data dir");
    drop(taken);
}

#[test]
fn a_missing_postgres_database_is_named_with_host_port_and_the_server_message() {
    let admin_url = std::env::var("COFFER_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let config: tokio_postgres::Config = admin_url.parse().expect("a PostgreSQL URL");
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        _ => return eprintln!("SKIPPED: COFFER_TEST_DATABASE_URL names no TCP host"),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    if let Err(e) = std::net::TcpStream::connect_timeout(
        &format!("{host}:{port}").parse().unwrap_or_else(|_| ([127, 0, 0, 1], port).into()),
        Duration::from_secs(2),
    ) {
        coffer_testkit::missing::<()>(&format!("PostgreSQL at {host}:{port}"), e);
        return;
    }
    let user = config.get_user().unwrap_or("postgres");
    // With the server's trust authentication any password does; none may be shown.
    let password = config
        .get_password()
        .map_or("hunter2-never-shown".to_owned(), |p| String::from_utf8_lossy(p).into_owned());
    let database = format!("coffer_missing_{}", std::process::id());
    let url = format!("postgres://{user}:{password}@{host}:{port}/{database}");
    let dir = tempfile::tempdir().unwrap();
    let env = [("COFFER_DATABASE_URL", url.as_str()), ("COFFER_WEBHOOK_SECRET_KEYS", WEBHOOK_SECRET_KEY)];
    let (command, stdout, stderr) = serve_command(dir.path(), free_port(), &env, dir.path());
    let (status, _, err) = run_to_end(command, &stdout, &stderr);
    assert_eq!(status.code(), Some(1), "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert_eq!(err.lines().filter(|l| l.starts_with("coffer: ")).count(), 1, "{err}");
    assert!(last.starts_with("coffer: "), "the error is the last line: {err}");
    assert!(last.contains(&format!("{host}:{port}")), "names the server: {last}");
    assert!(last.contains(&format!("database \"{database}\" does not exist")), "PostgreSQL's words: {last}");
    assert!(!err.contains(&password), "the password is never shown: {err}");
}

#[test]
fn a_configuration_mistake_has_no_backtrace_whatever_rust_backtrace_says() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("coffer.toml");
    std::fs::write(&file, "shutdown_timeout_ms = \"soon\"\n").unwrap();
    let (mut command, stdout, stderr) = serve_command(dir.path(), free_port(), &[], dir.path());
    command.arg("--config").arg(&file).env("RUST_BACKTRACE", "1").env("RUST_LIB_BACKTRACE", "1");
    let (status, _, err) = run_to_end(command, &stdout, &stderr);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(!err.to_lowercase().contains("backtrace"), "no backtrace for a user's mistake: {err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("coffer: ") && err.contains("shutdown_timeout_ms"), "names the setting: {err}");
}

#[tokio::test]
async fn sigterm_ends_an_open_event_stream_with_a_shutdown_event_and_exits_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let mut coffer =
        Coffer::start(&dir.path().join("data"), dir.path(), &[("COFFER_BOOTSTRAP_TOKEN", TOKEN)]).await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut stream = client.get(coffer.url("/v1/events/stream")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    let signalled = Instant::now();
    coffer.signal("-TERM");
    let mut got = String::new();
    let ended = tokio::time::timeout(PROMPTLY, async {
        while let Some(chunk) = stream.chunk().await.expect("the stream ends cleanly") {
            got.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream was not closed after SIGTERM; it sent: {got}");
    assert!(got.contains("event: shutdown"), "a final shutdown event: {got}");
    assert!(got.contains("retry: "), "with a reconnection hint: {got}");
    assert!(got.contains("Last-Event-ID"), "telling the client how to resume: {got}");
    let status = coffer.exits_within(PROMPTLY);
    assert!(status.success(), "{status}: {}", coffer.stderr());
    assert!(signalled.elapsed() < PROMPTLY);
}

#[tokio::test]
async fn during_the_drain_readiness_is_503_and_the_request_in_flight_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let mut coffer =
        Coffer::start(&dir.path().join("data"), dir.path(), &[("COFFER_BOOTSTRAP_TOKEN", TOKEN)]).await;
    let slow = start_slow_request(coffer.port).await;
    // The server must have read the head before the signal, or the request is not in flight.
    tokio::time::sleep(Duration::from_millis(300)).await;
    coffer.signal("-TERM");
    coffer.unready_within(PROMPTLY).await;
    assert!(coffer.child.try_wait().unwrap().is_none(), "the drain waits for the request in flight");
    let answer = finish_slow_request(slow).await;
    assert!(answer.contains(" 201 "), "the request in flight was answered: {answer}");
    let status = coffer.exits_within(PROMPTLY);
    assert!(status.success(), "{status}: {}", coffer.stderr());
}

#[tokio::test]
async fn a_second_sigint_exits_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut coffer =
        Coffer::start(&dir.path().join("data"), dir.path(), &[("COFFER_BOOTSTRAP_TOKEN", TOKEN)]).await;
    // Holds the drain for the whole shutdown_timeout_ms (30 s).
    let _slow = start_slow_request(coffer.port).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    coffer.signal("-INT");
    coffer.unready_within(PROMPTLY).await;
    coffer.signal("-INT");
    let status = coffer.exits_within(PROMPTLY);
    assert_eq!(status.code(), Some(130), "{}", coffer.stderr());
    let err = coffer.stderr();
    let last = err.lines().last().unwrap_or_default();
    assert!(last.starts_with("coffer: ") && last.contains("at once"), "says so: {err}");
}

#[tokio::test]
async fn a_bootstrap_token_ignored_because_the_store_has_keys_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let warned = |coffer: &Coffer| {
        coffer.stderr().lines().any(|line| line.contains("\"WARN\"") && line.contains("bootstrap_token"))
    };
    // First start, no token: a key is made and its token printed.
    let mut first = Coffer::start(&data_dir, dir.path(), &[]).await;
    assert!(first.stdout().contains("Created the first admin key"), "{}", first.stdout());
    first.signal("-TERM");
    assert!(first.exits_within(PROMPTLY).success());

    // A token now is not a key of this store: said so.
    let mut second =
        Coffer::start(&data_dir, dir.path(), &[("COFFER_BOOTSTRAP_TOKEN", "not-a-key-here")]).await;
    assert!(warned(&second), "a warning that the token is ignored: {}", second.stderr());
    let line = second.stderr().lines().find(|l| l.contains("bootstrap_token")).unwrap().to_owned();
    assert!(line.contains("coffer keys create"), "says what to do: {line}");
    let refused = reqwest::Client::new().get(second.url("/v1/ledgers")).bearer_auth("not-a-key-here");
    assert_eq!(refused.send().await.unwrap().status(), 401, "the ignored token is no key");
    second.signal("-TERM");
    assert!(second.exits_within(PROMPTLY).success());
}

#[tokio::test]
async fn a_bootstrap_token_that_is_the_stores_admin_key_is_not_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    for _ in 0..2 {
        let mut coffer = Coffer::start(&data_dir, dir.path(), &[("COFFER_BOOTSTRAP_TOKEN", TOKEN)]).await;
        assert!(!coffer.stderr().contains("bootstrap_token"), "{}", coffer.stderr());
        coffer.signal("-TERM");
        assert!(coffer.exits_within(PROMPTLY).success());
    }
}
