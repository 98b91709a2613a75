//! One PostgreSQL server alone, on a free port in a temporary directory of its own, with
//! settings and files the test gives it (TLS, say). The tools and the clean-up are the
//! cluster's (`super`).

use std::fs;
use std::path::Path;

use tempfile::TempDir;

use super::{Node, Tools, append_settings, running_as_root, server_bin_dir, succeeds};

pub struct PgServer {
    tools: Tools,
    node: Node,
    /// Declared last: removed only after `Drop` has stopped the server that uses it.
    dir: TempDir,
}

impl PgServer {
    /// Initializes a server, writes `files` (name, contents) into its data directory, readable
    /// by the server's user alone (as PostgreSQL wants a key file), appends `settings` to its
    /// postgresql.conf, and starts it.
    pub async fn start(settings: &str, files: &[(&str, &str)]) -> PgServer {
        let bin = server_bin_dir().unwrap_or_else(|why| panic!("{why}"));
        let dir = tempfile::Builder::new().prefix("coffer-pg-").tempdir().expect("create a temp dir");
        let tools = Tools { bin, as_postgres: running_as_root(), cwd: dir.path().to_path_buf() };
        let mut server = PgServer { tools, node: Node::new(dir.path(), "server"), dir };
        server.tools.hand_over(server.dir.path());
        let mut initdb = server.tools.command("initdb");
        // trust: connections from 127.0.0.1, over TLS or not, need no password.
        initdb.arg("-D").arg(&server.node.data).args(["-U", "postgres", "-A", "trust", "-E", "UTF8"]);
        initdb.arg("--locale=C");
        server.tools.run(initdb, "initdb", &server.node).await;
        for (name, contents) in files {
            write_private(&server.tools, &server.node.data.join(name), contents);
        }
        let socket_dir = server.dir.path().display();
        append_settings(
            &server.node,
            &format!(
                "listen_addresses = '127.0.0.1'\n\
                 port = {port}\n\
                 unix_socket_directories = '{socket_dir}'\n\
                 shared_buffers = 32MB\n\
                 dynamic_shared_memory_type = mmap\n\
                 {settings}\n",
                port = server.node.port
            ),
        );
        server.tools.start(&mut server.node).await;
        server
    }

    pub fn port(&self) -> u16 {
        self.node.port
    }

    /// The last lines of the server's log, for an assertion's message.
    pub fn log_tail(&self) -> String {
        self.node.log_tail()
    }
}

/// Writes `contents` to `path`, mode 0600, owned by the server's user.
fn write_private(tools: &Tools, path: &Path, contents: &str) {
    use std::os::unix::fs::PermissionsExt;
    fs::write(path, contents).expect("write a file into the data directory");
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).expect("chmod 600");
    if tools.as_postgres {
        assert!(succeeds(std::process::Command::new("chown").arg("postgres").arg(path)), "chown postgres");
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if self.node.running {
            self.tools.stop_immediately(&self.node);
        }
    }
}
