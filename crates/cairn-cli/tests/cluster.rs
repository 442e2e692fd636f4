//! `cairn serve --cluster`: the task hub lives in NATS JetStream (a real `nats-server` started
//! here) and its nodes share its partitions. A node killed with SIGKILL is replaced by one on
//! another, empty data directory that serves every instance; every node answers for every
//! instance; the others take a dead node's partitions over by themselves, and a stopping
//! node's at once; and a frozen node whose partitions moved on steps down without committing
//! anything. Requests go over real sockets (curl against the HTTP API). At the end of each
//! test, every partition's log is read back to check that no two owners' writes ever
//! interleaved.

mod common;

use cairn_cluster::nats_server::{free_port, NatsCluster};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const API: &str = "runtime/webhooks/durabletask";

struct Node {
    child: Child,
    http: String,
    log: std::sync::mpsc::Receiver<String>,
    /// Every line [`Node::wait_for`] has read so far.
    seen: String,
}

impl Node {
    /// Starts a node and waits until it serves the hub.
    fn start(nats: &str, hub: &str, data: &Path, name: &str) -> Node {
        let mut node = Node::spawn(nats, hub, data, name);
        node.wait_for("Cairn is running", Duration::from_secs(60));
        node
    }

    /// Waits for a log line containing `text`; returns how long it took.
    fn wait_for(&mut self, text: &str, within: Duration) -> Duration {
        let started = std::time::Instant::now();
        let mut seen = String::new();
        loop {
            let left = within.saturating_sub(started.elapsed());
            let line = self.log.recv_timeout(left).unwrap_or_else(|_| {
                panic!("no {text:?} within {within:?}; the node logged:\n{seen}")
            });
            seen.push_str(&line);
            seen.push('\n');
            self.seen.push_str(&line);
            self.seen.push('\n');
            assert!(!line.contains("Error:"), "the node failed:\n{seen}");
            if line.contains(text) {
                return started.elapsed();
            }
        }
    }

    fn spawn(nats: &str, hub: &str, data: &Path, name: &str) -> Node {
        Node::spawn_with(nats, hub, data, name, &[])
    }

