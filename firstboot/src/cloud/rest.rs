//! A small JSON-over-HTTP/1.1 client for the APIs on loopback. First boot
//! creates the cloud's resources through their REST APIs with one token,
//! instead of one `openstack` CLI process per resource (each 33–46 s of
//! Python start-up under TCG). Only plain HTTP to 127.0.0.1: TLS is the
//! front end's business, for clients off the box.

use anyhow::{Context, Result, bail};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// An answer: status, headers (lowercased names) and the JSON body, if any.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: serde_json::Value,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == &name.to_ascii_lowercase()).map(|(_, v)| v.as_str())
    }
}

/// One request to `addr` (`127.0.0.1:5000`); `token` goes in X-Auth-Token.
pub fn request(addr: &str, method: &str, path: &str, token: Option<&str>, body: Option<&serde_json::Value>) -> Result<Response> {
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    let content_type = body.map(|_| "application/json");
    exchange(addr, method, path, token, content_type, payload.len() as u64, &mut payload.as_bytes())
}

/// A PUT of `file`'s bytes (an image upload), streamed, not held in memory.
pub fn upload(addr: &str, path: &str, token: &str, file: &std::path::Path) -> Result<Response> {
    let mut f = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let len = f.metadata()?.len();
    exchange(addr, "PUT", path, Some(token), Some("application/octet-stream"), len, &mut f)
}

fn exchange(addr: &str, method: &str, path: &str, token: Option<&str>, content_type: Option<&str>, len: u64, body: &mut dyn Read) -> Result<Response> {
    let what = || format!("{method} http://{addr}{path}");
    let mut s = TcpStream::connect_timeout(&addr.parse().with_context(what)?, Duration::from_secs(5)).with_context(what)?;
    // Under TCG a Python API may take its time with a first request.
    s.set_read_timeout(Some(Duration::from_secs(300)))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\nConnection: close\r\nContent-Length: {len}\r\n");
    if let Some(t) = content_type {
        head.push_str(&format!("Content-Type: {t}\r\n"));
    }
    if let Some(t) = token {
        head.push_str(&format!("X-Auth-Token: {t}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).with_context(what)?;
    let sent = std::io::copy(body, &mut s).with_context(what)?;
    if sent != len {
        bail!("{}: sent {sent} of {len} bytes", what());
    }
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).with_context(what)?;
    parse_response(&raw).with_context(what)
}

fn parse_response(raw: &[u8]) -> Result<Response> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").context("no end of the response head")?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|c| c.parse().ok()).context("no HTTP status")?;
    let headers: Vec<(String, String)> = lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned())).collect();
    let mut body = raw[end + 4..].to_vec();
    if headers.iter().any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked")) {
        body = dechunk(&body)?;
    }
    let body = if body.iter().all(u8::is_ascii_whitespace) { serde_json::Value::Null } else { serde_json::from_slice(&body).unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&body).into_owned())) };
    Ok(Response { status, headers, body })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n").context("chunk size line")?;
        let size = usize::from_str_radix(String::from_utf8_lossy(&data[..line_end]).split(';').next().unwrap_or("").trim(), 16).context("chunk size")?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            bail!("chunk cut short");
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// Fails unless the answer is one of `ok`, naming the call and what the API said.
pub fn expect(r: Response, what: &str, ok: &[u16]) -> Result<Response> {
    if ok.contains(&r.status) {
        return Ok(r);
    }
    let message = r.body["error"]["message"].as_str().map(str::to_owned).unwrap_or_else(|| r.body.to_string());
    bail!("{what}: HTTP {} {}", r.status, message.chars().take(500).collect::<String>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// Serves one canned answer and hands back the request it got.
    fn serve_once(answer: String) -> (String, std::thread::JoinHandle<String>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let h = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            // The whole request: head, then Content-Length bytes of body.
            loop {
                let n = s.read(&mut buf).unwrap();
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got).into_owned();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len: usize = text.lines().find_map(|l| l.strip_prefix("Content-Length: ")).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
                    if got.len() >= end + 4 + len {
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            s.write_all(answer.as_bytes()).unwrap();
            String::from_utf8_lossy(&got).into_owned()
        });
        (addr, h)
    }

    #[test]
    fn posts_json_with_the_token_and_reads_headers_and_body() {
        let (addr, h) = serve_once("HTTP/1.1 201 Created\r\nX-Subject-Token: gAAA\r\nContent-Type: application/json\r\n\r\n{\"token\": {\"id\": 1}}".into());
        let r = request(&addr, "POST", "/v3/auth/tokens", Some("tok"), Some(&serde_json::json!({"a": 1}))).unwrap();
        let sent = h.join().unwrap();
        assert!(sent.starts_with("POST /v3/auth/tokens HTTP/1.1\r\n"), "{sent}");
        assert!(sent.contains("X-Auth-Token: tok\r\n") && sent.contains("Content-Length: 7\r\n") && sent.ends_with("\r\n\r\n{\"a\":1}"), "{sent}");
        assert_eq!(r.status, 201);
        assert_eq!(r.header("X-Subject-Token"), Some("gAAA"));
        assert_eq!(r.body["token"]["id"], 1);
    }

    #[test]
    fn chunked_bodies_and_errors() {
        let body = "{\"error\": {\"message\": \"dup!\"}}";
        let (a, b) = body.split_at(25);
        let chunked = format!("{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n", a.len(), b.len());
        let (addr, h) = serve_once(format!("HTTP/1.1 409 Conflict\r\nTransfer-Encoding: chunked\r\n\r\n{chunked}"));
        let r = request(&addr, "GET", "/x", None, None).unwrap();
        h.join().unwrap();
        assert_eq!(r.body["error"]["message"], "dup!");
        let err = format!("{:#}", expect(r, "creating project demo", &[201]).unwrap_err());
        assert_eq!(err, "creating project demo: HTTP 409 dup!");
    }

    #[test]
    fn uploads_stream_the_file_with_its_length() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("disk.raw");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 95 + 32) as u8).collect();
        std::fs::write(&file, &data).unwrap();
        let (addr, h) = serve_once("HTTP/1.1 204 No Content\r\n\r\n".into());
        let r = upload(&addr, "/v2/images/abc/file", "tok", &file).unwrap();
        assert_eq!(r.status, 204);
        let sent = h.join().unwrap();
        assert!(sent.starts_with("PUT /v2/images/abc/file HTTP/1.1\r\n"), "{}", &sent[..200]);
        assert!(sent.contains("Content-Length: 100000\r\n") && sent.contains("Content-Type: application/octet-stream\r\n"));
        let body_at = sent.find("\r\n\r\n").unwrap() + 4;
        assert_eq!(sent.len() - body_at, 100_000, "the whole file, nothing more");
    }

    #[test]
    fn nothing_listening_names_the_call() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        drop(l);
        let err = format!("{:#}", request(&addr, "GET", "/v3", None, None).unwrap_err());
        assert!(err.starts_with(&format!("GET http://{addr}/v3")), "{err}");
    }
}
