//! `cairn serve` on the embedded default: starts, creates its data directory, reports recovery,
//! and stops cleanly on Ctrl-C (SIGINT); bad arguments get clear errors.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

fn cairn() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cairn"));
    // No NO_COLOR: logs into a pipe must come without colour codes by themselves.
    c.env("RUST_LOG", "info").env_remove("NO_COLOR");
    c
}

fn run_until_ready_then_interrupt(data: &std::path::Path, extra: &[&str]) -> String {
    Running::start(data, extra).interrupt()
}

/// A `cairn serve` that has said it is running, with its log so far.
struct Running {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    log: String,
}

impl Running {
    fn start(data: &std::path::Path, extra: &[&str]) -> Running {
        let mut child = cairn()
            .arg("serve")
            .arg("--data")
            .arg(data)
            .args(if extra.contains(&"--grpc") {
                &[][..]
            } else {
                &["--grpc", "127.0.0.1:0"][..]
            })
            .args(if extra.contains(&"--http") {
                &[][..]
            } else {
                &["--http", "127.0.0.1:0"][..]
            })
            .args(extra)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut log = String::new();
        loop {
            let line = lines
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("cairn serve became ready:\n{log}"));
            log.push_str(&line);
            log.push('\n');
            if line.contains("Cairn is running") {
                break;
            }
        }
        Running { child, lines, log }
    }

    /// The address logged after `field=` on the ready line.
    fn address(&self, field: &str) -> String {
        let ready = self
            .log
            .lines()
            .find(|l| l.contains("Cairn is running"))
            .unwrap();
        let at = ready.find(&format!("{field}=")).unwrap() + field.len() + 1;
        ready[at..].split_whitespace().next().unwrap().to_string()
    }

    /// SIGINT, then the whole log once it exited cleanly.
    fn interrupt(mut self) -> String {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success());
        let status = self.child.wait().unwrap();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.log.push_str(&line);
            self.log.push('\n');
        }
        let log = std::mem::take(&mut self.log);
        assert!(status.success(), "serve did not exit cleanly:\n{log}");
        assert!(log.contains("stopped cleanly"), "{log}");
        log
    }
}

#[test]
fn serve_starts_recovers_and_stops_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cairn-data");
    let log = run_until_ready_then_interrupt(&data, &["--partitions", "3"]);
    assert!(log.contains("created a new task hub"), "{log}");
    assert!(
        !log.contains("recovered"),
        "a new hub is created, not recovered:\n{log}"
    );
    assert!(
        !log.contains('\u{1b}'),
        "logs written to a pipe must carry no colour codes:\n{log}"
    );
    assert!(data.join("hub.json").exists());
    assert_eq!(
        std::fs::read_dir(data.join("partitions")).unwrap().count(),
        3
    );
    // A second start recovers the same hub.
    let log = run_until_ready_then_interrupt(&data, &[]);
    assert!(log.contains("partitions=3"), "{log}");
    assert!(log.contains("recovered"), "{log}");
}

#[test]
fn serve_accepts_host_names() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let log =
        run_until_ready_then_interrupt(&data, &["--grpc", "localhost:0", "--http", "localhost:0"]);
    assert!(log.contains("Cairn is running"), "{log}");
    let out = cairn()
        .arg("serve")
        .arg("--data")
        .arg(&data)
        .args(["--grpc", "localhost"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("give HOST:PORT"), "{err}");
}

#[test]
fn serve_explains_an_unusable_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    // A plain file where the directory should be.
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"not a hub").unwrap();
    let out = cairn()
        .arg("serve")
        .arg("--data")
        .arg(&file)
        .args(["--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is a file, not a directory"), "{err}");
    assert!(!err.contains("File exists"), "{err}");

    // A directory another `cairn serve` holds.
    let data = dir.path().join("held");
    let mut first = cairn()
        .arg("serve")
        .arg("--data")
        .arg(&data)
        .args(["--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = first.stderr.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    loop {
        let line = lines.next().expect("first serve runs").unwrap();
        if line.contains("Cairn is running") {
            break;
        }
    }
    let out = cairn()
        .arg("serve")
        .arg("--data")
        .arg(&data)
        .args(["--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .output()
        .unwrap();
    let _ = first.kill();
    let _ = first.wait();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("another process (pid {})", first.id())),
        "{err}"
    );
    assert!(err.contains("another `cairn serve`"), "{err}");
    // The lock dies with its process, even a killed one: the hub opens again.
    let log = run_until_ready_then_interrupt(&data, &[]);
    assert!(log.contains("recovered"), "{log}");
}

