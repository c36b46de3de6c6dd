//! Finding and starting `nats-server` for tests and for `concord check`.
//!
//! There is one way to find the binary ([`find`]) and one way to start a single server on a
//! loopback port and learn that port ([`NatsServer::start`]); the fault suite's three-server
//! mesh ([`crate::mesh`]) writes its own cluster configs but finds the binary here too.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What `nats-server` logs once it accepts clients; the line ends with the address.
const LISTENING: &str = "Listening for client connections on ";
/// What it logs when its config asks for the HTTP monitor (`http_port: -1` picks a port).
const MONITOR: &str = "Starting http monitor on ";
/// How long a starting server may take to log [`LISTENING`].
const READY_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "nats-server not found: set CONCORD_TEST_NATS_SERVER, put nats-server on PATH, \
         or install it with scripts/tools.sh (tried {tried})"
    )]
    NotFound { tried: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("nats-server {0}")]
    Start(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// Finds `nats-server`: `CONCORD_TEST_NATS_SERVER` (set by `scripts/test.sh` and
/// `scripts/check.sh`), then `PATH`, then `.tools/bin/nats-server` where `scripts/tools.sh`
/// installs it (under the working directory, then under this checkout's root).
pub fn find() -> Result<PathBuf, Error> {
    if let Some(path) = std::env::var_os("CONCORD_TEST_NATS_SERVER") {
        return Ok(PathBuf::from(path));
    }
    if let Some(paths) = std::env::var_os("PATH") {
        if let Some(p) = std::env::split_paths(&paths)
            .map(|dir| dir.join("nats-server"))
            .find(|p| p.is_file())
        {
            return Ok(p);
        }
    }
    let local = [
        PathBuf::from(".tools/bin/nats-server"),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.tools/bin/nats-server"),
    ];
    if let Some(p) = local.iter().find(|p| p.is_file()) {
        return Ok(p.clone());
    }
    Err(Error::NotFound {
        tried: format!(
            "$CONCORD_TEST_NATS_SERVER, $PATH, {}, {}",
            local[0].display(),
            local[1].display()
        ),
    })
}

/// One `nats-server` on 127.0.0.1, logging to `<dir>/nats.log` (its stdout and stderr go to
/// `<dir>/nats.stdout.log`). Dropping it does not stop the process: the owner kills and
/// reaps [`NatsServer::child`] when it wants to.
#[derive(Debug)]
pub struct NatsServer {
    pub child: Child,
    pub log_path: PathBuf,
    pub port: u16,
    /// The HTTP monitoring port (`/connz`, `/subsz`, `/varz`), when the config enables it.
    pub monitor_port: Option<u16>,
}

impl NatsServer {
    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts `binary` on an ephemeral port (`-p -1`) and reads the real port back from its
    /// log.
    pub async fn start(binary: &Path, dir: &Path) -> Result<NatsServer, Error> {
        NatsServer::start_configured(binary, dir, None).await
    }

    /// As [`NatsServer::start`], with `config` (nats-server's config file syntax: accounts,
    /// TLS, NKeys, ping settings, `http_port: -1` for a monitor…) written to
    /// `<dir>/nats.conf`; the address, port and log still come from the command line, so the
    /// config must not set them. [`NatsServer::restart_on`] uses the same config again.
    pub async fn start_with_config(
        binary: &Path,
        dir: &Path,
        config: &str,
    ) -> Result<NatsServer, Error> {
        let conf = dir.join("nats.conf");
        std::fs::write(&conf, config).map_err(io(format!("writing {}", conf.display())))?;
        NatsServer::start_configured(binary, dir, Some(&conf)).await
    }

    async fn start_configured(
        binary: &Path,
        dir: &Path,
        conf: Option<&Path>,
    ) -> Result<NatsServer, Error> {
        let log_path = dir.join("nats.log");
        let mut child = spawn(binary, dir, &log_path, "-1", conf)?;
        let text = wait_listening(&mut child, &log_path).await?;
        match logged_port(&text, LISTENING) {
            Some(port) => Ok(NatsServer {
                child,
                log_path,
                port,
                monitor_port: logged_port(&text, MONITOR),
            }),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                Err(Error::Start(format!(
                    "logged no port we can parse; log:\n{text}"
                )))
            }
        }
    }

    /// Starts `binary` again on `port` (so every client reconnects to the URL it knows) and
    /// waits until it listens, with the config [`NatsServer::start_with_config`] wrote to
    /// `<dir>/nats.conf` if there is one (its monitor, if any, gets a new port). The previous
    /// log is kept as `nats.log.<n>`. Retries for up to 15 s while the port is not free yet.
    pub async fn restart_on(
        binary: &Path,
        log_path: &Path,
        port: u16,
    ) -> Result<NatsServer, Error> {
        let dir = log_path
            .parent()
            .ok_or_else(|| Error::Start(format!("log {} has no parent", log_path.display())))?;
        let conf = Some(dir.join("nats.conf")).filter(|c| c.is_file());
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if log_path.exists() {
                let mut n = 1;
                while dir.join(format!("nats.log.{n}")).exists() {
                    n += 1;
                }
                std::fs::rename(log_path, dir.join(format!("nats.log.{n}")))
                    .map_err(io(format!("rotating {}", log_path.display())))?;
            }
            let mut child = spawn(binary, dir, log_path, &port.to_string(), conf.as_deref())?;
            // Wait for this instance to listen, or to exit (port still taken).
            let exited = match wait_listening(&mut child, log_path).await {
                Ok(text) => {
                    return Ok(NatsServer {
                        child,
                        log_path: log_path.to_path_buf(),
                        port,
                        monitor_port: logged_port(&text, MONITOR),
                    })
                }
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return Err(Error::Start(format!(
                    "timed out after 15 s restarting on port {port}: {exited}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The port at the end of the first log line that contains `what` (`… on 127.0.0.1:4222`).
fn logged_port(text: &str, what: &str) -> Option<u16> {
    text.lines()
        .find_map(|l| l.find(what).map(|at| l[at + what.len()..].trim()))
        .and_then(|addr| addr.rsplit(':').next())
        .and_then(|p| p.parse().ok())
}

fn spawn(
    binary: &Path,
    dir: &Path,
    log_path: &Path,
    port: &str,
    conf: Option<&Path>,
) -> Result<Child, Error> {
    let out_path = dir.join("nats.stdout.log");
    let out: File = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&out_path)
        .map_err(io(format!("opening {}", out_path.display())))?;
    let err = out
        .try_clone()
        .map_err(io(format!("duplicating {}", out_path.display())))?;
    let mut cmd = Command::new(binary);
    if let Some(conf) = conf {
        cmd.arg("-c").arg(conf);
    }
    cmd.args(["-a", "127.0.0.1", "-p", port, "-l"])
        .arg(log_path)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .map_err(io(format!("spawning {}", binary.display())))
}

/// Waits until `child` logs [`LISTENING`] and returns the log; kills it on timeout.
async fn wait_listening(child: &mut Child, log_path: &Path) -> Result<String, Error> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let text = std::fs::read_to_string(log_path).unwrap_or_default();
        if text.contains(LISTENING) {
            return Ok(text);
        }
        if let Some(status) = child.try_wait().map_err(io("waiting for nats-server"))? {
            let stdout = log_path
                .parent()
                .and_then(|d| std::fs::read_to_string(d.join("nats.stdout.log")).ok())
                .unwrap_or_default();
            return Err(Error::Start(format!(
                "exited with {status} before listening; log:\n{text}\n{stdout}"
            )));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::Start(format!(
                "did not log {LISTENING:?} within {READY_TIMEOUT:?}; log:\n{text}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
