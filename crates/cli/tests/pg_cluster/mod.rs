//! Starts a real PostgreSQL primary with a synchronous streaming-replication standby, each in its
//! own temporary directory on free ports, so that failover tests can `kill -9` the primary, promote
//! the standby, and check that nothing acknowledged was lost (RPO 0).
//!
//! The primary names the standby in `synchronous_standby_names` and runs with
//! `synchronous_commit = on` and `fsync = on`: a commit is acknowledged only once the standby has
//! flushed its WAL. The flip side is deliberate: while the standby is down, every commit on the
//! primary blocks (forever), because acknowledging it would risk losing it. After promotion the
//! former standby runs alone, without a synchronous partner (its own `synchronous_standby_names` is
//! empty, or its writes would block too).
//!
//! The server binaries come from `/usr/lib/postgresql/<version>/bin` (the newest version found).
//! PostgreSQL refuses to run as root, so when the tests run as root every server tool runs as the
//! `postgres` OS user through `runuser`, and the temporary directory is handed to that user.
//!
//! [`PgCluster::primary_port`] and [`PgCluster::standby_port`] name the nodes by the role they
//! started with; they keep these names after a failover.
#![allow(dead_code)] // each test binary uses a different part of this module

pub mod single;

use std::fs;
use std::io::{ErrorKind, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio_postgres::{Client, NoTls};

/// The `application_name` the standby streams with, and the primary waits for.
const STANDBY_NAME: &str = "coffer_standby";
const SERVER_BINARIES: [&str; 4] = ["initdb", "pg_ctl", "pg_basebackup", "postgres"];
const PG_ROOT: &str = "/usr/lib/postgresql";
/// The bound on every wait: a server start, the standby catching up, a promotion, a port closing.
const WAIT: Duration = Duration::from_secs(30);
/// The bound on a single external command (initdb, pg_basebackup), which have no timeout of their own.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
const LOG_TAIL_LINES: usize = 40;

pub struct PgCluster {
    tools: Tools,
    primary: Node,
    standby: Node,
    /// Declared last: removed only after `Drop` has stopped the servers that use it.
    dir: TempDir,
}

/// Runs PostgreSQL's tools from one bin directory, as the `postgres` user when we are root.
struct Tools {
    bin: PathBuf,
    as_postgres: bool,
    /// A directory the tools can enter: some warn or fail when they cannot read their working directory.
    cwd: PathBuf,
}

/// One server: its data directory, log and port, and whether we may still have to stop it.
struct Node {
    role: &'static str,
    data: PathBuf,
    log: PathBuf,
    port: u16,
    running: bool,
}

impl PgCluster {
    /// `None` when the cluster can start; otherwise why not (server binaries not installed, or
    /// running as root without `runuser` or a `postgres` user). The caller decides whether that
    /// skips or fails the test (`COFFER_TEST_REQUIRE_SERVICES`).
    pub fn binaries_missing() -> Option<String> {
        if let Err(why) = server_bin_dir() {
            return Some(why);
        }
        if running_as_root() {
            if !succeeds(Command::new("runuser").arg("--version")) {
                return Some(
                    "running as root, but `runuser` (to run PostgreSQL as postgres) is missing".into(),
                );
            }
            if !succeeds(Command::new("id").arg("postgres")) {
                return Some(
                    "running as root, but there is no `postgres` OS user to run PostgreSQL as".into(),
                );
            }
        }
        None
    }

    /// Starts the primary, then the standby from a base backup of it, and returns once the
    /// primary reports the standby as a streaming synchronous standby. Panics with the servers'
    /// logs when any step fails; the nodes started so far are stopped as the panic unwinds.
    pub async fn start() -> PgCluster {
        let bin = server_bin_dir().unwrap_or_else(|why| panic!("{why}"));
        let dir = tempfile::Builder::new().prefix("coffer-pg-").tempdir().expect("create a temp dir");
        let tools = Tools { bin, as_postgres: running_as_root(), cwd: dir.path().to_path_buf() };
        let mut cluster = PgCluster {
            tools,
            primary: Node::new(dir.path(), "primary"),
            standby: Node::new(dir.path(), "standby"),
            dir,
        };
        // Two sockets bound in turn may, rarely, be given the same port.
        while cluster.standby.port == cluster.primary.port {
            cluster.standby.port = free_port();
        }
        cluster.tools.hand_over(cluster.dir.path());
        cluster.init_primary().await;
        cluster.tools.start(&mut cluster.primary).await;
        cluster.clone_standby().await;
        cluster.tools.start(&mut cluster.standby).await;
        cluster.wait_for_sync_standby().await;
        cluster
    }

    pub fn primary_port(&self) -> u16 {
        self.primary.port
    }

    pub fn standby_port(&self) -> u16 {
        self.standby.port
    }

    /// A URL naming both nodes that connects to whichever is writable, so that it keeps working
    /// across a failover. `database` must be a plain name (it is not percent-encoded).
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/{database}\
             ?target_session_attrs=read-write&connect_timeout=2",
            self.primary.port, self.standby.port
        )
    }

    /// Creates `name` (letters, digits and `_`) on the current primary; it replicates to the standby.
    pub async fn create_database(&self, name: &str) {
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "database name {name:?} must be letters, digits and `_` (it goes into URLs unescaped)"
        );
        let config: tokio_postgres::Config = self.url("postgres").parse().expect("a valid URL");
        let client = connect(&config).await.unwrap_or_else(|e| panic!("connect to the primary: {e}"));
        bounded(client.batch_execute(&format!("CREATE DATABASE \"{name}\"")))
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}\n{}", self.primary.log_tail()));
    }

    /// Kills the primary's postmaster and all its children with SIGKILL (no shutdown, no flush
    /// beyond what was already written), and returns once its port refuses connections. Blocks
    /// the calling thread (at most about 30 s).
    pub fn kill_primary(&mut self) {
        assert!(self.primary.running, "kill_primary: the primary is not running");
        kill(&self.primary).unwrap_or_else(|why| panic!("kill -9 of the primary: {why}"));
        // Only now: had the kill failed, `Drop` would still have to stop what is left.
        self.primary.running = false;
    }

    /// Kills the standby like [`PgCluster::kill_primary`] kills the primary: from then on every
    /// commit on the primary waits for a standby that is gone.
    pub fn kill_standby(&mut self) {
        assert!(self.standby.running, "kill_standby: the standby is not running");
        kill(&self.standby).unwrap_or_else(|why| panic!("kill -9 of the standby: {why}"));
        self.standby.running = false;
    }

    /// Lets the primary commit alone (`synchronous_standby_names = ''`, reloaded): what an
    /// operator does to restore write availability when the synchronous standby is lost, at the
    /// price of RPO 0. Commits waiting for the standby complete.
    pub async fn commit_without_standby(&self) {
        let config: tokio_postgres::Config = self.url("postgres").parse().expect("a valid URL");
        let client = connect(&config).await.unwrap_or_else(|e| panic!("connect to the primary: {e}"));
        // Two statements: ALTER SYSTEM refuses to run inside the implicit block of a multi-statement query.
        for sql in ["ALTER SYSTEM SET synchronous_standby_names = ''", "SELECT pg_reload_conf()"] {
            bounded(client.batch_execute(sql))
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}\n{}", self.primary.log_tail()));
        }
    }

    /// Promotes the standby and returns once it commits a write.
    pub async fn promote_standby(&mut self) {
        assert!(self.standby.running, "promote_standby: the standby is not running");
        let mut promote = self.tools.command("pg_ctl");
        promote.arg("-D").arg(&self.standby.data).args(["-w", "-t", &WAIT.as_secs().to_string(), "promote"]);
        self.tools.run(promote, "pg_ctl promote", &self.standby).await;
        wait_until_writable(&self.standby).await;
    }

    async fn init_primary(&self) {
        let mut initdb = self.tools.command("initdb");
        // trust: local and 127.0.0.1 connections, replication ones included, need no password.
        initdb.arg("-D").arg(&self.primary.data).args(["-U", "postgres", "-A", "trust", "-E", "UTF8"]);
        // Not the environment's locale, which may not exist on the machine.
        initdb.arg("--locale=C");
        self.tools.run(initdb, "initdb", &self.primary).await;
        let socket_dir = self.dir.path().display();
        append_settings(
            &self.primary,
            &format!(
                "listen_addresses = '127.0.0.1'\n\
                 port = {port}\n\
                 # Our own socket directory: the system server owns the default one.\n\
                 unix_socket_directories = '{socket_dir}'\n\
                 shared_buffers = 32MB\n\
                 max_connections = 100\n\
                 wal_level = replica\n\
                 max_wal_senders = 4\n\
                 hot_standby = on\n\
                 # RPO 0: a commit returns once the standby has flushed it, and both nodes fsync.\n\
                 synchronous_commit = on\n\
                 synchronous_standby_names = '{STANDBY_NAME}'\n\
                 fsync = on\n\
                 full_page_writes = on\n\
                 # In the data directory rather than /dev/shm, where a killed server would leak it.\n\
                 dynamic_shared_memory_type = mmap\n",
                port = self.primary.port
            ),
        );
    }

    /// Makes the standby a base backup of the primary that streams from it under [`STANDBY_NAME`].
    async fn clone_standby(&self) {
        let mut backup = self.tools.command("pg_basebackup");
        // -R writes primary_conninfo from this connection string, application_name included.
        let source = format!(
            "host=127.0.0.1 port={} user=postgres application_name={STANDBY_NAME}",
            self.primary.port
        );
        backup.arg("-D").arg(&self.standby.data).args(["-R", "-X", "stream", "-c", "fast", "-d", &source]);
        self.tools.run(backup, "pg_basebackup", &self.primary).await;
        // The backup copied the primary's settings; these later lines override them.
        append_settings(
            &self.standby,
            &format!(
                "port = {}\n\
                 # Once promoted it has no standby of its own: waiting for one would block every write.\n\
                 synchronous_standby_names = ''\n",
                self.standby.port
            ),
        );
    }

    async fn wait_for_sync_standby(&self) {
        let deadline = Instant::now() + WAIT;
        loop {
            let seen = replication_state(self.primary.port).await;
            if seen.as_ref().is_ok_and(|s| s.as_deref() == Some("streaming/sync")) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "the standby did not become a streaming synchronous standby within {WAIT:?} \
                     (last seen on the primary: {seen:?})\n{}\n{}",
                    self.primary.log_tail(),
                    self.standby.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        for node in [&self.standby, &self.primary] {
            if node.running {
                self.tools.stop_immediately(node);
            }
        }
    }
}

