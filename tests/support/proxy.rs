//! A fault-injecting HTTP/1.1 proxy for IAM on loopback, in front of the emulator. It counts requests per
//! action and user and can add latency, hang, reset connections, or answer with an error of its own.
//! Control it in-process through `Proxy::set`, or over HTTP: `GET /__proxy/set?latency_ms=50&status=503`,
//! `GET /__proxy/counts`, `GET /__proxy/clear`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone, Default)]
pub struct Fault {
    /// Added before forwarding each request.
    pub latency_ms: u64,
    /// Answer with this status (and `body`) instead of forwarding.
    pub status: Option<u16>,
    pub body: String,
    /// Never answer (until the client gives up).
    pub hang: bool,
    /// Close the connection without answering.
    pub reset: bool,
    /// Only apply status/hang/reset to this action (e.g. GetSSHPublicKey); latency applies to all.
    pub only_action: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    fault: Fault,
    counts: BTreeMap<(String, String), u64>,
    /// (service from the SigV4 credential scope, action, access key id) of every request.
    signed: Vec<(String, String, String)>,
    in_flight: u32,
    max_in_flight: u32,
    /// SDK retries (requests with `amz-sdk-request: attempt=N`, N > 1), per (action, user).
    retries: BTreeMap<(String, String), u64>,
}

/// The total over every action of one user's tally.
fn sum_for(tally: &BTreeMap<(String, String), u64>, user: &str) -> u64 {
    tally
        .iter()
        .filter(|((_, u), _)| u == user)
        .map(|(_, n)| n)
        .sum()
}

/// Decrements the in-flight count when a request is done, however it ends.
struct InFlight<'a>(&'a Proxy);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.lock().in_flight -= 1;
    }
}

