//! Runs the real `converge-ledger` binary for end-to-end tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_converge-ledger");

pub struct Server {
    pub child: Child,
    pub addr: String,
    /// The listening line: address, storage (and what it recovered),
    /// signing key.
    pub first_line: String,
    /// Lines the server printed on stderr after the listening line.
    pub lines: mpsc::Receiver<String>,
}

impl Server {
    /// Starts `converge-ledger serve` on a free port with extra args; waits
    /// for its "listening on" line.
    pub fn start(data_dir: Option<&Path>, extra: &[&str]) -> Server {
        Self::start_at("127.0.0.1:0", data_dir, extra)
    }

    /// [`Server::start`] listening on `listen`.
    pub fn start_at(listen: &str, data_dir: Option<&Path>, extra: &[&str]) -> Server {
        let mut cmd = Command::new(BIN);
        cmd.arg("serve").arg("--listen").arg(listen);
        match data_dir {
            Some(d) => {
                cmd.arg("--data-dir").arg(d);
            }
            None => {
                cmd.args(["--storage", "memory"]);
            }
        }
        cmd.args(extra).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn converge-ledger serve");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let first = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("server printed nothing within 30 s");
        let Some(addr) = first
            .split("listening on ")
            .nth(1)
            .and_then(|r| r.split(';').next())
            .map(str::to_owned)
        else {
            // Not started: show everything it said.
            let _ = child.wait();
            let rest: Vec<String> = rx.try_iter().collect();
            panic!("the server did not start: {first}\n{}", rest.join("\n"));
        };
        Server {
            child,
            addr: format!("http://{addr}"),
            first_line: first,
            lines: rx,
        }
    }

    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then the exit status and the rest of stderr.
    pub fn terminate(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = wait_timeout(&mut self.child, Duration::from_secs(30));
        let rest: Vec<String> = self.lines.try_iter().collect();
        (exit, rest)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_timeout(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "server did not exit within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a client subcommand against `addr`; returns (success, stdout, stderr).
pub fn cli(addr: &str, args: &[&str], stdin: Option<&[u8]>) -> (bool, String, String) {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .args(args)
        .env("CONVERGE_LEDGER_ADDR", addr)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut i = child.stdin.take().unwrap();
        if let Some(b) = stdin {
            i.write_all(b).unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every entry of `context`, checked to form a chain from genesis; and the
/// head that chain folds to. `at` names the moment in a failure.
pub async fn read_chain(
    client: &converge_ledger_client::Client,
    context: &str,
    at: &str,
) -> (
    Vec<converge_ledger_client::Entry>,
    converge_ledger_core::Head,
) {
    let mut all = Vec::new();
    client
        .read_all(
            context,
            converge_ledger_client::GetOptions::default(),
            |e| all.push(e),
        )
        .await
        .unwrap();
    let mut head = converge_ledger_core::Head::empty(context);
    for e in &all {
        head.check_next(context, e)
            .unwrap_or_else(|err| panic!("{at}: {context}: {err}"));
        head.advance(e);
    }
    (all, head)
}