impl Tools {
    /// The server tool `program`, run as the `postgres` user when we are root.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        let mut command = if self.as_postgres {
            let mut runuser = Command::new("runuser");
            runuser.args(["-u", "postgres", "--"]).arg(path);
            runuser
        } else {
            Command::new(path)
        };
        command.current_dir(&self.cwd);
        command
    }

    /// Gives `dir` to the postgres user (when we are root), and checks it can write there: a
    /// temp dir under a path it cannot traverse would fail later with a less clear error.
    fn hand_over(&self, dir: &Path) {
        if !self.as_postgres {
            return;
        }
        assert!(succeeds(Command::new("chown").args(["-R", "postgres"]).arg(dir)), "chown postgres {dir:?}");
        let mut probe = Command::new("runuser");
        probe.args(["-u", "postgres", "--", "test", "-w"]).arg(dir);
        assert!(
            succeeds(&mut probe),
            "the postgres user cannot write to {dir:?}; set TMPDIR to a directory it can traverse"
        );
    }

    /// Runs `command` to completion (bounded), panicking with its output and `node`'s log on failure.
    async fn run(&self, command: Command, what: &str, node: &Node) {
        let mut command = tokio::process::Command::from(command);
        command.kill_on_drop(true);
        let output = tokio::time::timeout(COMMAND_TIMEOUT, command.output())
            .await
            .unwrap_or_else(|_| {
                panic!("{what} did not finish within {COMMAND_TIMEOUT:?}\n{}", node.log_tail())
            })
            .unwrap_or_else(|e| panic!("{what} could not run: {e}"));
        if !output.status.success() {
            panic!(
                "{what} failed ({}):\n{}{}\n{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr),
                node.log_tail()
            );
        }
    }

    /// Starts `node` and waits (bounded) until it accepts connections (read-only ones for a standby).
    async fn start(&self, node: &mut Node) {
        // Set first: should the start time out, the server may still come up and must be stopped.
        node.running = true;
        let mut start = self.command("pg_ctl");
        start.arg("-D").arg(&node.data).arg("-l").arg(&node.log);
        start.args(["-w", "-t", &WAIT.as_secs().to_string(), "start"]);
        self.run(start, &format!("pg_ctl start of the {}", node.role), node).await;
    }

    /// Stops `node` without a checkpoint, falling back to SIGKILL; never panics (it runs in `Drop`).
    fn stop_immediately(&self, node: &Node) {
        let mut stop = self.command("pg_ctl");
        stop.arg("-D").arg(&node.data).args(["-m", "immediate", "-w", "-t", "10", "stop"]);
        if succeeds(&mut stop) || node.postmaster_pid().is_none() {
            return;
        }
        if let Err(why) = kill(node) {
            eprintln!("could not stop the PostgreSQL {} on port {}: {why}", node.role, node.port);
        }
    }
}

