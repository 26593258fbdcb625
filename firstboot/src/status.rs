//! What an operator sees of first boot: a text table (`ciab-firstboot
//! status`), the journal as JSON, a tiny self-refreshing HTML page served over
//! HTTP/1.1, and systemd `sd_notify` messages.
//!
//! ## Why the HTTP server re-reads the journal file on every request
//! The journal file is the single source of truth and is only ever replaced
//! by an atomic rename, so a read always sees a complete document — exactly
//! the state that would survive a power cut. Reading it per request means the
//! server needs no handle on the engine (no lock shared with step code that
//! might panic or block), and the same server works from a separate process,
//! e.g. still serving the failure page after the service itself has exited.
//! The cost is one read+parse of a few KB per request, at the page's 0.5 Hz
//! refresh rate per viewer: negligible.
//!
//! The server never performs journal recovery (that is the engine's job): it
//! uses [`Journal::read`], which has no side effects.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr as UnixSocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::engine::{format_duration, Reporter, RetryInfo, RunOutcome, StepInfo, StepOutcome};
use crate::engine::journal::{now_unix, Journal, StepRecord, StepState};

// ---------------------------------------------------------------------------
// Text and JSON

/// Seconds a step has taken: its recorded duration once finished, time since
/// it started while running, nothing while pending.
fn elapsed(step: &StepRecord, now: f64) -> Option<f64> {
    match step.state {
        StepState::Running => step
            .started_at
            .map(|s| (now - s).max(0.0))
            .or(step.duration),
        _ => step.duration,
    }
}

fn fmt_secs(secs: Option<f64>) -> String {
    match secs {
        Some(s) if s.is_finite() && s >= 0.0 => format_duration(Duration::from_secs_f64(s)),
        _ => "-".to_string(),
    }
}

fn one_line(s: &str) -> String {
    s.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" / ")
}

/// The `ciab-firstboot status` table, one row a step.
pub fn render_table(journal: &Journal) -> String {
    render_table_at(journal, now_unix())
}