#[test]
fn serve_explains_a_bad_retention_rule() {
    for (rule, says) in [
        ("nightly", "NAME:STATUS=AGE"),
        ("nightly:running=1d", "completed, failed or terminated"),
        ("nightly:completed=soon", "'soon'"),
    ] {
        let out = cairn().args(["serve", "--retain", rule]).output().unwrap();
        assert!(!out.status.success(), "--retain {rule} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "--retain {rule}: {err}");
    }
}

#[test]
fn bench_refuses_a_scale_that_runs_nothing() {
    for scale in ["0", "-1", "nan"] {
        let out = cairn()
            .args(["bench", "sequence", &format!("--scale={scale}")])
            .output()
            .unwrap();
        assert!(!out.status.success(), "--scale {scale} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("positive number"), "{err}");
    }
}

#[test]
fn serve_refuses_a_public_address_without_a_token_unless_told() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    for (grpc, http) in [("127.0.0.1:0", "0.0.0.0:0"), ("0.0.0.0:0", "127.0.0.1:0")] {
        let out = cairn()
            .arg("serve")
            .arg("--data")
            .arg(&data)
            .args(["--grpc", grpc, "--http", http])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "--grpc {grpc} --http {http} served without a token"
        );
        assert!(
            err.contains("without an auth token") && err.contains("--allow-unauthenticated"),
            "{err}"
        );
    }
    let log =
        run_until_ready_then_interrupt(&data, &["--http", "0.0.0.0:0", "--allow-unauthenticated"]);
    assert!(log.contains("NO auth token"), "{log}");
    let log = run_until_ready_then_interrupt(
        &data,
        &["--http", "0.0.0.0:0", "--auth-token", "s3cret-token"],
    );
    assert!(!log.contains("NO auth token"), "{log}");
    assert!(
        !log.contains("s3cret-token"),
        "the token must not be logged:\n{log}"
    );
    // Loopback (the default) needs no token.
    let log = run_until_ready_then_interrupt(&data, &[]);
    assert!(!log.contains("NO auth token"), "{log}");
}

impl Drop for Running {
    /// A test that failed half-way leaves no server behind.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `curl` of `url` with `args`, 20 s at most (see [`common::curl`]).
fn curl(url: &str, args: &[&str]) -> (u16, String) {
    common::curl(url, 20, args)
}

/// With --tls-cert/--tls-key both fronts speak TLS only: HTTPS answers a client that trusts
/// the CA (and hands out https:// management URLs), plain HTTP gets nothing; the gRPC port
/// completes a TLS handshake with h2 (the Python suite runs the SDK over it). Files that are
/// wrong stop `serve` with a message naming them, before a data directory exists.
#[test]
fn serve_speaks_tls_on_both_fronts_with_the_given_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = common::certificates(dir.path());
    let data = dir.path().join("d");

    let out = cairn()
        .arg("serve")
        .arg("--data")
        .arg(&data)
        .args(["--tls-cert", &key, "--tls-key", &key])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("holds no PEM certificate") && err.contains("key.pem"),
        "{err}"
    );
    assert!(!data.exists(), "a refused start created {}", data.display());
    let out = cairn()
        .arg("serve")
        .arg("--data")
        .arg(&data)
        .args(["--tls-cert", &cert])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--tls-key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let running = Running::start(
        &data,
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--auth-token",
            "tls-t0ken",
        ],
    );
    assert!(running.log.contains("https://"), "{}", running.log);
    let http = running.address("http");
    let grpc = running.address("grpc");
    let port = http.rsplit(':').next().unwrap();
    let https = format!("https://localhost:{port}");
    let trusted = ["--cacert", ca.as_str()];

    assert_eq!(
        curl(&format!("{https}/healthz"), &trusted),
        (200, "ok".into())
    );
    let (code, _) = curl(&format!("{https}/api/stats"), &trusted);
    assert_eq!(code, 401, "the token is still needed over TLS");
    let auth = [
        "--cacert",
        ca.as_str(),
        "-H",
        "authorization: Bearer tls-t0ken",
    ];
    let (code, body) = curl(
        &format!("{https}/runtime/webhooks/durabletask/orchestrators/Nobody"),
        &[&auth[..], &["-X", "POST"]].concat(),
    );
    assert_eq!(code, 202, "{body}");
    assert!(
        body.contains(&format!("\"statusQueryGetUri\":\"{https}/")),
        "management URLs must be https: {body}"
    );
    // Not trusted without the CA, and no answer in plain HTTP.
    let (code, error) = curl(&format!("{https}/healthz"), &[]);
    assert_eq!(code, 0);
    assert!(error.contains("certificate"), "{error}");
    assert_eq!(curl(&format!("http://{http}/healthz"), &[]).0, 0);
    // The gRPC port negotiates h2 over TLS with the same certificate.
    let out = Command::new("curl")
        .args([
            "-s",
            "-m",
            "20",
            "--http2",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version}",
        ])
        .args([
            "--cacert",
            &ca,
            "-X",
            "POST",
            "-H",
            "content-type: application/grpc",
        ])
        .arg(format!(
            "https://localhost:{}/TaskHubSidecarService/Hello",
            grpc.rsplit(':').next().unwrap()
        ))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2", "{out:?}");
    let log = running.interrupt();
    assert!(!log.contains("tls-t0ken"), "{log}");
}

#[test]
fn serve_refuses_another_partition_count() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    run_until_ready_then_interrupt(&data, &["--partitions", "2"]);
    let out = cairn()
        .arg("serve")
        .arg("--data")
        .arg(&data)
        .args(["--partitions", "5"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("2 partitions but 5 were requested"), "{err}");
}

#[test]
fn bench_json_reports_every_field() {
    let dir = tempfile::tempdir().unwrap();
    let out = cairn()
        .args([
            "bench",
            "sequence",
            "fan-out-fan-in",
            "--json",
            "--scale",
            "0.05",
            "--partitions",
            "2",
            "--data",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    for (row, name) in rows.iter().zip(["sequence", "fan-out-fan-in"]) {
        assert_eq!(row["scenario"], name);
        assert_eq!(row["fsync"], true);
        for key in ["ops", "seconds", "ops_per_s", "p50_ms", "p99_ms"] {
            assert!(row[key].as_f64().is_some_and(|v| v > 0.0), "{key} in {row}");
        }
    }
}
