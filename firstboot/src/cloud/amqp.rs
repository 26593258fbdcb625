//! Just enough AMQP 0-9-1 to log in and open a virtual host: it proves the
//! broker is up and that a user's password and permissions are the ones
//! first boot defined, without `rabbitmqctl` (a fresh Erlang VM per call,
//! ~15 s under TCG).

use anyhow::{Context, Result, bail};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// What the broker said to a login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Login {
    /// Authenticated and the virtual host opened.
    Accepted,
    /// Turned away (bad credentials, or no access to the virtual host).
    Refused(String),
}

const FRAME_METHOD: u8 = 1;
const FRAME_END: u8 = 0xCE;
const CONNECTION: u16 = 10;
const START: u16 = 10;
const START_OK: u16 = 11;
const TUNE: u16 = 30;
const TUNE_OK: u16 = 31;
const OPEN: u16 = 40;
const OPEN_OK: u16 = 41;
const CLOSE: u16 = 50;
const CLOSE_OK: u16 = 51;

fn shortstr(out: &mut Vec<u8>, s: &str) {
    out.push(u8::try_from(s.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(&s.as_bytes()[..s.len().min(255)]);
}

fn longstr(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&u32::try_from(b.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(b);
}

/// One method frame on channel 0.
fn method(method_id: u16, args: &[u8]) -> Vec<u8> {
    let mut payload = CONNECTION.to_be_bytes().to_vec();
    payload.extend_from_slice(&method_id.to_be_bytes());
    payload.extend_from_slice(args);
    let mut frame = vec![FRAME_METHOD, 0, 0];
    frame.extend_from_slice(&u32::try_from(payload.len()).unwrap_or(u32::MAX).to_be_bytes());
    frame.extend_from_slice(&payload);
    frame.push(FRAME_END);
    frame
}

/// The next connection-class method: its id and arguments; `None` when the
/// broker closed the socket.
fn read_method(s: &mut TcpStream) -> Result<Option<(u16, Vec<u8>)>> {
    loop {
        let mut head = [0u8; 7];
        match s.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset) => return Ok(None),
            Err(e) => return Err(e).context("reading from the broker"),
        }
        let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
        if size > 1 << 20 {
            bail!("the broker sent a frame of {size} bytes: not AMQP 0-9-1?");
        }
        let mut payload = vec![0u8; size + 1];
        s.read_exact(&mut payload).context("reading a frame from the broker")?;
        if payload[size] != FRAME_END {
            bail!("malformed AMQP frame (no frame-end octet)");
        }
        // Heartbeats and other channels do not concern a login.
        if head[0] != FRAME_METHOD || size < 4 {
            continue;
        }
        let class = u16::from_be_bytes([payload[0], payload[1]]);
        let id = u16::from_be_bytes([payload[2], payload[3]]);
        if class == CONNECTION {
            return Ok(Some((id, payload[4..size].to_vec())));
        }
    }
}

/// `Connection.Close`'s reply code and text.
fn close_reason(args: &[u8]) -> String {
    if args.len() < 3 {
        return "connection closed".into();
    }
    let code = u16::from_be_bytes([args[0], args[1]]);
    let len = args[2] as usize;
    let text = String::from_utf8_lossy(args.get(3..3 + len).unwrap_or_default());
    format!("{code} {text}")
}

/// Logs in to the broker at `addr` as `user` and opens `vhost`. Err only
/// when the broker cannot be reached or speaks something else.
pub fn try_login(addr: &str, user: &str, password: &str, vhost: &str, timeout: Duration) -> Result<Login> {
    let sock = addr.parse().with_context(|| format!("{addr} is not host:port"))?;
    let mut s = TcpStream::connect_timeout(&sock, timeout).with_context(|| format!("connecting to the broker at {addr}"))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(b"AMQP\x00\x00\x09\x01")?;
    match read_method(&mut s)? {
        Some((START, _)) => {}
        Some((id, _)) => bail!("the broker opened with method 10.{id}, not Connection.Start"),
        None => bail!("the broker at {addr} closed the connection before Connection.Start"),
    }
    let mut args = 0u32.to_be_bytes().to_vec(); // no client properties
    shortstr(&mut args, "PLAIN");
    longstr(&mut args, format!("\0{user}\0{password}").as_bytes());
    shortstr(&mut args, "en_US");
    s.write_all(&method(START_OK, &args))?;
    let tune = match read_method(&mut s)? {
        Some((TUNE, args)) if args.len() >= 8 => args,
        Some((CLOSE, args)) => return Ok(Login::Refused(close_reason(&args))),
        Some((id, _)) => bail!("unexpected method 10.{id} after Connection.Start-Ok"),
        // RabbitMQ drops the socket on bad credentials unless the client
        // announced the authentication_failure_close capability.
        None => return Ok(Login::Refused("authentication failed (connection closed)".into())),
    };
    // Tune-Ok with the broker's channel-max and frame-max, no heartbeats.
    let mut ok = tune[..6].to_vec();
    ok.extend_from_slice(&0u16.to_be_bytes());
    s.write_all(&method(TUNE_OK, &ok))?;
    let mut open = Vec::new();
    shortstr(&mut open, vhost);
    shortstr(&mut open, "");
    open.push(0);
    s.write_all(&method(OPEN, &open))?;
    let verdict = match read_method(&mut s)? {
        Some((OPEN_OK, _)) => Login::Accepted,
        Some((CLOSE, args)) => return Ok(Login::Refused(close_reason(&args))),
        Some((id, _)) => bail!("unexpected method 10.{id} after Connection.Open"),
        None => return Ok(Login::Refused(format!("the broker closed the connection on opening vhost {vhost}"))),
    };
    let mut close = 200u16.to_be_bytes().to_vec();
    shortstr(&mut close, "ciab login check");
    close.extend_from_slice(&[0, 0, 0, 0]);
    s.write_all(&method(CLOSE, &close))?;
    // Close-Ok is a courtesy: the login already succeeded.
    let _ = read_method(&mut s).map(|m| m.map(|(id, _)| id == CLOSE_OK));
    Ok(verdict)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A broker that plays the server side of the handshake byte by byte
    /// as RabbitMQ does (the real broker is exercised by the IaaS e2e test,
    /// in the guest): checks the credentials it is sent, then accepts,
    /// refuses by closing, or refuses the virtual host.
    fn broker(expect_user: &'static str, vhost_ok: bool) -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut hdr = [0u8; 8];
            s.read_exact(&mut hdr).unwrap();
            assert_eq!(&hdr, b"AMQP\x00\x00\x09\x01");
            let mut start = vec![0, 9];
            start.extend_from_slice(&0u32.to_be_bytes());
            longstr(&mut start, b"PLAIN AMQPLAIN");
            longstr(&mut start, b"en_US");
            s.write_all(&method(START, &start)).unwrap();
            let (id, args) = read_method(&mut s).unwrap().unwrap();
            assert_eq!(id, START_OK);
            let mech_len = args[4] as usize;
            assert_eq!(&args[5..5 + mech_len], b"PLAIN");
            let resp = &args[5 + mech_len + 4..];
            if !resp.starts_with(format!("\0{expect_user}\0right").as_bytes()) {
                return; // drop the socket, as RabbitMQ does
            }
            let mut tune = 2047u16.to_be_bytes().to_vec();
            tune.extend_from_slice(&131072u32.to_be_bytes());
            tune.extend_from_slice(&60u16.to_be_bytes());
            s.write_all(&method(TUNE, &tune)).unwrap();
            let (id, ok) = read_method(&mut s).unwrap().unwrap();
            assert_eq!((id, &ok[..6]), (TUNE_OK, &tune[..6]));
            let (id, open) = read_method(&mut s).unwrap().unwrap();
            assert_eq!((id, open[0] as usize, &open[1..2]), (OPEN, 1, &b"/"[..]));
            if vhost_ok {
                s.write_all(&method(OPEN_OK, &[0])).unwrap();
                let (id, _) = read_method(&mut s).unwrap().unwrap();
                assert_eq!(id, CLOSE);
                s.write_all(&method(CLOSE_OK, &[])).unwrap();
            } else {
                let mut close = 530u16.to_be_bytes().to_vec();
                shortstr(&mut close, "NOT_ALLOWED - vhost / not found");
                close.extend_from_slice(&[0, 10, 0, 40]);
                s.write_all(&method(CLOSE, &close)).unwrap();
            }
        });
        addr
    }

    #[test]
    fn accepted_refused_and_unreachable() {
        let t = Duration::from_secs(5);
        assert_eq!(try_login(&broker("openstack", true), "openstack", "right", "/", t).unwrap(), Login::Accepted);
        assert!(matches!(try_login(&broker("openstack", true), "openstack", "wrong", "/", t).unwrap(), Login::Refused(_)));
        assert_eq!(
            try_login(&broker("openstack", false), "openstack", "right", "/", t).unwrap(),
            Login::Refused("530 NOT_ALLOWED - vhost / not found".into())
        );
        let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
        let err = try_login(&closed, "openstack", "right", "/", t).unwrap_err();
        assert!(format!("{err:#}").contains("connecting to the broker"), "{err:#}");
    }
}