    fn spawn_with(nats: &str, hub: &str, data: &Path, name: &str, extra: &[&str]) -> Node {
        let port = free_port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
            .env("RUST_LOG", "info")
            .args(["serve", "--cluster", nats, "--hub", hub, "--node-id", name])
            .arg("--data")
            .arg(data)
            .args(["--grpc", "127.0.0.1:0", "--http"])
            .arg(format!("127.0.0.1:{port}"))
            .args(extra)
            .stderr(Stdio::piped())
            .spawn()
            .expect("cairn serve starts");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, log) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Node {
            child,
            http: format!("http://127.0.0.1:{port}"),
            log,
            seen: String::new(),
        }
    }

    /// (HTTP status, body) of a request to the management API.
    fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        self.request(method, &format!("{API}/{path}"), body)
    }

    /// (HTTP status, body) of a request to `path` (from the server's root, no leading slash).
    fn request(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let mut args = vec!["-X", method];
        if let Some(body) = body {
            args.extend(["-H", "content-type: application/json", "-d", body]);
        }
        common::curl(&format!("{}/{path}", self.http), 30, &args)
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Everything the node has logged so far (what [`Node::wait_for`] read, and the rest).
    fn logged(&mut self) -> String {
        for line in self.log.try_iter() {
            self.seen.push_str(&line);
            self.seen.push('\n');
        }
        self.seen.clone()
    }

    fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs")
            .success();
        assert!(ok, "kill -{signal}");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A NATS server, its URL, and a directory for the nodes' data.
fn setup() -> (NatsCluster, String, tempfile::TempDir) {
    let nats = NatsCluster::single().unwrap_or_else(|e| panic!("starting nats-server: {e}"));
    let url = nats.urls().join(",");
    (nats, url, tempfile::tempdir().unwrap())
}

#[test]
fn a_killed_node_is_replaced_by_one_with_an_empty_data_directory_and_nothing_is_lost() {
    let (_nats, url, dir) = setup();

    let first = Node::start(&url, "web", &dir.path().join("first"), "first");
    for i in 0..20 {
        // No worker runs this orchestration: the instances wait, pending, in the hub.
        let (code, body) = first.call(
            "POST",
            &format!("orchestrators/nightly-report/order-{i}"),
            Some(&format!("{{\"order\":{i}}}")),
        );
        assert_eq!(code, 202, "start order-{i}: {body}");
    }
    let (code, body) = first.call(
        "POST",
        "instances/order-3/raiseEvent/approved",
        Some("true"),
    );
    assert_eq!(code, 202, "raise an event: {body}");
    first.kill();

    let second = Node::start(&url, "web", &dir.path().join("second"), "second");
    for i in 0..20 {
        let (code, body) = second.call("GET", &format!("instances/order-{i}?showInput=true"), None);
        // 202: the instance has not ended (the status codes of Durable Functions' HTTP API).
        assert_eq!(code, 202, "order-{i} after the kill: {body}");
        assert!(body.contains("\"Pending\""), "order-{i}: {body}");
        assert!(
            body.contains(&format!("\"order\":{i}")),
            "order-{i}'s input: {body}"
        );
    }
    let (code, body) = second.call("GET", "instances?top=100", None);
    assert_eq!(code, 200, "{body}");
    assert_eq!(body.matches("\"instanceId\"").count(), 20, "{body}");

    // `cairn cluster status` shows the hub as JetStream holds it: every partition run by the
    // new node, taken over twice (epoch 2), with the records the starts wrote.
    let status = status_json(&url, "web");
    assert_eq!(status["partitions"], 12, "{status}");
    let parts = status["partitionStatus"].as_array().expect("partitions");
    assert_eq!(parts.len(), 12);
    assert!(parts.iter().all(|p| p["owner"] == "second"), "{status}");
    assert!(parts.iter().all(|p| p["ownerEpoch"] == 2), "{status}");
    let records: u64 = parts
        .iter()
        .map(|p| p["nextPosition"].as_u64().unwrap_or(1) - 1)
        .sum();
    assert!(
        records >= 21,
        "20 starts and an event wrote at least 21 records: {status}"
    );
    let table = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["cluster", "status", "--cluster", &url, "--hub", "web"])
        .output()
        .expect("cairn cluster status runs");
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("node second (serving") && table.contains("runs 12 partitions"),
        "{table}"
    );
    eprintln!("{table}");
    audit(&url, "web", 12);
}

/// `cairn cluster status --json` of `hub`.
fn status_json(url: &str, hub: &str) -> serde_json::Value {
    status_json_with(url, hub, &[])
}