impl Node {
    fn new(dir: &Path, role: &'static str) -> Node {
        Node {
            role,
            data: dir.join(role),
            log: dir.join(format!("{role}.log")),
            port: free_port(),
            running: false,
        }
    }

    /// The postmaster's pid: the first line of `postmaster.pid`.
    fn postmaster_pid(&self) -> Option<u32> {
        self.pid_file_line(0)?.trim().parse().ok()
    }

    /// The id of the postmaster's System V shared memory segment: the second number on line 7.
    fn shmem_id(&self) -> Option<String> {
        Some(self.pid_file_line(6)?.split_whitespace().nth(1)?.to_string())
    }

    fn pid_file_line(&self, index: usize) -> Option<String> {
        let contents = fs::read_to_string(self.data.join("postmaster.pid")).ok()?;
        contents.lines().nth(index).map(str::to_string)
    }

    fn log_tail(&self) -> String {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
        format!("--- last lines of the {} log ({}):\n{tail}", self.role, self.log.display())
    }
}

/// Appends `settings` to the node's postgresql.conf (later lines win). Appending keeps the file's
/// owner, which matters when we are root and the server runs as postgres.
fn append_settings(node: &Node, settings: &str) {
    let path = node.data.join("postgresql.conf");
    let mut conf = fs::OpenOptions::new().append(true).open(&path).expect("open postgresql.conf");
    writeln!(conf, "\n# Coffer test harness (crates/cli/tests/pg_cluster)\n{settings}")
        .expect("write postgresql.conf");
}

