//! Runs the embedding clients (`tests/embedding/*.mjs`) with Node: finds
//! `node` and the official clients (`tests/client/node_modules`, from
//! `npm ci`), and reads a child's stdout as lines of JSON, every wait
//! bounded and the child killed if the test ends first.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::time::timeout;

/// How long a client may take for one line (or to exit): it bounds its own
/// waits at 10 s each; this only catches a client that hangs.
const LINE_WAIT: Duration = Duration::from_secs(90);

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// `node`, with the official clients installed.
pub struct Node;

impl Node {
    /// `None` (the test is skipped, with a message) when `node` or the npm
    /// packages are missing; under `CI=true` that fails the test instead:
    /// CI must run these.
    pub fn find() -> Option<Node> {
        let modules = PathBuf::from(ROOT).join("tests/client/node_modules");
        let node_runs = std::process::Command::new("node").arg("--version").output().is_ok_and(|out| out.status.success());
        let missing: Vec<&str> = ["socket.io-client", "engine.io-client", "ws"]
            .into_iter()
            .filter(|package| !modules.join(package).join("package.json").is_file())
            .collect();
        if node_runs && missing.is_empty() {
            return Some(Node);
        }
        let why = if node_runs {
            format!("{missing:?} not in {} (run `npm ci` in tests/client)", modules.display())
        } else {
            "`node` (Node.js >= 20) is not on PATH".to_string()
        };
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("the embedding tests need the official clients: {why}");
        }
        eprintln!("SKIPPED (not under CI=true): {why}");
        None
    }

    /// Starts `tests/embedding/<script>` with `args`.
    pub fn spawn(&self, script: &str, args: &[&str]) -> NodeChild {
        let mut child = Command::new("node")
            .arg(PathBuf::from(ROOT).join("tests/embedding").join(script))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node starts");
        let lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        NodeChild { what: format!("{script} {}", args.join(" ")), child, lines }
    }
}

/// A running client script.
pub struct NodeChild {
    what: String,
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl NodeChild {
    /// The next line the script printed, as JSON. Panics with the script's
    /// stderr if it ends or hangs first.
    pub async fn next_json(&mut self) -> Value {
        match timeout(LINE_WAIT, self.lines.next_line()).await {
            Ok(Ok(Some(line))) => serde_json::from_str(&line).unwrap_or_else(|e| panic!("{}: not JSON ({e}): {line}", self.what)),
            Ok(_) => self.fail("ended early".into()).await,
            Err(_) => self.fail(format!("printed nothing for {LINE_WAIT:?}")).await,
        }
    }

    /// Waits for the script to exit successfully.
    pub async fn finish(mut self) {
        let status = timeout(LINE_WAIT, self.child.wait()).await;
        if !matches!(status, Ok(Ok(status)) if status.success()) {
            self.fail(format!("did not exit cleanly ({status:?})")).await;
        }
    }

    /// Stops the script and fails the test with `problem` and its stderr.
    async fn fail(&mut self, problem: String) -> ! {
        let _ = self.child.start_kill();
        let mut stderr = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            let _ = timeout(Duration::from_secs(5), pipe.read_to_string(&mut stderr)).await;
        }
        panic!("{}: {problem}; its stderr:\n{stderr}", self.what)
    }
}