#[derive(Clone)]
pub struct Proxy {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

pub const THROTTLING: &str = "<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code>\
<Message>Rate exceeded</Message></Error><RequestId>proxy</RequestId></ErrorResponse>";

impl Proxy {
    pub fn start(listen: &str, upstream: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind(listen)?;
        let proxy = Proxy {
            addr: listener.local_addr()?,
            state: Arc::new(Mutex::new(State::default())),
        };
        let p = proxy.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let p = p.clone();
                std::thread::spawn(move || {
                    let _ = p.serve(conn, upstream);
                });
            }
        });
        Ok(proxy)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set(&self, fault: Fault) {
        self.lock().fault = fault;
    }

    pub fn clear(&self) {
        let mut s = self.lock();
        s.fault = Fault::default();
        s.counts.clear();
        s.signed.clear();
        s.retries.clear();
        s.max_in_flight = 0;
    }

    /// SDK retries seen for `user` (not included in [`Proxy::calls_for`]).
    pub fn retries_for(&self, user: &str) -> u64 {
        sum_for(&self.lock().retries, user)
    }

    /// Every `service:Action` seen (e.g. `iam:ListSSHPublicKeys`, `sts:AssumeRole`).
    pub fn actions(&self) -> std::collections::BTreeSet<String> {
        self.lock()
            .signed
            .iter()
            .map(|(svc, a, _)| format!("{svc}:{a}"))
            .collect()
    }

    /// Access key ids that signed requests for `action`.
    pub fn signers(&self, action: &str) -> std::collections::BTreeSet<String> {
        self.lock()
            .signed
            .iter()
            .filter(|(_, a, _)| a == action)
            .map(|(_, _, k)| k.clone())
            .collect()
    }

    /// Most requests in progress at once since the last `clear`.
    pub fn max_in_flight(&self) -> u32 {
        self.lock().max_in_flight
    }

    /// Calls seen for `user` (all actions), faults included: an SDK retry of a call is not another call
    /// (it carries `amz-sdk-request: attempt=N`, N > 1) and is counted in [`Proxy::retries_for`].
    pub fn calls_for(&self, user: &str) -> u64 {
        sum_for(&self.lock().counts, user)
    }

    pub fn calls(&self, action: &str, user: &str) -> u64 {
        self.lock()
            .counts
            .get(&(action.to_string(), user.to_string()))
            .copied()
            .unwrap_or(0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn serve(&self, conn: TcpStream, upstream: SocketAddr) -> std::io::Result<()> {
        conn.set_read_timeout(Some(Duration::from_secs(30)))?;
        conn.set_nodelay(true)?;
        let mut reader = BufReader::new(conn.try_clone()?);
        let mut conn = conn;
        let mut head = String::new();
        let mut request_line = String::new();
        reader.read_line(&mut request_line)?;
        let mut content_length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            if line == "\r\n" || line == "\n" {
                break;
            }
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                content_length = v.trim().parse().unwrap_or(0);
            }
            if lower.starts_with("connection:") {
                continue;
            }
            head.push_str(&line);
        }
        let mut body = vec![0u8; content_length];
        reader.read_exact(&mut body)?;

        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("/")
            .to_string();
        if let Some(ctl) = path.strip_prefix("/__proxy/") {
            let reply = self.control(ctl);
            write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
                reply.len()
            )?;
            return Ok(());
        }

        let form = String::from_utf8_lossy(&body).into_owned();
        let param = |name: &str| -> String {
            form.split('&')
                .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                .map(url_decode)
                .unwrap_or_default()
        };
        let action = param("Action");
        let user = param("UserName");
        // Authorization: AWS4-HMAC-SHA256 Credential=AKID/20261123/us-east-1/iam/aws4_request, ...
        let (key_id, service) = head
            .lines()
            .find_map(|l| l.split_once("Credential=").map(|(_, c)| c.to_string()))
            .map(|c| {
                let parts: Vec<&str> = c.split(['/', ',']).collect();
                (
                    parts.first().copied().unwrap_or("").to_string(),
                    parts.get(3).copied().unwrap_or("").to_string(),
                )
            })
            .unwrap_or_default();
        let attempt: u32 = head
            .lines()
            .find_map(|l| {
                let lower = l.to_ascii_lowercase();
                let v = lower.strip_prefix("amz-sdk-request:")?;
                v.split(';')
                    .find_map(|p| p.trim().strip_prefix("attempt=").map(str::to_string))
            })
            .and_then(|a| a.trim().parse().ok())
            .unwrap_or(1);
        let fault = {
            let mut s = self.lock();
            let tally = if attempt > 1 {
                &mut s.retries
            } else {
                &mut s.counts
            };
            *tally.entry((action.clone(), user)).or_default() += 1;
            s.signed.push((service, action.clone(), key_id));
            s.in_flight += 1;
            s.max_in_flight = s.max_in_flight.max(s.in_flight);
            s.fault.clone()
        };
        let _in_flight = InFlight(self);
        if fault.latency_ms > 0 {
            std::thread::sleep(Duration::from_millis(fault.latency_ms));
        }
        let applies = fault.only_action.as_deref().is_none_or(|a| a == action);
        if applies && fault.hang {
            std::thread::sleep(Duration::from_secs(120));
            return Ok(());
        }
        if applies && fault.reset {
            let _ = conn.shutdown(Shutdown::Both);
            return Ok(());
        }
        if let (true, Some(status)) = (applies, fault.status) {
            write!(
                conn,
                "HTTP/1.1 {status} Fault\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                fault.body.len(),
                fault.body
            )?;
            return Ok(());
        }

        let mut up = TcpStream::connect(upstream)?;
        up.set_read_timeout(Some(Duration::from_secs(30)))?;
        up.set_nodelay(true)?;
        let mut request = format!("{request_line}{head}Connection: close\r\n\r\n").into_bytes();
        request.extend_from_slice(&body);
        up.write_all(&request)?;
        let response = read_response(&mut up)?;
        conn.write_all(&response)?;
        let _ = conn.shutdown(Shutdown::Write);
        Ok(())
    }

    fn control(&self, ctl: &str) -> String {
        let (cmd, query) = ctl.split_once('?').unwrap_or((ctl, ""));
        match cmd {
            "counts" => self
                .lock()
                .counts
                .iter()
                .map(|((a, u), n)| format!("{a} {u} {n}\n"))
                .collect(),
            "clear" => {
                self.clear();
                "ok\n".into()
            }
            "set" => {
                let mut f = Fault::default();
                for kv in query.split('&') {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    match k {
                        "latency_ms" => f.latency_ms = v.parse().unwrap_or(0),
                        "status" => f.status = v.parse().ok(),
                        "throttle" => {
                            f.status = Some(400);
                            f.body = THROTTLING.into();
                        }
                        "hang" => f.hang = true,
                        "reset" => f.reset = true,
                        "action" => f.only_action = Some(v.to_string()),
                        _ => {}
                    }
                }
                self.set(f);
                "ok\n".into()
            }
            _ => "unknown\n".into(),
        }
    }
}

/// Reads one HTTP response: headers, then Content-Length bytes (or to EOF without one), so the proxy
/// does not wait for the upstream to close the connection.
fn read_response(up: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        let n = up.read(&mut chunk)?;
        if n == 0 {
            return Ok(buf);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if let Some(len) = len {
                while buf.len() < end + 4 + len {
                    let n = up.read(&mut chunk)?;
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                return Ok(buf);
            }
        }
    }
}

fn url_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