/// SIGKILLs the node's postmaster and its children, then waits until its port is closed and the
/// processes are gone.
fn kill(node: &Node) -> Result<(), String> {
    let pid = node.postmaster_pid().ok_or_else(|| format!("no postmaster.pid in {:?}", node.data))?;
    // Freeze the postmaster first: it would otherwise notice its children dying and fork new ones
    // for crash recovery. Its children are found while they are still its children (once it dies
    // they are reparented), and are separate process groups (each backend calls setsid), so
    // signalling the postmaster's group would miss them.
    signal("STOP", &[pid])?;
    let mut victims = children_of(pid);
    victims.push(pid);
    signal("KILL", &victims)?;
    wait_port_closed(node)?;
    wait_dead(&victims)?;
    // The postmaster removes its small System V segment on exit, which SIGKILL skips: remove it
    // here, or every test run would leak one. Best effort: a leak is no reason to fail the test.
    if let Some(id) = node.shmem_id() {
        let _ = Command::new("ipcrm").args(["-m", &id]).output();
    }
    Ok(())
}

fn signal(name: &str, pids: &[u32]) -> Result<(), String> {
    let mut kill = Command::new("kill");
    kill.arg(format!("-{name}")).args(pids.iter().map(u32::to_string));
    if succeeds(&mut kill) { Ok(()) } else { Err(format!("kill -{name} {pids:?} failed")) }
}

/// The pids whose parent is `parent`, from /proc.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| proc_stat(pid).is_some_and(|(_, ppid)| ppid == parent))
        .collect()
}

