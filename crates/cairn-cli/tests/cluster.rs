//! `cairn serve --cluster`: the task hub lives in NATS JetStream (a real `nats-server` started
//! here), so a node killed with SIGKILL is replaced by one on another, empty data directory
//! that serves every instance; and a node that another one took the hub from stops committing
//! instead of writing beside it. Requests go over real sockets (curl against the HTTP API).

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
}

impl Node {
    fn start(nats: &str, hub: &str, data: &Path, name: &str) -> Node {
        let port = free_port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
            .env("RUST_LOG", "info")
            .args(["serve", "--cluster", nats, "--hub", hub, "--node-id", name])
            .arg("--data")
            .arg(data)
            .args(["--grpc", "127.0.0.1:0", "--http"])
            .arg(format!("127.0.0.1:{port}"))
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
        let mut seen = String::new();
        loop {
            let line = log
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("node {name} did not become ready:\n{seen}"));
            seen.push_str(&line);
            seen.push('\n');
            assert!(!line.contains("Error:"), "node {name} failed:\n{seen}");
            if line.contains("Cairn is running") {
                break;
            }
        }
        Node {
            child,
            http: format!("http://127.0.0.1:{port}"),
            log,
        }
    }

    /// (HTTP status, body) of a request.
    fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let mut curl = Command::new("curl");
        curl.args(["-s", "-m", "30", "-w", "\n%{http_code}", "-X", method]);
        if let Some(body) = body {
            curl.args(["-H", "content-type: application/json", "-d", body]);
        }
        let out = curl
            .arg(format!("{}/{API}/{path}", self.http))
            .output()
            .expect("curl runs");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn logged(&self) -> String {
        self.log.try_iter().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_killed_node_is_replaced_by_one_with_an_empty_data_directory_and_nothing_is_lost() {
    let nats = NatsCluster::single().unwrap_or_else(|e| panic!("starting nats-server: {e}"));
    let url = nats.urls().join(",");
    let dir = tempfile::tempdir().unwrap();

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

    // A third node takes the hub over while the second still runs: from then on the second
    // cannot commit anything, and what it was asked to do never appears in the hub.
    let third = Node::start(&url, "web", &dir.path().join("third"), "third");
    let (code, body) = second.call("POST", "orchestrators/nightly-report/late", Some("1"));
    assert_ne!(
        code, 202,
        "the superseded node acknowledged a start: {body}"
    );
    eprintln!("the superseded node answered a start with {code}: {body}");
    let (code, body) = third.call("GET", "instances/late", None);
    assert_eq!(code, 404, "the superseded node's start landed: {body}");
    let (code, body) = third.call("GET", "instances/order-7", None);
    assert_eq!(code, 202, "{body}");
    let logged = second.logged();
    assert!(
        logged.contains("another owner"),
        "the second node says why it stopped:\n{logged}"
    );
}
