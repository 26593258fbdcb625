//! The box's one HTTP client, for services on its own loopback address: the
//! OpenStack APIs (`cloud::rest`) and the offline registry (`registry`).
//! Built on `ureq` without a TLS stack: this traffic is plain HTTP to
//! 127.0.0.1, and TLS is the front end's business, for clients off the box.

use anyhow::{Context, Result};
use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

/// A client with its own timeouts; callers keep one in a `static`.
pub struct Client {
    agent: ureq::Agent,
}

/// An answer, whatever its status: headers with lowercased names, the whole
/// body (de-chunked).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    /// The first header called `name`, in any case.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

impl Client {
    /// `connect` bounds connecting; `read` bounds each read of the answer,
    /// a silence rather than the whole exchange, so a slow upload or a long
    /// answer is not cut off while data flows.
    pub fn new(connect: Duration, read: Duration) -> Client {
        let config = ureq::Agent::config_builder()
            // A 404 or a 409 is an answer the caller reasons about (`expect`,
            // `registry::probe`), not a failed call.
            .http_status_as_error(false)
            // Loopback only: an `http_proxy` in the environment must not
            // send the box's own API calls elsewhere.
            .proxy(None)
            // A redirect is an answer too; nothing on loopback should send one.
            .max_redirects(0)
            // One connection per request, as the service has always done: a
            // pooled connection an API server has closed meanwhile would fail
            // a POST that cannot be retried safely.
            .max_idle_connections(0)
            .max_idle_connections_per_host(0)
            .user_agent("ciab-firstboot")
            .timeout_connect(Some(connect))
            .timeout_per_read(Some(read))
            .build();
        Client { agent: config.new_agent() }
    }

    /// One request to `http://{addr}{path}` with `headers` and `body`, sent
    /// with its Content-Length (0 when empty). Errors name the method and URL.
    pub fn send(&self, method: &str, addr: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<Answer> {
        self.exchange(method, addr, path, headers, body)
    }

    /// Like [`Client::send`] with `file`'s bytes as the body (an image
    /// upload), streamed rather than held in memory, with the file's size as
    /// Content-Length.
    pub fn send_file(&self, method: &str, addr: &str, path: &str, headers: &[(&str, &str)], file: &Path) -> Result<Answer> {
        let f = File::open(file).with_context(|| format!("opening {}", file.display()))?;
        let len = f.metadata().with_context(|| format!("reading the size of {}", file.display()))?.len();
        let mut body = Exactly { inner: f, left: len, len };
        let length = len.to_string();
        let mut headers = headers.to_vec();
        headers.push(("Content-Length", &length));
        self.exchange(method, addr, path, &headers, ureq::SendBody::from_reader(&mut body))
    }

    fn exchange(&self, method: &str, addr: &str, path: &str, headers: &[(&str, &str)], body: impl ureq::AsSendBody) -> Result<Answer> {
        let url = format!("http://{addr}{path}");
        let what = || format!("{method} {url}");
        let mut request = ureq::http::Request::builder().method(method).uri(&url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(body).with_context(what)?;
        let (head, mut answer) = self.agent.run(request).with_context(what)?.into_parts();
        let mut body = Vec::new();
        // Read to the end, without `read_to_vec`'s 10 MB cap: these are our
        // own services, and a listing is as long as the cloud is large.
        answer.as_reader().read_to_end(&mut body).with_context(what)?;
        let headers = head.headers.iter().map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned())).collect();
        Ok(Answer { status: head.status.as_u16(), headers, body })
    }
}

/// The first `len` bytes of a file, failing if it ends sooner: ureq would
/// wait forever for the rest of a Content-Length body whose source has
/// shrunk.
struct Exactly {
    inner: File,
    left: u64,
    len: u64,
}

impl Read for Exactly {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, format!("the file ended after {} of {} bytes", self.len - self.left, self.len)));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_ends_early_is_an_error_not_a_wait() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"12345").unwrap();
        let mut r = Exactly { inner: File::open(&path).unwrap(), left: 8, len: 8 };
        let mut got = Vec::new();
        let err = r.read_to_end(&mut got).unwrap_err();
        assert_eq!(err.to_string(), "the file ended after 5 of 8 bytes");
        assert_eq!(got, b"12345");
        let mut r = Exactly { inner: File::open(&path).unwrap(), left: 3, len: 3 };
        got.clear();
        r.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"123");
    }
}