/// A process's state letter and parent pid, from `/proc/<pid>/stat`; `None` once it is gone.
fn proc_stat(pid: u32) -> Option<(char, u32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, in parentheses, may contain spaces: the fields we want follow its `)`.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

fn wait_port_closed(node: &Node) -> Result<(), String> {
    let address = SocketAddr::from(([127, 0, 0, 1], node.port));
    let deadline = Instant::now() + WAIT;
    loop {
        match TcpStream::connect_timeout(&address, Duration::from_millis(500)) {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => return Ok(()),
            _ if Instant::now() > deadline => {
                return Err(format!("port {} still accepts connections after {WAIT:?}", node.port));
            }
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Waits until every pid is gone or a zombie: a zombie holds no files, sockets or memory, and in a
/// container nobody may ever reap it.
fn wait_dead(pids: &[u32]) -> Result<(), String> {
    let deadline = Instant::now() + WAIT;
    let alive = |pid: &&u32| proc_stat(**pid).is_some_and(|(state, _)| state != 'Z');
    loop {
        let survivors: Vec<&u32> = pids.iter().filter(alive).collect();
        if survivors.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("processes {survivors:?} survived SIGKILL for {WAIT:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls the promoted node (bounded) until it commits a transaction.
async fn wait_until_writable(node: &Node) {
    let deadline = Instant::now() + WAIT;
    loop {
        let attempt = try_write(node.port).await;
        if attempt.is_ok() {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "the promoted {} did not accept a write within {WAIT:?}: {attempt:?}\n{}",
                node.role,
                node.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn try_write(port: u16) -> Result<(), String> {
    let client = connect(&node_config(port)).await?;
    let in_recovery: bool = bounded(client.query_one("SELECT pg_is_in_recovery()", &[])).await?.get(0);
    if in_recovery {
        return Err("still in recovery".into());
    }
    // txid_current() assigns a transaction id, so the statement commits a real transaction: it
    // would hang (hence `bounded`) if the node still waited for a synchronous standby.
    bounded(client.query_one("SELECT txid_current()", &[])).await.map(drop)
}

/// The standby's `state/sync_state` as the primary's pg_stat_replication shows it, if listed.
async fn replication_state(primary_port: u16) -> Result<Option<String>, String> {
    let client = connect(&node_config(primary_port)).await?;
    let query = "SELECT state || '/' || sync_state FROM pg_stat_replication WHERE application_name = $1";
    let row = bounded(client.query_opt(query, &[&STANDBY_NAME])).await?;
    Ok(row.map(|row| row.get(0)))
}

/// One node, by port, to its `postgres` database.
fn node_config(port: u16) -> tokio_postgres::Config {
    format!("host=127.0.0.1 port={port} user=postgres dbname=postgres connect_timeout=2")
        .parse()
        .expect("a valid connection string")
}

/// Connects and drives the connection in the background until the client is dropped.
async fn connect(config: &tokio_postgres::Config) -> Result<Client, String> {
    let (client, connection) = bounded(config.connect(NoTls)).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// Awaits a database call for at most a few seconds, so that no wait can hang a test.
async fn bounded<T>(call: impl Future<Output = Result<T, tokio_postgres::Error>>) -> Result<T, String> {
    match tokio::time::timeout(Duration::from_secs(5), call).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err("no answer within 5 s".into()),
    }
}

/// The bin directory of the newest PostgreSQL under /usr/lib/postgresql with all the server tools.
fn server_bin_dir() -> Result<PathBuf, String> {
    let not_found = || {
        format!(
            "PostgreSQL server binaries ({}) not found in {PG_ROOT}/<version>/bin",
            SERVER_BINARIES.join(", ")
        )
    };
    let entries = fs::read_dir(PG_ROOT).map_err(|_| not_found())?;
    entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version: Vec<u32> = entry
                .file_name()
                .to_str()?
                .split('.')
                .map(|part| part.parse().ok())
                .collect::<Option<_>>()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, bin)| SERVER_BINARIES.iter().all(|tool| bin.join(tool).is_file()))
        .max_by(|(a, _), (b, _)| a.cmp(b))
        .map(|(_, bin)| bin)
        .ok_or_else(not_found)
}

/// Whether the effective uid is 0: the second number on /proc/self/status's `Uid:` line (no libc).
fn running_as_root() -> bool {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status.lines().find_map(|line| line.strip_prefix("Uid:")).and_then(|ids| ids.split_whitespace().nth(1))
        == Some("0")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Runs `command` with its output discarded; whether it exited with success.
fn succeeds(command: &mut Command) -> bool {
    command.output().is_ok_and(|output| output.status.success())
}
