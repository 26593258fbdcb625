//! JSON to the OpenStack APIs on loopback, through the box's one HTTP client
//! (`crate::http`). First boot creates the cloud's resources through their
//! REST APIs with one token, instead of one `openstack` CLI process per
//! resource (each 33–46 s of Python start-up under TCG).

use crate::http::{Answer, Client};
use anyhow::{bail, Result};
use std::sync::LazyLock;
use std::time::Duration;

/// 5 s to connect; 300 s for each read, because under TCG a Python API may
/// take its time with a first request.
static CLIENT: LazyLock<Client> = LazyLock::new(|| Client::new(Duration::from_secs(5), Duration::from_secs(300)));

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
    Ok(json_answer(CLIENT.send(method, addr, path, &headers(token, content_type), payload.as_bytes())?))
}

/// A PUT of `file`'s bytes (an image upload), streamed, not held in memory.
pub fn upload(addr: &str, path: &str, token: &str, file: &std::path::Path) -> Result<Response> {
    Ok(json_answer(CLIENT.send_file("PUT", addr, path, &headers(Some(token), Some("application/octet-stream")), file)?))
}

fn headers<'a>(token: Option<&'a str>, content_type: Option<&'a str>) -> Vec<(&'static str, &'a str)> {
    let mut h = vec![("Accept", "application/json")];
    h.extend(content_type.map(|t| ("Content-Type", t)));
    h.extend(token.map(|t| ("X-Auth-Token", t)));
    h
}

/// The body as JSON; nothing (or only whitespace) is `Null`, and a body that
/// is not JSON is kept as a string, so `expect` can quote what the API said.
fn json_answer(a: Answer) -> Response {
    let body = if a.body.iter().all(u8::is_ascii_whitespace) {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&a.body).unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&a.body).into_owned()))
    };
    Response { status: a.status, headers: a.headers, body }
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
    use std::io::{Read, Write};
    use std::net::TcpListener;

    /// Serves one canned answer and hands back the request it got.
    fn serve_once(answer: String) -> (String, std::thread::JoinHandle<Vec<u8>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let h = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            // The whole request: head, then Content-Length bytes of body
            // (header names in any case, as HTTP allows).
            loop {
                let n = s.read(&mut buf).unwrap();
                got.extend_from_slice(&buf[..n]);
                if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                    let len: usize = head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
                    if got.len() >= end + 4 + len {
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            s.write_all(answer.as_bytes()).unwrap();
            got
        });
        (addr, h)
    }

    /// A request as received: its head with lowercased header names, and its body.
    fn split(sent: &[u8]) -> (String, Vec<u8>) {
        let end = sent.windows(4).position(|w| w == b"\r\n\r\n").expect("a whole request head");
        let head = String::from_utf8_lossy(&sent[..end]);
        let mut lines = head.split("\r\n");
        let mut out = format!("{}\r\n", lines.next().unwrap_or(""));
        for l in lines {
            let (k, v) = l.split_once(':').unwrap_or((l, ""));
            out.push_str(&format!("{}: {}\r\n", k.to_ascii_lowercase(), v.trim()));
        }
        (out, sent[end + 4..].to_vec())
    }

    #[test]
    fn posts_json_with_the_token_and_reads_headers_and_body() {
        let (addr, h) = serve_once("HTTP/1.1 201 Created\r\nX-Subject-Token: gAAA\r\nContent-Type: application/json\r\n\r\n{\"token\": {\"id\": 1}}".into());
        let r = request(&addr, "POST", "/v3/auth/tokens", Some("tok"), Some(&serde_json::json!({"a": 1}))).unwrap();
        let (head, body) = split(&h.join().unwrap());
        assert!(head.starts_with("POST /v3/auth/tokens HTTP/1.1\r\n"), "{head}");
        for line in ["x-auth-token: tok\r\n", "content-length: 7\r\n", "content-type: application/json\r\n", "accept: application/json\r\n"] {
            assert!(head.contains(line), "{line:?} missing from {head}");
        }
        assert_eq!(body, b"{\"a\":1}");
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
    fn a_server_error_is_an_answer_and_a_non_json_body_a_string() {
        let (addr, h) = serve_once("HTTP/1.1 500 Internal Server Error\r\nContent-Length: 9\r\n\r\nit broke\n".into());
        let r = request(&addr, "DELETE", "/v2/images/abc", Some("tok"), None).unwrap();
        let (head, body) = split(&h.join().unwrap());
        assert!(head.contains("content-length: 0\r\n") && body.is_empty(), "{head}");
        assert_eq!(r.status, 500);
        assert_eq!(r.body, serde_json::Value::String("it broke\n".into()));
        let err = format!("{:#}", expect(r, "deleting image abc", &[204]).unwrap_err());
        assert_eq!(err, "deleting image abc: HTTP 500 \"it broke\\n\"");
    }

    #[test]
    fn an_empty_body_is_null() {
        let (addr, h) = serve_once("HTTP/1.1 204 No Content\r\n\r\n".into());
        let r = request(&addr, "DELETE", "/x", None, None).unwrap();
        h.join().unwrap();
        assert_eq!((r.status, r.body), (204, serde_json::Value::Null));
        let (addr, h) = serve_once("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n \n".into());
        assert_eq!(request(&addr, "GET", "/x", None, None).unwrap().body, serde_json::Value::Null);
        h.join().unwrap();
    }

    #[test]
    fn uploads_stream_the_file_with_its_length() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("disk.raw");
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
        std::fs::write(&file, &data).unwrap();
        let (addr, h) = serve_once("HTTP/1.1 204 No Content\r\n\r\n".into());
        let r = upload(&addr, "/v2/images/abc/file", "tok", &file).unwrap();
        assert_eq!(r.status, 204);
        let (head, body) = split(&h.join().unwrap());
        assert!(head.starts_with("PUT /v2/images/abc/file HTTP/1.1\r\n"), "{head}");
        assert!(head.contains("content-length: 1000000\r\n") && head.contains("content-type: application/octet-stream\r\n"), "{head}");
        assert!(!head.contains("transfer-encoding"), "{head}");
        assert!(body == data, "the file's exact bytes, nothing more");
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
