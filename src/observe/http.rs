//! The `metrics.listen` HTTP/1.1 listener: `GET /metrics` (Prometheus text format),
//! `GET /healthz` (200 while the process runs) and `GET /readyz` (200 when
//! [`Health::readiness`] says so, else 503 with the reason).
//!
//! Hand-written and deliberately small: one request per connection (`Connection: close`),
//! a bounded request head, a read deadline, a write deadline and a cap on open connections,
//! so a slow or hostile scraper cannot hold the node's resources: a client that connects and
//! never reads its reply loses its slot when the write deadline passes (issue #20, item 8).

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use futures::future::BoxFuture;

/// Largest request head read; more is answered 431.
const MAX_HEAD: usize = 8 * 1024;
/// Time a client gets to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a client gets to take its whole reply: past it the connection is dropped, so a
/// client that never reads cannot hold a slot.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more wait in the accept queue.
const MAX_CONNECTIONS: usize = 32;

/// How many connections are served at once and how long each may take.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    max_connections: usize,
    read_timeout: Duration,
    write_timeout: Duration,
}

const BOUNDS: Bounds = Bounds {
    max_connections: MAX_CONNECTIONS,
    read_timeout: READ_TIMEOUT,
    write_timeout: WRITE_TIMEOUT,
};

/// What the endpoints read. The probe is set once the node's Raft is up; until then
/// `/readyz` answers 503 "starting".
pub struct Endpoints {
    pub handle: PrometheusHandle,
    pub probe: OnceLock<Arc<dyn Health>>,
}

/// What `/metrics` and `/readyz` ask of the node, answered by `node::health::Probe`: a
/// trait, so that `observe` does not import the node that wires it.
pub trait Health: Send + Sync {
    /// Brings the on-demand gauges up to date before a render.
    fn refresh(&self) -> BoxFuture<'_, ()>;
    /// `Ok` when ready to serve, else the reason in one line.
    fn readiness(&self) -> BoxFuture<'_, Result<(), String>>;
}

/// Binds `addr`; the error says which setting to fix.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| format!("metrics.listen {addr}: cannot listen: {e}"))
}

/// Serves connections until cancelled.
pub async fn serve(
    listener: TcpListener,
    endpoints: Arc<Endpoints>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    serve_within(listener, endpoints, cancel, tracker, BOUNDS).await
}

async fn serve_within(
    listener: TcpListener,
    endpoints: Arc<Endpoints>,
    cancel: CancellationToken,
    tracker: TaskTracker,
    bounds: Bounds,
) {
    let slots = Arc::new(Semaphore::new(bounds.max_connections));
    loop {
        let slot = tokio::select! {
            _ = cancel.cancelled() => return,
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            _ = cancel.cancelled() => return,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // E.g. out of file descriptors: pause instead of spinning.
                tracing::warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let endpoints = endpoints.clone();
        tracker.spawn(async move {
            if let Err(e) = handle(stream, &endpoints, bounds).await {
                tracing::debug!(error = %e, "metrics listener: connection failed");
            }
            drop(slot);
        });
    }
}

async fn handle(stream: TcpStream, endpoints: &Endpoints, bounds: Bounds) -> std::io::Result<()> {
    let mut stream = stream;
    let (status, kind, body, head_only) =
        match tokio::time::timeout(bounds.read_timeout, read_head(&mut stream)).await {
            Ok(Ok(Some(head))) => answer(&head, endpoints).await,
            Ok(Ok(None)) => (431, TEXT, b"request head too large\n".to_vec(), false),
            Ok(Err(e)) => return Err(e),
            Err(_) => (408, TEXT, b"request timeout\n".to_vec(), false),
        };
    // Dropped at the deadline (the stream closes with it): a client that does not read
    // would otherwise hold its slot for as long as it keeps the connection open.
    let write = respond(&mut stream, status, kind, &body, head_only);
    match tokio::time::timeout(bounds.write_timeout, write).await {
        Ok(written) => written,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "client did not take its reply within the write deadline",
        )),
    }
}

/// The reply to one request head: status, content type, body and whether it is a `HEAD`.
async fn answer(head: &str, endpoints: &Endpoints) -> (u16, &'static str, Vec<u8>, bool) {
    let line = head.lines().next().unwrap_or("");
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    // Query strings are ignored.
    let path = target.split('?').next().unwrap_or("");
    if method != "GET" && method != "HEAD" {
        return (405, TEXT, b"only GET and HEAD\n".to_vec(), false);
    }
    let (status, kind, body) = route(path, endpoints).await;
    (status, kind, body, method == "HEAD")
}

const TEXT: &str = "text/plain; charset=utf-8";
const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

async fn route(path: &str, endpoints: &Endpoints) -> (u16, &'static str, Vec<u8>) {
    match path {
        "/metrics" => {
            if let Some(probe) = endpoints.probe.get() {
                probe.refresh().await;
            }
            (200, PROMETHEUS, endpoints.handle.render().into_bytes())
        }
        "/healthz" => (200, TEXT, b"ok\n".to_vec()),
        "/readyz" => match endpoints.probe.get() {
            None => (503, TEXT, b"starting\n".to_vec()),
            Some(probe) => match probe.readiness().await {
                Ok(()) => (200, TEXT, b"ready\n".to_vec()),
                Err(why) => (503, TEXT, format!("{why}\n").into_bytes()),
            },
        },
        _ => (
            404,
            TEXT,
            b"not found (try /metrics, /healthz, /readyz)\n".to_vec(),
        ),
    }
}