/// [`render_table`] with an explicit "now" (for running steps' elapsed time).
pub fn render_table_at(journal: &Journal, now: f64) -> String {
    let header = ["#", "STEP", "STATE", "ATTEMPTS", "TIME", "ERROR"];
    let rows: Vec<[String; 6]> = journal
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            [
                (i + 1).to_string(),
                s.name.clone(),
                s.state.as_str().to_string(),
                s.attempts.to_string(),
                fmt_secs(elapsed(s, now)),
                s.last_error.as_deref().map(one_line).unwrap_or_default(),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row.iter()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let done = journal
        .steps
        .iter()
        .filter(|s| s.state == StepState::Done)
        .count();
    let mut out = format!(
        "first boot: {} ({done}/{} steps done, run {})\n",
        journal.state.as_str(),
        journal.steps.len(),
        journal.boot_count
    );
    let mut push_row = |cells: &[String]| {
        let mut line = String::new();
        for (k, cell) in cells.iter().enumerate() {
            if k + 1 == cells.len() {
                line.push_str(cell); // last column: not padded
            } else {
                let pad = widths[k].saturating_sub(cell.chars().count());
                if k == 0 {
                    line.push_str(&" ".repeat(pad)); // right-align the number
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    line.push_str(&" ".repeat(pad));
                }
                line.push_str("  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    };
    push_row(&header.map(String::from));
    for row in &rows {
        push_row(row);
    }
    for note in &journal.notes {
        out.push_str("note: ");
        out.push_str(&one_line(note));
        out.push('\n');
    }
    out
}

/// The journal as pretty JSON (the same document as the file).
pub fn to_json(journal: &Journal) -> String {
    serde_json::to_string_pretty(journal)
        .unwrap_or_else(|_| "{\"error\": \"cannot serialise the journal\"}".to_string())
}

// ---------------------------------------------------------------------------
// HTML

/// Escape text for HTML element content and quoted attribute values.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// The status page's port (`serve-status --port`), on every address.
pub const DEFAULT_PORT: u16 = 8080;

const PAGE_HEAD: &str = r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="refresh" content="2">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>TITLE</title>
<style>
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
table{border-collapse:collapse;width:100%;max-width:70em}
th,td{border-bottom:1px solid #ddd;padding:.35em .6em;text-align:left;vertical-align:top}
th{background:#eee}
td.num{text-align:right}
.title{color:#666;font-size:.9em}
pre{margin:0;white-space:pre-wrap;word-break:break-word;font-size:.9em}
.state{font-weight:bold}
.s-done{color:#1a7f37}.s-running{color:#0550ae}.s-failed{color:#cf222e}.s-pending{color:#777}
.banner{padding:.6em 1em;border-radius:4px;display:inline-block;margin-bottom:1em}
.b-done{background:#dafbe1}.b-running{background:#ddf4ff}.b-failed{background:#ffebe9}
</style>
</head>
<body>
"#;

/// The status page for `journal` (`None`: first boot has not written its
/// journal yet). Self-contained, reloads itself every 2 s.
pub fn render_html(journal: Option<&Journal>, now: f64) -> String {
    let Some(j) = journal else {
        let mut page = PAGE_HEAD.replace("TITLE", "ciab first boot: starting");
        page.push_str(
            "<h1>ciab first boot</h1>\n<p class=\"banner b-running\">First boot has not \
             started yet.</p>\n</body>\n</html>\n",
        );
        return page;
    };
    let overall = j.state.as_str();
    let done = j
        .steps
        .iter()
        .filter(|s| s.state == StepState::Done)
        .count();
    let mut page = PAGE_HEAD.replace("TITLE", &format!("ciab first boot: {overall}"));
    page.push_str("<h1>ciab first boot</h1>\n");
    page.push_str(&format!(
        "<p class=\"banner b-{overall}\">Overall: <span class=\"state s-{overall}\" \
         id=\"overall\">{overall}</span> &middot; {done}/{} steps done &middot; run {}</p>\n",
        j.steps.len(),
        j.boot_count
    ));
    if let Some(failed) = j.steps.iter().find(|s| s.state == StepState::Failed) {
        page.push_str(&format!(
            "<p>First boot stopped at step <b>{}</b>. Fix the cause shown below, then run \
             <code>ciab-firstboot retry</code> to resume from that step.</p>\n",
            html_escape(&failed.name)
        ));
    }
    page.push_str(
        "<table>\n<thead><tr><th>#</th><th>Step</th><th>State</th><th>Attempts</th>\
         <th>Time</th><th>Error</th></tr></thead>\n<tbody>\n",
    );
    for (i, s) in j.steps.iter().enumerate() {
        let state = s.state.as_str();
        let error = s
            .last_error
            .as_deref()
            .map(|e| format!("<pre>{}</pre>", html_escape(e)))
            .unwrap_or_default();
        page.push_str(&format!(
            "<tr id=\"step-{}\"><td class=\"num\">{}</td><td>{}<div class=\"title\">{}</div></td>\
             <td class=\"state s-{state}\">{state}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td>{error}</td></tr>\n",
            html_escape(&s.name),
            i + 1,
            html_escape(&s.name),
            html_escape(&s.title),
            s.attempts,
            html_escape(&fmt_secs(elapsed(s, now))),
        ));
    }
    page.push_str("</tbody>\n</table>\n");
    if !j.notes.is_empty() {
        page.push_str("<h2>Notes</h2>\n<ul>\n");
        for n in &j.notes {
            page.push_str(&format!("<li>{}</li>\n", html_escape(n)));
        }
        page.push_str("</ul>\n");
    }
    page.push_str(
        "<p class=\"title\">Machine-readable: <a href=\"/status.json\">status.json</a>. \
         This page refreshes every 2 seconds.</p>\n</body>\n</html>\n",
    );
    page
}

fn render_error_html(error: &str) -> String {
    let mut page = PAGE_HEAD.replace("TITLE", "ciab first boot: status unavailable");
    page.push_str(&format!(
        "<h1>ciab first boot</h1>\n<p class=\"banner b-failed\">The journal cannot be \
         read:</p>\n<pre>{}</pre>\n</body>\n</html>\n",
        html_escape(error)
    ));
    page
}

// ---------------------------------------------------------------------------
// HTTP server
//
// ## Why a hand-written server here (issue 20)
// Anyone on the management network can reach the page, it runs as root, and it
// must never hang or crash first boot. What it guarantees (tests below pin each
// one unless marked untested):
// - a request head of at most `MAX_HEAD` (8 KiB), else 431: memory per
//   connection is bounded;
// - one deadline for the whole head (`io_timeout`, 5 s), not one per read,
//   else 408: a client trickling bytes cannot hold a connection longer;
//   writes time out too;
// - at most `max_connections` (16) served at once; the rest get an immediate
//   503, written and drained without ever blocking the accept loop;
// - one request per connection (`Connection: close`): idle browser connections
//   do not keep slots;
// - a lingering close, so that an unread request body does not turn into a
//   reset that destroys the answer in flight (untested);
// - accept errors such as EMFILE back off and retry, never end the loop
//   (untested);
// - GET and HEAD only (else 405 with `Allow`), HTTP/1.x only (else 400); exact
//   routes `/`, `/index.html`, `/status.json`, `/ca.crt`, anything else 404: no
//   part of the request reaches the file system, so no traversal; HEAD sends
//   GET's headers without the body; every answer has Content-Type,
//   Content-Length, `Cache-Control: no-store`;
// - binds where the caller says (`0.0.0.0:8080` on the box) and reports the
//   bound port; dropping the handle closes the listener, shuts down every open
//   connection (slow clients included) and joins every thread, promptly.
//
// tiny_http 0.12.0 (its latest release, from 2022; 4 more crates) was checked
// against this list, by its source and a probe. It would take over head
// parsing, response formatting and HEAD, about 100 of the ~400 lines here, but
// it owns the accept loop and the accepted sockets and gives no hook for the
// rest:
// - no head limit: a header line is read into an unbounded Vec (the probe sent
//   64 MiB and got no answer);
// - no timeouts. The only way to put one on sockets it accepts is SO_RCVTIMEO
//   on the listener (Linux copies it on accept), but then accept() itself
//   fails with EAGAIN, and tiny_http's accept thread exits for good on any
//   accept error: the probe's server refused connections 0.8 s after it
//   started. The same exit makes EMFILE end the page for the rest of boot;
// - no connection cap: one thread per connection with no maximum (its issue
//   221); 200 idle clients made ~150 threads that were still there 6 s later;
// - keep-alive without an idle timeout, no lingering close, and dropping its
//   `Server` neither closes open connections nor joins their threads.
// rouille is built on tiny_http; astra needs hyper and tokio; touche (0.0.x)
// also stops on the first accept error, queues excess connections instead of
// answering them, and cannot be stopped. A crate would add dependencies and
// remove only the parsing, which is the small and tested part; the part that
// carries the risk would stay hand-written either way.

/// Limits of the status server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Connections served at once; more get an immediate 503.
    pub max_connections: usize,
    /// Whole-request read deadline, and per-write timeout.
    pub io_timeout: Duration,
    /// How often the accept loop checks for shutdown when idle.
    pub poll_interval: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_connections: 16,
            io_timeout: Duration::from_secs(5),
            poll_interval: Duration::from_millis(50),
        }
    }
}

/// Largest request head accepted.
const MAX_HEAD: usize = 8 * 1024;

/// A running status server; dropping it stops the server: the accept loop
/// ends, open connections are shut down, and all threads are joined.
pub struct StatusServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl StatusServer {
    /// Serve `journal_path` on `addr` (`0.0.0.0:PORT` on the box,
    /// `127.0.0.1:0` in tests) with default limits.
    pub fn start(addr: impl ToSocketAddrs, journal_path: impl Into<PathBuf>) -> io::Result<Self> {
        Self::start_with(addr, journal_path, ServerConfig::default())
    }

    pub fn start_with(
        addr: impl ToSocketAddrs,
        journal_path: impl Into<PathBuf>,
        config: ServerConfig,
    ) -> io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        // Non-blocking accept polled against the stop flag: dropping the
        // handle never depends on a wake-up connection getting through.
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let journal_path = journal_path.into();
        let thread = std::thread::Builder::new()
            .name("ciab-status".into())
            .spawn(move || accept_loop(listener, journal_path, config, stop2))?;
        Ok(StatusServer {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for StatusServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A connection refused with 503 because of the connection cap: answered
/// and half-closed at once, then drained without blocking by the accept loop
/// so that closing it does not reset the connection before the client has
/// read the answer.
struct Rejected {
    stream: TcpStream,
    since: Instant,
}

/// Most rejected connections being drained at once; beyond that they are
/// simply dropped.
const MAX_REJECTED: usize = 64;
/// How long a closing connection is drained at most.
const LINGER: Duration = Duration::from_secs(1);

fn accept_loop(listener: TcpListener, path: PathBuf, config: ServerConfig, stop: Arc<AtomicBool>) {
    let open: Arc<Mutex<HashMap<u64, TcpStream>>> = Arc::default();
    let active = Arc::new(AtomicUsize::new(0));
    let mut workers: Vec<JoinHandle<()>> = Vec::new();
    let mut rejected: Vec<Rejected> = Vec::new();
    let mut next_id: u64 = 0;
    while !stop.load(Ordering::SeqCst) {
        rejected.retain_mut(drain_nonblocking);
        let stream = match listener.accept() {
            Ok((stream, _peer)) => stream,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(config.poll_interval);
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => {
                // e.g. EMFILE: back off instead of spinning.
                std::thread::sleep(config.poll_interval);
                continue;
            }
        };
        workers.retain(|w| !w.is_finished());
        if active.load(Ordering::SeqCst) >= config.max_connections {
            reject(stream, &mut rejected);
            continue;
        }
        if stream.set_nonblocking(false).is_err()
            || stream.set_write_timeout(Some(config.io_timeout)).is_err()
            || stream.set_read_timeout(Some(config.io_timeout)).is_err()
        {
            continue;
        }
        let id = next_id;
        next_id += 1;
        if let Ok(clone) = stream.try_clone() {
            lock(&open).insert(id, clone);
        }
        active.fetch_add(1, Ordering::SeqCst);
        let (open2, active2, path2) = (open.clone(), active.clone(), path.clone());
        let timeout = config.io_timeout;
        let spawned = std::thread::Builder::new()
            .name("ciab-status-conn".into())
            .spawn(move || {
                let mut stream = stream;
                if serve_connection(&mut stream, &path2, timeout).is_ok() {
                    linger_close(&mut stream);
                }
                let _ = stream.shutdown(Shutdown::Both);
                lock(&open2).remove(&id);
                active2.fetch_sub(1, Ordering::SeqCst);
            });
        match spawned {
            Ok(h) => workers.push(h),
            Err(_) => {
                lock(&open).remove(&id);
                active.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
    drop(listener);
    drop(rejected);
    // Unblock every connection thread (slow clients included), then join.
    for s in lock(&open).values() {
        let _ = s.shutdown(Shutdown::Both);
    }
    for w in workers {
        let _ = w.join();
    }
}

/// Answer 503 without ever blocking the accept loop.
fn reject(mut stream: TcpStream, rejected: &mut Vec<Rejected>) {
    if rejected.len() >= MAX_REJECTED || stream.set_nonblocking(true).is_err() {
        return; // dropped: the client sees a reset, which is all we can afford
    }
    // A fresh socket's send buffer is empty, so this small write completes
    // even in non-blocking mode.
    let _ = write_response(
        &mut stream,
        503,
        "text/plain; charset=utf-8",
        b"busy\n",
        false,
        &[],
    );
    let _ = stream.shutdown(Shutdown::Write);
    rejected.push(Rejected {
        stream,
        since: Instant::now(),
    });
}

/// Read whatever a rejected client sent; `false` once it can be closed.
fn drain_nonblocking(r: &mut Rejected) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match r.stream.read(&mut buf) {
            Ok(0) => return false,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return r.since.elapsed() < LINGER,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
}

/// Half-close after the response and drain what the client still sends
/// (e.g. an unread request body), bounded in time and size, so that closing
/// does not turn into a TCP reset that could destroy the response in flight.
fn linger_close(stream: &mut TcpStream) {
    if stream.shutdown(Shutdown::Write).is_err() {
        return;
    }
    let deadline = Instant::now() + LINGER;
    let mut buf = [0u8; 4096];
    let mut total = 0usize;
    while total < 64 * 1024 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => total += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

fn status_text(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

fn write_response(
    stream: &mut TcpStream,
    code: u16,
    content_type: &str,
    body: &[u8],
    head_only: bool,
    extra_headers: &[(&str, &str)],
) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n",
        status_text(code),
        body.len()
    );
    for (k, v) in extra_headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    stream.write_all(&out)?;
    stream.flush()
}

/// Read the request head within `timeout` overall (a client trickling bytes
/// cannot hold the connection longer). `Ok(None)`: client closed early.
fn read_head(stream: &mut TcpStream, timeout: Duration) -> Result<Option<Vec<u8>>, u16> {
    let deadline = Instant::now() + timeout;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = find_head_end(&buf) {
            if end > MAX_HEAD {
                return Err(431);
            }
            buf.truncate(end);
            return Ok(Some(buf));
        }
        if buf.len() > MAX_HEAD {
            return Err(431);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return Err(408);
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(None),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut =>
            {
                return Err(408)
            }
            Err(_) => return Ok(None),
        }
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = buf.windows(2).position(|w| w == b"\n\n");
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn serve_connection(
    stream: &mut TcpStream,
    journal_path: &Path,
    timeout: Duration,
) -> io::Result<()> {
    const TEXT: &str = "text/plain; charset=utf-8";
    let head = match read_head(stream, timeout) {
        Ok(Some(h)) => h,
        Ok(None) => return Ok(()),
        Err(code) => {
            let body = format!("{}\n", status_text(code));
            return write_response(stream, code, TEXT, body.as_bytes(), false, &[]);
        }
    };
    let head = String::from_utf8_lossy(&head);
    let request_line = head.lines().next().unwrap_or("");
    let mut parts = request_line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return write_response(stream, 400, TEXT, b"Bad Request\n", false, &[]);
    };
    if !version.starts_with("HTTP/1.") {
        return write_response(stream, 400, TEXT, b"Bad Request\n", false, &[]);
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => {
            return write_response(
                stream,
                405,
                TEXT,
                b"Method Not Allowed\n",
                false,
                &[("Allow", "GET, HEAD")],
            )
        }
    };
    let path = target.split(['?', '#']).next().unwrap_or("");
    match path {
        "/status.json" => {
            let (code, body) = match Journal::read(journal_path) {
                Ok(Some(j)) => (200, to_json(&j)),
                Ok(None) => (
                    503,
                    "{\"error\": \"first boot has not written its journal yet\"}".to_string(),
                ),
                Err(e) => (
                    500,
                    serde_json::json!({ "error": format!("{e:#}") }).to_string(),
                ),
            };
            write_response(
                stream,
                code,
                "application/json",
                body.as_bytes(),
                head_only,
                &[],
            )
        }
        "/" | "/index.html" => {
            let (code, mut body) = match Journal::read(journal_path) {
                Ok(j) => (200, render_html(j.as_ref(), now_unix())),
                Err(e) => (500, render_error_html(&format!("{e:#}"))),
            };
            if let Some(summary) = cloud_summary(journal_path) {
                body = body.replace("</body>", &format!("{}</body>", render_cloud_html(&summary)));
            }
            if ca_cert_path(journal_path).exists() {
                body = body.replace(
                    "</body>",
                    "<p>This box's certificate authority, which signed the cloud's TLS certificate: \
                     <a href=\"/ca.crt\">ca.crt</a> (compare its fingerprint with the one on the console).</p>\n</body>",
                );
            }
            write_response(
                stream,
                code,
                "text/html; charset=utf-8",
                body.as_bytes(),
                head_only,
                &[],
            )
        }
        "/ca.crt" => match std::fs::read(ca_cert_path(journal_path)) {
            Ok(pem) => write_response(stream, 200, "application/x-pem-file", &pem, head_only, &[("Content-Disposition", "attachment; filename=\"ciab-ca.crt\"")]),
            Err(_) => write_response(stream, 404, TEXT, b"No CA yet: first boot makes it in its pki step.\n", head_only, &[]),
        },
        _ => write_response(stream, 404, TEXT, b"Not Found\n", head_only, &[]),
    }
}

fn cloud_summary(journal_path: &Path) -> Option<crate::cloud::identity::CloudSummary> {
    let path = journal_path.parent()?.join(crate::cloud::identity::CLOUD_SUMMARY);
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// The cloud's section of the status page: where to reach it and who can
/// log in; passwords stay in the box's clouds.yaml.
pub fn render_cloud_html(s: &crate::cloud::identity::CloudSummary) -> String {
    let mut out = format!("<h2>Cloud</h2>\n<p id=\"cloud\">Identity API (Keystone): <code>{}</code>, region <code>{}</code>.<br>", html_escape(&s.identity_url), html_escape(&s.region));
    if !s.dashboard_url.is_empty() {
        let url = html_escape(&s.dashboard_url);
        out.push_str(&format!("Dashboard (Horizon): <a href=\"{url}\">{url}</a>.<br>"));
    }
    out.push_str(&format!(
        "CA certificate SHA-256 fingerprint: <code>{}</code>.<br>Credentials: {}.</p>\n<ul>\n",
        html_escape(&s.ca_fingerprint),
        html_escape(&s.credentials)
    ));
    for (user, what) in &s.users {
        out.push_str(&format!("<li>user <code>{}</code>: {}</li>\n", html_escape(user), html_escape(what)));
    }
    out.push_str("</ul>\n");
    out
}

/// The box's CA certificate, beside the journal (`/var/lib/ciab/pki/ca.crt`).
/// Public by nature: clients need it to trust the cloud's endpoints.
fn ca_cert_path(journal_path: &Path) -> PathBuf {
    crate::cloud::pki::Pki::new(&journal_path.parent().unwrap_or(Path::new("/")).join(crate::cloud::pki::PKI_SUBDIR)).ca_cert()
}

// ---------------------------------------------------------------------------
// sd_notify

/// Send `state` (e.g. `"READY=1"`, `"STATUS=…"`, or several `\n`-separated)
/// to systemd if `$NOTIFY_SOCKET` is set. `Ok(false)`: not under systemd
/// notify supervision (nothing sent).
pub fn sd_notify(state: &str) -> io::Result<bool> {
    match std::env::var_os("NOTIFY_SOCKET") {
        Some(socket) if !socket.is_empty() => sd_notify_to(&socket, state).map(|()| true),
        _ => Ok(false),
    }
}

/// Send one notification datagram to `socket`: a filesystem path (`/run/…`)
/// or a Linux abstract name written `@name`.
pub fn sd_notify_to(socket: &OsStr, state: &str) -> io::Result<()> {
    let bytes = socket.as_bytes();
    let sock = UnixDatagram::unbound()?;
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        let addr = UnixSocketAddr::from_abstract_name(name)?;
        sock.send_to_addr(state.as_bytes(), &addr)?
    } else if bytes.starts_with(b"/") {
        sock.send_to(state.as_bytes(), Path::new(socket))?
    } else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "unsupported NOTIFY_SOCKET address {:?} (expected /path or @abstract)",
                socket
            ),
        ));
    };
    if sent != state.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "short sd_notify datagram",
        ));
    }
    Ok(())
}

/// `STATUS=<text>` with the text made single-line, as systemd expects.
pub fn status_message(text: &str) -> String {
    format!("STATUS={}", one_line(text))
}

/// A [`Reporter`] that mirrors progress into systemd's `STATUS=` and, if
/// `ready_when_done`, sends `READY=1` once the run completes successfully
/// (so units ordered after `ciab-firstboot.service` wait for provisioning).
/// Send errors never stop first boot; the last one is kept for inspection.
pub struct SdNotifyReporter {
    socket: Option<std::ffi::OsString>,
    pub ready_when_done: bool,
    pub last_error: Option<io::Error>,
}

impl SdNotifyReporter {
    /// Uses `$NOTIFY_SOCKET`; a no-op reporter when it is unset.
    pub fn from_env(ready_when_done: bool) -> Self {
        let socket = std::env::var_os("NOTIFY_SOCKET").filter(|s| !s.is_empty());
        SdNotifyReporter {
            socket,
            ready_when_done,
            last_error: None,
        }
    }

    pub fn to_socket(socket: impl Into<std::ffi::OsString>, ready_when_done: bool) -> Self {
        SdNotifyReporter {
            socket: Some(socket.into()),
            ready_when_done,
            last_error: None,
        }
    }

    fn send(&mut self, state: &str) {
        if let Some(socket) = &self.socket {
            if let Err(e) = sd_notify_to(socket, state) {
                self.last_error = Some(e);
            }
        }
    }
}

impl Reporter for SdNotifyReporter {
    fn on_step_start(&mut self, index: usize, total: usize, step: &StepInfo) {
        self.send(&status_message(&format!(
            "[{index}/{total}] {}: {}",
            step.name, step.title
        )));
    }
    fn on_step_end(
        &mut self,
        index: usize,
        total: usize,
        step: &StepInfo,
        outcome: &StepOutcome,
        _duration: Duration,
    ) {
        if let StepOutcome::Failed { error, .. } = outcome {
            self.send(&status_message(&format!(
                "[{index}/{total}] {} FAILED: {error}",
                step.name
            )));
        }
    }
    fn on_retry(&mut self, index: usize, total: usize, step: &StepInfo, retry: &RetryInfo) {
        self.send(&status_message(&format!(
            "[{index}/{total}] {}: attempt {}/{} failed, retrying in {}: {}",
            step.name,
            retry.attempt,
            retry.max_attempts,
            format_duration(retry.delay),
            retry.error
        )));
    }
    fn on_run_end(&mut self, outcome: &RunOutcome) {
        match outcome {
            RunOutcome::Done if self.ready_when_done => self.send(&format!(
                "READY=1\n{}",
                status_message("first boot complete")
            )),
            RunOutcome::Done => self.send(&status_message("first boot complete")),
            RunOutcome::Failed { step, error } => self.send(&status_message(&format!(
                "first boot FAILED at {step}: {error}"
            ))),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::engine::journal::{OverallState, StepRecord};
    use std::sync::atomic::AtomicU64;

    fn sample() -> Journal {
        let mut j = Journal::new();
        j.boot_count = 2;
        j.state = OverallState::Failed;
        j.first_started_at = Some(1000.0);
        let mut a = StepRecord::new("plan", "compute the plan");
        a.state = StepState::Done;
        a.attempts = 1;
        a.duration = Some(0.2);
        let mut b = StepRecord::new("storage", "claim the disk");
        b.state = StepState::Failed;
        b.attempts = 3;
        b.duration = Some(7.0);
        b.last_error = Some("apply(): <script>alert(\"x\")</script> & co\nline 2".into());
        let mut c = StepRecord::new("network", "bring up links");
        c.state = StepState::Running;
        c.attempts = 1;
        c.started_at = Some(1010.0);
        j.steps = vec![a, b, c, StepRecord::new("site-config", "apply site config")];
        j.add_note("step network was interrupted");
        j
    }

    #[test]
    fn table_has_one_row_a_step() {
        let t = render_table_at(&sample(), 1012.5);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "first boot: failed (1/4 steps done, run 2)");
        assert_eq!(lines[1], "#  STEP         STATE    ATTEMPTS  TIME  ERROR");
        assert_eq!(lines[2], "1  plan         done     1         0.2s");
        assert_eq!(
            lines[3],
            "2  storage      failed   3         7.0s  apply(): <script>alert(\"x\")</script> & co / line 2"
        );
        assert_eq!(lines[4], "3  network      running  1         2.5s");
        assert_eq!(lines[5], "4  site-config  pending  0         -");
        assert_eq!(lines[6], "note: step network was interrupted");
        assert_eq!(lines.len(), 7);
    }

    #[test]
    fn json_round_trips() {
        let j = sample();
        let back: Journal = serde_json::from_str(&to_json(&j)).unwrap();
        assert_eq!(back, j);
    }

    #[test]
    fn html_escapes_and_shows_everything() {
        let page = render_html(Some(&sample()), 1012.5);
        for needle in [
            "<meta http-equiv=\"refresh\" content=\"2\">",
            "plan",
            "storage",
            "network",
            "site-config",
            "claim the disk",
            ">done<",
            ">failed<",
            ">running<",
            ">pending<",
            "2.5s",
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; co\nline 2",
            "step network was interrupted",
            "stopped at step <b>storage</b>",
        ] {
            assert!(page.contains(needle), "missing {needle:?} in\n{page}");
        }
        assert!(!page.contains("<script"), "unescaped script tag:\n{page}");
        assert!(!page.contains("src="), "no external assets");
        assert!(!page.contains("href=\"http"), "no external links");
        assert_eq!(html_escape("a'b"), "a&#39;b");
        let empty = render_html(None, 0.0);
        assert!(empty.contains("has not started"));
    }

    // --- HTTP -------------------------------------------------------------

    struct Reply {
        status: u16,
        headers: String,
        body: Vec<u8>,
    }

    fn request(addr: SocketAddr, raw: &str) -> Reply {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(raw.as_bytes()).unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).unwrap();
        let end = find_head_end(&buf).unwrap();
        let headers = String::from_utf8(buf[..end].to_vec()).unwrap();
        let status = headers.split_whitespace().nth(1).unwrap().parse().unwrap();
        Reply {
            status,
            headers,
            body: buf[end + 4..].to_vec(),
        }
    }

    fn get(addr: SocketAddr, path: &str) -> Reply {
        request(addr, &format!("GET {path} HTTP/1.1\r\nHost: box\r\n\r\n"))
    }

    fn server_with_sample() -> (tempfile::TempDir, Journal, StatusServer) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("firstboot.json");
        let mut j = sample();
        j.save(&path).unwrap();
        let server = StatusServer::start("127.0.0.1:0", &path).unwrap();
        (dir, j, server)
    }

    #[test]
    fn serves_status_json() {
        let (_dir, j, server) = server_with_sample();
        let r = get(server.local_addr(), "/status.json?x=1");
        assert_eq!(r.status, 200);
        assert!(
            r.headers.contains("Content-Type: application/json\r\n"),
            "{}",
            r.headers
        );
        assert!(r
            .headers
            .contains(&format!("Content-Length: {}\r\n", r.body.len())));
        let back: Journal = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(back, j);
    }

    #[test]
    fn offers_the_ca_and_the_cloud_summary_once_they_exist() {
        let (dir, _j, server) = server_with_sample();
        let addr = server.local_addr();
        assert_eq!(get(addr, "/ca.crt").status, 404);
        let page = String::from_utf8(get(addr, "/").body).unwrap();
        assert!(!page.contains("ca.crt") && !page.contains("id=\"cloud\""));
        std::fs::create_dir_all(dir.path().join("pki")).unwrap();
        std::fs::write(dir.path().join("pki/ca.crt"), "-----BEGIN CERTIFICATE-----\nMII\n-----END CERTIFICATE-----\n").unwrap();
        let summary = crate::cloud::identity::CloudSummary {
            identity_url: "https://localhost:8443/identity".into(),
            dashboard_url: "https://localhost:8443/horizon/".into(),
            region: "RegionOne".into(),
            ca_fingerprint: "AB:CD".into(),
            users: vec![("demo".into(), "member of <demo>".into())],
            credentials: "/root/.config/openstack/clouds.yaml on the box (root only)".into(),
        };
        std::fs::write(dir.path().join(crate::cloud::identity::CLOUD_SUMMARY), serde_json::to_vec(&summary).unwrap()).unwrap();
        let r = get(addr, "/ca.crt");
        assert_eq!(r.status, 200);
        assert!(String::from_utf8(r.body).unwrap().starts_with("-----BEGIN CERTIFICATE-----"));
        let page = String::from_utf8(get(addr, "/").body).unwrap();
        assert!(page.contains("<a href=\"/ca.crt\">ca.crt</a>"), "{page}");
        assert!(page.contains("<code>https://localhost:8443/identity</code>") && page.contains("<code>AB:CD</code>"), "{page}");
        assert!(page.contains("member of &lt;demo&gt;"), "escaped: {page}");
        assert!(page.contains("Dashboard (Horizon): <a href=\"https://localhost:8443/horizon/\">"), "{page}");
    }

    #[test]
    fn serves_html_page_with_escaping() {
        let (_dir, _j, server) = server_with_sample();
        let r = get(server.local_addr(), "/");
        assert_eq!(r.status, 200);
        assert!(r.headers.contains("Content-Type: text/html; charset=utf-8"));
        let page = String::from_utf8(r.body).unwrap();
        for needle in [
            "plan",
            "storage",
            "network",
            ">failed<",
            ">done<",
            "&lt;script&gt;alert",
        ] {
            assert!(page.contains(needle), "missing {needle:?}");
        }
        assert!(!page.contains("<script"));
    }

    #[test]
    fn not_found_head_and_bad_methods() {
        let (_dir, _j, server) = server_with_sample();
        let addr = server.local_addr();
        let r = get(addr, "/etc/passwd");
        assert_eq!(r.status, 404);
        assert_eq!(r.body, b"Not Found\n");

        let r = request(addr, "HEAD /status.json HTTP/1.1\r\nHost: box\r\n\r\n");
        assert_eq!(r.status, 200);
        assert!(r.body.is_empty());
        let full = get(addr, "/status.json");
        assert!(r
            .headers
            .contains(&format!("Content-Length: {}\r\n", full.body.len())));

        let r = request(addr, "POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(r.status, 405);
        assert!(r.headers.contains("Allow: GET, HEAD"));

        let r = request(addr, "garbage\r\n\r\n");
        assert_eq!(r.status, 400);

        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD + 10));
        assert_eq!(request(addr, &big).status, 431);
    }

    #[test]
    fn missing_and_unreadable_journal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("firstboot.json");
        let server = StatusServer::start("127.0.0.1:0", &path).unwrap();
        let addr = server.local_addr();
        assert_eq!(get(addr, "/status.json").status, 503);
        let r = get(addr, "/");
        assert_eq!(r.status, 200);
        assert!(String::from_utf8(r.body)
            .unwrap()
            .contains("has not started"));

        std::fs::write(&path, b"<not json>").unwrap();
        let r = get(addr, "/status.json");
        assert_eq!(r.status, 500);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert!(v["error"].as_str().unwrap().contains("parsing"));
        let r = get(addr, "/");
        assert_eq!(r.status, 500);
        assert!(!String::from_utf8(r.body).unwrap().contains("<not json>"));
        // The server never "recovers" the file: that is the engine's job.
        assert_eq!(std::fs::read(&path).unwrap(), b"<not json>");
    }

    #[test]
    fn reflects_journal_updates_without_restart() {
        let (dir, mut j, server) = server_with_sample();
        j.state = OverallState::Done;
        j.save(&dir.path().join("firstboot.json")).unwrap();
        let back: Journal =
            serde_json::from_slice(&get(server.local_addr(), "/status.json").body).unwrap();
        assert_eq!(back.state, OverallState::Done);
    }

    #[test]
    fn silent_client_does_not_block_others() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("firstboot.json");
        sample().save(&path).unwrap();
        let server = StatusServer::start_with(
            "127.0.0.1:0",
            &path,
            ServerConfig {
                io_timeout: Duration::from_secs(30),
                ..ServerConfig::default()
            },
        )
        .unwrap();
        let addr = server.local_addr();
        let _silent = TcpStream::connect(addr).unwrap();
        let mut trickle = TcpStream::connect(addr).unwrap();
        trickle.write_all(b"GET / HT").unwrap();
        let t = Instant::now();
        let r = get(addr, "/status.json");
        assert_eq!(r.status, 200);
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "took {:?}",
            t.elapsed()
        );
    }

    #[test]
    fn slow_client_times_out_with_408() {
        let dir = tempfile::tempdir().unwrap();
        let server = StatusServer::start_with(
            "127.0.0.1:0",
            dir.path().join("firstboot.json"),
            ServerConfig {
                io_timeout: Duration::from_millis(200),
                ..ServerConfig::default()
            },
        )
        .unwrap();
        let mut s = TcpStream::connect(server.local_addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /").unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).unwrap();
        assert!(
            buf.starts_with(b"HTTP/1.1 408 "),
            "{:?}",
            String::from_utf8_lossy(&buf)
        );
    }

    #[test]
    fn connection_cap_answers_503() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("firstboot.json");
        sample().save(&path).unwrap();
        let server = StatusServer::start_with(
            "127.0.0.1:0",
            &path,
            ServerConfig {
                max_connections: 2,
                io_timeout: Duration::from_secs(30),
                ..ServerConfig::default()
            },
        )
        .unwrap();
        let addr = server.local_addr();
        let _a = TcpStream::connect(addr).unwrap();
        let _b = TcpStream::connect(addr).unwrap();
        // Let the accept loop pick both up before the third arrives.
        let t = Instant::now();
        let mut r = get(addr, "/status.json");
        while r.status != 503 && t.elapsed() < Duration::from_secs(5) {
            // Only possible if the idle ones were not yet accepted.
            std::thread::sleep(Duration::from_millis(50));
            r = get(addr, "/status.json");
        }
        assert_eq!(r.status, 503);
        drop(_a);
        // Once a slot frees up, requests are served again.
        let t = Instant::now();
        loop {
            let r = get(addr, "/status.json");
            if r.status == 200 {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(5), "slot never freed");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn dropping_the_handle_stops_promptly_even_with_idle_clients() {
        let dir = tempfile::tempdir().unwrap();
        let server = StatusServer::start_with(
            "127.0.0.1:0",
            dir.path().join("firstboot.json"),
            ServerConfig {
                io_timeout: Duration::from_secs(60),
                ..ServerConfig::default()
            },
        )
        .unwrap();
        let addr = server.local_addr();
        let mut idle = TcpStream::connect(addr).unwrap();
        assert_eq!(get(addr, "/").status, 200); // idle one is surely accepted now
        let t = Instant::now();
        drop(server);
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "drop took {:?}",
            t.elapsed()
        );
        assert!(
            TcpStream::connect(addr).is_err(),
            "listener should be closed"
        );
        // The idle client sees its connection closed.
        idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = Vec::new();
        assert_eq!(idle.read_to_end(&mut buf).unwrap_or(0), 0);
    }

    // --- sd_notify ----------------------------------------------------------

    fn unique_name() -> String {
        static N: AtomicU64 = AtomicU64::new(0);
        format!(
            "ciab-test-notify-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        )
    }

    fn recv(sock: &UnixDatagram) -> String {
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn notify_to_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        sd_notify_to(path.as_os_str(), "READY=1\nSTATUS=hello").unwrap();
        assert_eq!(recv(&listener), "READY=1\nSTATUS=hello");
    }

    #[test]
    fn notify_to_abstract_socket() {
        let name = unique_name();
        let addr = UnixSocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        sd_notify_to(OsStr::new(&format!("@{name}")), "READY=1").unwrap();
        assert_eq!(recv(&listener), "READY=1");
    }

    const NOTIFY_CHILD: &str = "CIAB_TEST_NOTIFY_CHILD";

    /// Child half of `sd_notify_reads_notify_socket_from_env`: the env var is
    /// set only in the child process, so no test mutates its own environment.
    #[test]
    fn sd_notify_env_child() {
        if std::env::var_os(NOTIFY_CHILD).is_none() {
            return;
        }
        let result = sd_notify("READY=1\nSTATUS=from env");
        println!("CHILD-RESULT {:?}", result.map_err(|e| e.kind()));
    }

    fn run_notify_child(notify_socket: Option<&str>) -> String {
        let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
        cmd.args([
            "--exact",
            "status::tests::sd_notify_env_child",
            "--test-threads=1",
            "--nocapture",
        ])
        .env(NOTIFY_CHILD, "1")
        .stderr(std::process::Stdio::null());
        match notify_socket {
            Some(s) => cmd.env("NOTIFY_SOCKET", s),
            None => cmd.env_remove("NOTIFY_SOCKET"),
        };
        let out = cmd.output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .find_map(|l| l.split("CHILD-RESULT ").nth(1).map(str::to_string))
            .unwrap()
    }

    #[test]
    fn sd_notify_reads_notify_socket_from_env() {
        let name = unique_name();
        let addr = UnixSocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        assert_eq!(run_notify_child(Some(&format!("@{name}"))), "Ok(true)");
        assert_eq!(recv(&listener), "READY=1\nSTATUS=from env");
        // Not under systemd: nothing sent, not an error.
        assert_eq!(run_notify_child(None), "Ok(false)");
    }

    #[test]
    fn notify_errors() {
        assert_eq!(
            sd_notify_to(OsStr::new("vsock:2:1234"), "READY=1")
                .unwrap_err()
                .kind(),
            io::ErrorKind::InvalidInput
        );
        let dir = tempfile::tempdir().unwrap();
        assert!(sd_notify_to(dir.path().join("nobody").as_os_str(), "READY=1").is_err());
        assert_eq!(status_message("a\nb"), "STATUS=a / b");
    }

    #[test]
    fn notify_reporter_sends_progress_and_ready() {
        let name = unique_name();
        let addr = UnixSocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        let mut r = SdNotifyReporter::to_socket(format!("@{name}"), true);
        let info = StepInfo {
            name: "storage",
            title: "claim the disk",
        };
        r.on_step_start(5, 7, &info);
        assert_eq!(recv(&listener), "STATUS=[5/7] storage: claim the disk");
        r.on_retry(
            5,
            7,
            &info,
            &RetryInfo {
                attempt: 1,
                max_attempts: 3,
                error: "busy".into(),
                delay: Duration::from_secs(1),
            },
        );
        assert_eq!(
            recv(&listener),
            "STATUS=[5/7] storage: attempt 1/3 failed, retrying in 1.0s: busy"
        );
        r.on_step_end(
            5,
            7,
            &info,
            &StepOutcome::Failed {
                attempts: 3,
                error: "x\ny".into(),
            },
            Duration::ZERO,
        );
        assert_eq!(recv(&listener), "STATUS=[5/7] storage FAILED: x / y");
        r.on_run_end(&RunOutcome::Done);
        assert_eq!(recv(&listener), "READY=1\nSTATUS=first boot complete");
        assert!(r.last_error.is_none());
    }
}