/// [`status_json`] with more flags (how to reach NATS).
fn status_json_with(url: &str, hub: &str, extra: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args([
            "cluster",
            "status",
            "--cluster",
            url,
            "--hub",
            hub,
            "--json",
        ])
        .args(extra)
        .output()
        .expect("cairn cluster status runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

/// The live nodes `cairn cluster status` lists for `hub`: (name, role).
fn live_nodes(url: &str, hub: &str) -> Vec<(String, String)> {
    status_json(url, hub)["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| {
            (
                n["node"].as_str().unwrap_or_default().to_string(),
                n["role"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Polls [`live_nodes`] until it equals `expected` (a killed node's record expires on its own).
fn wait_for_nodes(url: &str, hub: &str, expected: &[(&str, &str)], within: Duration) {
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(n, r)| (n.to_string(), r.to_string()))
        .collect();
    let started = std::time::Instant::now();
    loop {
        let seen = live_nodes(url, hub);
        if seen == expected {
            return;
        }
        assert!(
            started.elapsed() < within,
            "live nodes {seen:?}, expected {expected:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Reads every partition's log of `hub` back (without taking it over): fails if the epochs of
/// its writers ever go back, that is if two owners' writes interleaved.
fn audit(url: &str, hub: &str, partitions: u32) {
    let nats = cairn_cluster::Nats::connect(cairn_cluster::ClusterConfig::new(
        url.split(',').map(String::from).collect(),
        hub,
        "auditor",
    ))
    .expect("connect");
    for p in 0..partitions {
        cairn_cluster::log::read_without_owning(&nats, p)
            .unwrap_or_else(|e| panic!("partition {p} of {hub}: {e}"));
    }
}

fn start_orders(node: &Node, from: usize, to: usize) {
    for i in from..to {
        let (code, body) = node.call(
            "POST",
            &format!("orchestrators/nightly-report/order-{i}"),
            Some(&format!("{{\"order\":{i}}}")),
        );
        assert_eq!(code, 202, "start order-{i}: {body}");
    }
}

fn check_orders(node: &Node, to: usize) {
    for i in 0..to {
        let (code, body) = node.call("GET", &format!("instances/order-{i}?showInput=true"), None);
        assert_eq!(code, 202, "order-{i}: {body}");
        assert!(
            body.contains(&format!("\"order\":{i}")),
            "order-{i}'s input: {body}"
        );
    }
}

/// The owner of every partition of `hub`, by `cairn cluster status` ("" for none).
fn owners(url: &str, hub: &str) -> Vec<String> {
    status_json(url, hub)["partitionStatus"]
        .as_array()
        .expect("partitions")
        .iter()
        .map(|p| p["owner"].as_str().unwrap_or("").to_string())
        .collect()
}

/// Waits until `hub`'s partitions are run by the nodes `expected` names, `n` each; returns
/// how long it took.
fn wait_for_owners(url: &str, hub: &str, expected: &[(&str, usize)], within: Duration) -> Duration {
    let started = std::time::Instant::now();
    loop {
        let now = owners(url, hub);
        let matches = expected
            .iter()
            .all(|(node, n)| now.iter().filter(|o| o == node).count() == *n)
            && now.len() == expected.iter().map(|(_, n)| n).sum::<usize>();
        if matches {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "the partitions are run by {now:?}, not {expected:?}, after {within:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn nodes_share_the_hub_and_take_over_a_dead_or_stopping_nodes_partitions() {
    let (_nats, url, dir) = setup();
    let a = Node::start(&url, "ha", &dir.path().join("a"), "a");
    let b = Node::start(&url, "ha", &dir.path().join("b"), "b");
    // The second node takes half the partitions: the first hands them over.
    wait_for_owners(&url, "ha", &[("a", 6), ("b", 6)], Duration::from_secs(20));
    // Every node is a front door: starts through a reach the partitions b runs, and b
    // answers for every instance, wherever it lives.
    start_orders(&a, 0, 10);
    check_orders(&b, 10);
    check_orders(&a, 10);
    let (code, body) = b.call("GET", "instances?top=100", None);
    assert_eq!(code, 200, "{body}");
    assert_eq!(body.matches("\"instanceId\"").count(), 10, "{body}");
    // A retention policy set while running is the hub's, not the node's: it lives in the hub's
    // KV bucket and the node that takes over enforces it.
    let policy = r#"{"hub":{"completed":"7d"},"byName":{"nightly":{"failed":"30d"}}}"#;
    let (code, body) = a.request("PUT", "api/retention", Some(policy));
    assert_eq!(code, 200, "{body}");
    // Both nodes are listed, with their fronts.
    wait_for_nodes(
        &url,
        "ha",
        &[("a", "serving"), ("b", "serving")],
        Duration::from_secs(5),
    );
    let listed = status_json(&url, "ha")["nodes"][0].clone();
    assert_eq!(
        listed["http"].as_str().map(|h| format!("http://{h}")),
        Some(a.http.clone()),
        "{listed}"
    );

    // kill -9: b notices a's record no longer changes, takes a's partitions over and answers
    // for everything a acknowledged.
    a.kill();
    let failover = wait_for_owners(&url, "ha", &[("b", 12)], Duration::from_secs(30));
    eprintln!("a's partitions moved to b {failover:?} after kill -9 (lease 2 s)");
    check_orders(&b, 10);
    let (code, body) = b.request("GET", "api/retention", None);
    assert_eq!(code, 200, "{body}");
    let shown: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        shown["hub"],
        serde_json::json!({"completed": "7d", "failed": null, "terminated": null}),
        "{body}"
    );
    assert_eq!(
        shown["byName"],
        serde_json::json!({"nightly": {"completed": null, "failed": "30d", "terminated": null}}),
        "{body}"
    );
    assert!(!dir.path().join("b/retention.json").exists());
    start_orders(&b, 10, 20);
    // The killed node's record expires by itself.
    wait_for_nodes(
        &url,
        "ha",
        &[("b", "serving")],
        cairn_cluster::nodes::NODE_TTL + Duration::from_secs(5),
    );

    // A node that joins takes its share; a clean stop (SIGTERM) hands the stopping node's
    // partitions over at once: c waits 10 s before it counts a silent node as dead, so only
    // the handover can give it b's partitions quickly.
    let mut c = Node::spawn_with(&url, "ha", &dir.path().join("c"), "c", &["--lease", "10s"]);
    c.wait_for("Cairn is running", Duration::from_secs(60));
    wait_for_owners(&url, "ha", &[("b", 6), ("c", 6)], Duration::from_secs(30));
    b.signal("TERM");
    let handover = wait_for_owners(&url, "ha", &[("c", 12)], Duration::from_secs(30));
    eprintln!("b's partitions moved to c {handover:?} after SIGTERM");
    assert!(
        handover < Duration::from_secs(8),
        "a stopping node's partitions waited for its lease to run out: {handover:?}"
    );
    check_orders(&c, 20);
    // A clean stop deletes the node's record at once.
    wait_for_nodes(&url, "ha", &[("c", "serving")], Duration::from_secs(5));
    // The last node's clean stop checkpoints every partition: nothing is left to replay
    // after the checkpoints, and no partition has an owner.
    c.signal("TERM");
    c.wait_for("stopped cleanly", Duration::from_secs(30));
    let status = status_json(&url, "ha");
    for p in status["partitionStatus"].as_array().expect("partitions") {
        assert_eq!(p["recordsAfterCheckpoint"], 0, "{p}");
        assert_eq!(p["owner"], serde_json::Value::Null, "{p}");
        assert_eq!(
            p["checkpointPosition"].as_u64(),
            p["nextPosition"].as_u64().map(|n| n - 1),
            "{p}"
        );
    }
    audit(&url, "ha", 12);
}

#[test]
fn a_frozen_owner_whose_partitions_moved_steps_down_without_committing() {
    let (_nats, url, dir) = setup();
    let mut frozen = Node::start(&url, "fence", &dir.path().join("a"), "a");
    wait_for_owners(&url, "fence", &[("a", 12)], Duration::from_secs(20));
    let b = Node::start(&url, "fence", &dir.path().join("b"), "b");
    wait_for_owners(
        &url,
        "fence",
        &[("a", 6), ("b", 6)],
        Duration::from_secs(20),
    );
    start_orders(&frozen, 0, 5);

    // Freeze a until its partitions move: b takes them all.
    frozen.signal("STOP");
    wait_for_owners(&url, "fence", &[("b", 12)], Duration::from_secs(30));
    // A request reaches the frozen node (it waits in the socket's queue), then the node wakes.
    let late_node = frozen.http.clone();
    let late = std::thread::spawn(move || {
        common::curl(
            &format!("{late_node}/{API}/orchestrators/nightly-report/late"),
            20,
            &["-X", "POST", "-d", "1"],
        )
    });
    std::thread::sleep(Duration::from_millis(300));
    frozen.signal("CONT");
    let answer = late.join().unwrap();
    // It steps down from the partitions it ran, writing nothing: its log appends are refused
    // (b's epoch marker) or it finds b's keys first.
    frozen.wait_for("without writing", Duration::from_secs(30));
    eprintln!("the frozen owner answered {answer:?} and stepped down");
    // The late start either failed, or went through a to the partition's owner now, b: then
    // b has it. Nothing a acknowledged is lost.
    let (code, body) = b.call("GET", "instances/late", None);
    if answer.0 == 202 {
        assert_eq!(code, 202, "an acknowledged start is missing: {body}");
    } else {
        assert_eq!(code, 404, "a refused start landed: {body}");
    }
    check_orders(&b, 5);
    // a is alive and a member again: it takes its share back, and answers for everything.
    wait_for_owners(
        &url,
        "fence",
        &[("a", 6), ("b", 6)],
        Duration::from_secs(30),
    );
    check_orders(&frozen, 5);
    audit(&url, "fence", 12);
}

/// A node reaches NATS the way a deployment on a network does: TLS with a private CA, a client
/// certificate the server verifies, and a user and password. Without the CA, the client
/// certificate or the right password, `serve` stops with a message that says which; with all
/// of them it serves, and `cairn cluster status` reads the hub the same way.
#[test]
fn a_node_reaches_nats_over_tls_with_a_user_and_password() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = common::certificates(dir.path());
    let port = free_port();
    let binary = cairn_cluster::nats_server::binary().expect("nats-server");
    /// Kills the server when the test ends, passed or failed.
    struct Server(Child);
    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _server = Server(
        Command::new(binary)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir.path().join("jetstream"))
            .args([
                "--tlsverify",
                "--tlscert",
                &cert,
                "--tlskey",
                &key,
                "--tlscacert",
                &ca,
            ])
            .args(["--user", "cairn", "--pass", "s3cret-nats"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts"),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "nats-server did not listen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let url = format!("tls://cairn:s3cret-nats@localhost:{port}");
    let refused = |url: &str, extra: &[&str]| -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args(["serve", "--cluster", url, "--hub", "secure"])
            .arg("--data")
            .arg(dir.path().join("refused"))
            .args(["--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0"])
            .args(extra)
            .output()
            .expect("cairn serve runs");
        assert!(!out.status.success(), "served without a usable connection");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let err = refused(&url, &[]);
    assert!(
        err.contains("cannot use the task hub in JetStream") && err.contains("certificate"),
        "{err}"
    );
    // The server verifies clients: the CA alone is not enough. (The server's own certificate
    // serves as this client's: the CA signed it.)
    let err = refused(&url, &["--nats-tls-ca", &ca]);
    assert!(err.contains("CertificateRequired"), "{err}");
    let tls = [
        "--nats-tls-ca",
        &ca,
        "--nats-tls-cert",
        &cert,
        "--nats-tls-key",
        &key,
    ];
    let wrong = format!("tls://cairn:wrong-pass@localhost:{port}");
    let err = refused(&wrong, &tls);
    assert!(err.to_lowercase().contains("authorization"), "{err}");
    // Passwords never reach the logs or messages.
    assert!(
        !err.contains("wrong-pass") && err.contains("tls://cairn:***@localhost"),
        "{err}"
    );

    let mut node = Node::spawn_with(&url, "secure", &dir.path().join("a"), "a", &tls);
    node.wait_for("Cairn is running", Duration::from_secs(60));
    start_orders(&node, 0, 3);
    check_orders(&node, 3);
    let status = status_json_with(&url, "secure", &tls);
    let parts = status["partitionStatus"].as_array().expect("partitions");
    assert!(parts.iter().all(|p| p["owner"] == "a"), "{status}");
    node.signal("TERM");
    node.wait_for("stopped cleanly", Duration::from_secs(30));
    let logged = node.logged();
    assert!(
        logged.contains("cairn:***@localhost") && !logged.contains("s3cret-nats"),
        "{logged}"
    );
}

/// `cairn bench failover` kills a node of a real two-node cluster and reports how long until
/// the other answers for every acknowledged instance (it fails if one is lost).
#[test]
fn bench_failover_reports_the_time_to_answer_again() {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["bench", "failover", "--start-nats", "1", "--kills", "2"])
        .args(["--partitions", "2", "--lease", "1s", "--json"])
        .output()
        .expect("cairn bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row: serde_json::Value = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["scenario"] == "failover")
        .unwrap_or_else(|| panic!("no failover row in {stdout}"));
    assert_eq!(row["ops"], 2, "{row}");
    let p99 = row["p99_ms"].as_f64().expect("p99");
    // A 1 s lease: the survivor takes the dead node's partitions once its record has gone
    // unrenewed for a second on the survivor's own clock, counted from the last renewal it saw
    // (up to a quarter lease before the kill), so never within half a second.
    assert!((500.0..30_000.0).contains(&p99), "{row}");
}