/// Reads up to the blank line ending the request head; `None` if it is too large.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<String>> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
            break;
        }
        if buf.len() > MAX_HEAD {
            return Ok(None);
        }
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// Writes the response (without its body for `HEAD`) and closes the connection.
async fn respond(
    stream: &mut TcpStream,
    status: u16,
    kind: &str,
    body: &[u8],
    head_only: bool,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reason(status),
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if !head_only {
        stream.write_all(body).await?;
    }
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_exporter_prometheus::PrometheusBuilder;

    async fn ask(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(request).await.expect("write");
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.expect("read");
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn answers_each_endpoint_and_refuses_the_rest() {
        let listener = bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let endpoints = Arc::new(Endpoints {
            // Not installed globally: a handle of its own, empty.
            handle: PrometheusBuilder::new().build_recorder().handle(),
            probe: OnceLock::new(),
        });
        let (cancel, tracker) = (CancellationToken::new(), TaskTracker::new());
        tokio::spawn(serve(listener, endpoints, cancel.clone(), tracker));

        let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        let r = ask(addr, get("/healthz").as_bytes()).await;
        assert!(
            r.starts_with("HTTP/1.1 200 OK\r\n") && r.ends_with("\r\n\r\nok\n"),
            "{r}"
        );
        let r = ask(addr, get("/readyz").as_bytes()).await;
        assert!(
            r.starts_with("HTTP/1.1 503 ") && r.ends_with("starting\n"),
            "{r}"
        );
        let r = ask(addr, get("/metrics?x=1").as_bytes()).await;
        assert!(
            r.starts_with("HTTP/1.1 200 OK\r\n") && r.contains("version=0.0.4"),
            "{r}"
        );
        let r = ask(addr, b"HEAD /healthz HTTP/1.1\r\n\r\n").await;
        assert!(
            r.contains("Content-Length: 3\r\n") && r.ends_with("\r\n\r\n"),
            "{r}"
        );
        let r = ask(addr, get("/other").as_bytes()).await;
        assert!(r.starts_with("HTTP/1.1 404 "), "{r}");
        let r = ask(addr, b"POST /metrics HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 405 "), "{r}");
        // One byte over the limit, all of it read by the server: it closes cleanly.
        let mut huge = b"GET / HTTP/1.1\r\nX: ".to_vec();
        huge.resize(MAX_HEAD + 1, b'a');
        let r = ask(addr, &huge).await;
        assert!(r.starts_with("HTTP/1.1 431 "), "{r}");
        cancel.cancel();
    }

    /// Every slot taken by a client that asked for `/metrics` and never reads its reply:
    /// the write deadline frees the slots and `/healthz` answers again (issue #20, item 8).
    #[tokio::test]
    async fn clients_that_never_read_do_not_hold_the_slots() {
        // A `/metrics` page far larger than what loopback buffers for a client that does not
        // read (about 1.7 MB here with a 1 KiB receive buffer), so every write blocks.
        let recorder = PrometheusBuilder::new().build_recorder();
        let label = "x".repeat(200);
        metrics::with_local_recorder(&recorder, || {
            for i in 0..12_000 {
                metrics::counter!(format!("concord_test_filler_{i}"), "l" => label.clone())
                    .increment(1);
            }
        });
        let handle = recorder.handle();
        assert!(
            handle.render().len() > 3_000_000,
            "the page must not fit in buffers"
        );
        let listener = bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let endpoints = Arc::new(Endpoints {
            handle,
            probe: OnceLock::new(),
        });
        let bounds = Bounds {
            read_timeout: Duration::from_secs(1),
            write_timeout: Duration::from_secs(1),
            ..BOUNDS
        };
        let (cancel, tracker) = (CancellationToken::new(), TaskTracker::new());
        tokio::spawn(serve_within(
            listener,
            endpoints,
            cancel.clone(),
            tracker,
            bounds,
        ));

        let started = std::time::Instant::now();
        let mut hostile = Vec::new();
        for _ in 0..bounds.max_connections {
            let socket = tokio::net::TcpSocket::new_v4().expect("socket");
            socket.set_recv_buffer_size(1024).expect("rcvbuf");
            let mut s = socket.connect(addr).await.expect("connect");
            s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n")
                .await
                .expect("write");
            hostile.push(s);
        }
        // Queued behind the 32 in the accept backlog: served once a slot frees.
        let healthz = ask(addr, b"GET /healthz HTTP/1.1\r\n\r\n");
        let r = tokio::time::timeout(Duration::from_secs(8), healthz)
            .await
            .expect("/healthz must answer while clients that never read hold every slot");
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        // It waited for a slot: the hostile clients did hold them until the deadline.
        assert!(
            started.elapsed() >= Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
        drop(hostile);
        cancel.cancel();
    }
}
