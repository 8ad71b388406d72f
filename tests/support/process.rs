//! The real `tandem` binary as a child process, for tests of what only a process shows:
//! signals, crashes, several instances on one database.

// A panic in these helpers is the test's report.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::{json, Value};

/// The data key every process seals with, for tests that open the database themselves.
pub const DATA_KEYS: &str = "process-test:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// The `tandem` binary serving on an ephemeral port over `database` (a SQLite path or a
/// `postgres://` URL), with the fake as its provider. Every process signs tokens with the same
/// secret and seals text with the same data key, so a user logged in on one is accepted by
/// another on the same database, which reads what the other wrote.
pub struct Process {
    child: std::process::Child,
    pub addr: std::net::SocketAddr,
}

impl Process {
    pub fn start(
        database: impl AsRef<std::ffi::OsStr>,
        fake: &tandem::testing::fake_openai::FakeOpenAi,
    ) -> Process {
        use std::io::BufRead as _;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
            .env_clear()
            .env("TANDEM_LISTEN", "127.0.0.1:0")
            .env("TANDEM_DATABASE", database)
            .env(
                "TANDEM_JWT_SECRET",
                "process-test-secret-0123456789abcdef-shared",
            )
            // One data key for every process, as instances sharing a database must have.
            .env("TANDEM_DATA_KEYS", DATA_KEYS)
            .env("TANDEM_OPENAI_BASE_URL", fake.base_url().as_str())
            .env("TANDEM_SHUTDOWN_GRACE_SECS", "5")
            .env("TANDEM_CONTROL_PACING_MS", "0")
            .env("TANDEM_LOG_FORMAT", "json")
            .env("TANDEM_LOG", "info")
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn the tandem binary");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        // Keeps draining the log so the process never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let message = serde_json::from_str::<Value>(&line)
                    .ok()
                    .and_then(|v| v["fields"]["message"].as_str().map(str::to_owned))
                    .unwrap_or_default();
                if let Some(addr) = message.split("serving on http://").nth(1) {
                    let _ = tx.send(addr.trim().to_owned());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the server logs its address")
            .parse()
            .unwrap();
        Process { child, addr }
    }

    pub fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    /// Waits for the exit (polling, so the runtime keeps serving the sockets).
    pub async fn exit_status(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the process did not exit"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Registers (if needed) and logs in a clinician.
    pub async fn user(&self, username: &str) -> super::Client {
        let http = reqwest::Client::new();
        let base = format!("http://{}/api/v1", self.addr);
        let credentials = json!({"username": username, "password": super::PASSWORD});
        http.post(format!("{base}/auth/register"))
            .json(&credentials)
            .send()
            .await
            .unwrap();
        let body: Value = http
            .post(format!("{base}/auth/login"))
            .json(&credentials)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        super::Client {
            base,
            http,
            user_id: body["userId"].as_str().unwrap().to_owned(),
            access_token: body["accessToken"].as_str().unwrap().to_owned(),
            refresh_token: body["refreshToken"].as_str().unwrap().to_owned(),
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
