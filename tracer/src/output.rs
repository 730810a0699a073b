//! The one place that renders what bindtrace reports: a human line per event (`text`) or one JSON
//! object per line (`json`).
//!
//! Process names and paths come from other users' processes: in text output every control or
//! non-printable character is shown as `\xNN`, so a crafted `comm` cannot forge lines or colours.
//! JSON output is escaped by serde_json.

use std::{
    fmt::Write as _,
    io::{self, Write},
};

use serde::Serialize;

use crate::{
    diagnose,
    event::{Event, SyscallName, endpoint},
    pipeline::Writer,
};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Human-readable text (`watch`: one entry per event).
    #[default]
    Text,
    /// JSON (`watch`: one object per event and line; the schema is in the README).
    Json,
}

/// Makes untrusted text safe to print on a terminal.
pub fn sanitize(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() || c == '\u{2028}' || c == '\u{2029}' || c == '\u{feff}' {
            for b in c.to_string().bytes() {
                let _ = write!(out, "\\x{b:02x}");
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A notice that is not an event: lost records, for instance.
#[derive(Serialize)]
struct LostNotice<'a> {
    time: &'a str,
    event: &'static str,
    /// Records lost since the previous notice.
    lost: u64,
    /// Records lost since start.
    lost_total: u64,
    reason: &'static str,
}

pub struct Renderer {
    format: OutputFormat,
    out: Box<dyn Write + Send>,
}

impl Renderer {
    pub fn new(format: OutputFormat, out: Box<dyn Write + Send>) -> Self {
        Self { format, out }
    }

    pub fn stdout(format: OutputFormat) -> Self {
        Self::new(format, Box::new(io::stdout()))
    }

    pub fn event(&mut self, ev: &Event) -> io::Result<()> {
        match self.format {
            OutputFormat::Json => {
                serde_json::to_writer(&mut self.out, ev)?;
                self.out.write_all(b"\n")?;
            }
            OutputFormat::Text => {
                let line = text_line(ev);
                self.out.write_all(line.as_bytes())?;
            }
        }
        self.out.flush()
    }

    /// Reports records the kernel could not hand over (ring buffer full).
    pub fn lost(&mut self, time: &str, lost: u64, lost_total: u64) -> io::Result<()> {
        match self.format {
            OutputFormat::Json => {
                let n = LostNotice {
                    time,
                    event: "events_lost",
                    lost,
                    lost_total,
                    reason: "ring buffer full",
                };
                serde_json::to_writer(&mut self.out, &n)?;
                self.out.write_all(b"\n")?;
            }
            OutputFormat::Text => writeln!(
                self.out,
                "{time} LOST {lost} event(s): the ring buffer was full ({lost_total} lost since start)"
            )?,
        }
        self.out.flush()
    }
}

/// `LISTEN tcp 0.0.0.0:8080 nginx[999] uid=0 (live) SO_REUSEADDR` — for text output.
pub fn holder_text(h: &diagnose::Holder) -> String {
    let mut s = format!("{} {} {}", h.state.as_str(), h.protocol, h.local);
    if let Some(d) = h.device_name() {
        let _ = write!(s, " dev={}", sanitize(&d));
    }
    if let Some(r) = h.remote {
        let _ = write!(s, " -> {r}");
    }
    if h.accepted {
        s.push_str(" accepted by");
    }
    let _ = match (&h.comm, h.pid) {
        (Some(c), Some(p)) => write!(s, " {c}[{p}]"),
        (None, Some(p)) => write!(s, " pid {p}"),
        _ => Ok(()),
    };
    if let Some(u) = h.uid {
        let _ = write!(s, " uid={u}");
    }
    if let Some(u) = h.socket_uid {
        let _ = write!(s, " socket_uid={u}");
    }
    // On a node, the pod is what an operator knows a process by.
    if let Some(label) = h.container.label() {
        let _ = write!(s, " {}", sanitize(&label));
    }
    let src = match h.source {
        diagnose::Source::Live => match h.age_ms {
            Some(_) => format!("live, took the port{}", diagnose::age(h)),
            None => "live".to_string(),
        },
        diagnose::Source::History => {
            let alive = match h.owner_alive {
                Some(false) => ", exited",
                Some(true) => ", running",
                None => "",
            };
            let closed = if h.socket_closed {
                ", socket closed before lookup"
            } else {
                ""
            };
            format!("history{}{alive}{closed}", diagnose::age(h))
        }
        diagnose::Source::Startup => {
            let alive = match h.owner_alive {
                Some(false) => ", exited",
                Some(true) => ", running",
                None => "",
            };
            format!("had it open when bindtrace started{alive}")
        }
        // No process has a TIME-WAIT (or an orphaned connection) open: its owner is known only
        // if bindtrace saw the connection made, or open when it started.
        diagnose::Source::Unknown if h.owner_forgotten => "owner unknown: no process has it, \
                                                           and it closed while bindtrace \
                                                           watched, so newer connections most \
                                                           likely evicted its record from the \
                                                           history (raise --history-size)"
            .to_string(),
        diagnose::Source::Unknown if h.inode == 0 => "owner unknown: no process has it, and \
                                                      bindtrace neither saw it made nor found it \
                                                      open when it started"
            .to_string(),
        diagnose::Source::Unknown => "owner unknown: no process found with it open".to_string(),
    };
    let _ = write!(s, " ({src})");
    let opts: Vec<&str> = [
        (h.reuseaddr, "SO_REUSEADDR"),
        (h.reuseport, "SO_REUSEPORT"),
        (h.v6only, "IPV6_V6ONLY"),
    ]
    .iter()
    .filter(|(v, _)| *v == Some(true))
    .map(|(_, n)| *n)
    .collect();
    if !opts.is_empty() {
        s.push(' ');
        s.push_str(&opts.join(","));
    } else if h.reuseaddr.is_none() {
        s.push_str(" options unknown");
    } else {
        s.push_str(" no SO_REUSEADDR/SO_REUSEPORT");
    }
    if !h.shared_with.is_empty() {
        let _ = write!(s, " shared with pids {:?}", h.shared_with);
    }
    if let Some(t) = &h.thread {
        let _ = write!(s, " (thread {})", sanitize(t));
    }
    if let Some(o) = &h.opened_by {
        let gone = if o.alive { "" } else { ", exited" };
        let _ = write!(
            s,
            " (inherited from {}[{}]{gone})",
            sanitize(&o.comm),
            o.pid
        );
    }
    s
}

impl Writer for Renderer {
    fn event(&mut self, ev: &Event) -> io::Result<()> {
        Renderer::event(self, ev)
    }
    fn lost(&mut self, time: &str, lost: u64, lost_total: u64) -> io::Result<()> {
        Renderer::lost(self, time, lost, lost_total)
    }
}

/// A notice on stderr that may be lost: stderr can be the pipe whose reader has gone (`2>&1 |
/// logger`), where `eprintln!` would panic mid-run.
pub fn notice(line: std::fmt::Arguments<'_>) {
    let _ = writeln!(io::stderr(), "{line}");
}

/// The terminal's output beside a durable one (the log file, the metrics): its reader going away
/// — a logger the service manager piped it to, which died — ends only this output, not the run,
/// which goes on for the others. `others` names them, for the one notice on stderr.
pub struct Detachable {
    inner: Renderer,
    others: &'static str,
    gone: bool,
}

impl Detachable {
    pub fn new(inner: Renderer, others: &'static str) -> Self {
        Self {
            inner,
            others,
            gone: false,
        }
    }

    fn write(&mut self, f: impl FnOnce(&mut Renderer) -> io::Result<()>) -> io::Result<()> {
        if self.gone {
            return Ok(());
        }
        match f(&mut self.inner) {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                self.gone = true;
                notice(format_args!(
                    "bindtrace: the output's reader went away; still writing to {}",
                    self.others
                ));
                Ok(())
            }
            r => r,
        }
    }
}

impl Writer for Detachable {
    fn event(&mut self, ev: &Event) -> io::Result<()> {
        self.write(|r| r.event(ev))
    }
    fn lost(&mut self, time: &str, lost: u64, lost_total: u64) -> io::Result<()> {
        self.write(|r| r.lost(time, lost, lost_total))
    }
}

fn options(ev: &Event) -> String {
    if !ev.options_known {
        return "options unknown".to_string();
    }
    let mut v = Vec::new();
    if ev.reuseaddr {
        v.push("SO_REUSEADDR");
    }
    if ev.reuseport {
        v.push("SO_REUSEPORT");
    }
    if ev.v6only == Some(true) {
        v.push("IPV6_V6ONLY");
    }
    if v.is_empty() {
        "no SO_REUSEADDR/SO_REUSEPORT".to_string()
    } else {
        v.join(",")
    }
}

/// `2026-11-25T15:41:07.123456789Z EADDRINUSE bind tcp 0.0.0.0:8080 by python3[4242] uid=0 ...`
pub fn text_line(ev: &Event) -> String {
    let what = match ev.syscall {
        SyscallName::Connect => format!(
            "connect {} to {} (from {})",
            ev.protocol,
            endpoint(
                ev.remote_addr.as_deref().unwrap_or("?"),
                ev.remote_port.unwrap_or(0)
            ),
            if ev.port == 0 {
                // No port of its own yet: the call was to choose one.
                format!("{}, any port", crate::event::bracketed(&ev.addr))
            } else {
                ev.local()
            }
        ),
        // Port 0 is what was asked: any port (bind(0), listen() without bind()).
        s if ev.port == 0 => format!(
            "{} {} {} (any port{})",
            s.as_str(),
            ev.protocol,
            crate::event::bracketed(&ev.addr),
            ev.chosen_port
                .map(|p| format!(": got {p}"))
                .unwrap_or_default()
        ),
        s => format!("{} {} {}", s.as_str(), ev.protocol, ev.local()),
    };
    let thread = ev
        .thread
        .as_ref()
        .map(|t| format!(" (thread {})", sanitize(t)))
        .unwrap_or_default();
    // A success's errno is 0: "OK" says it all.
    let error = if ev.errno == 0 {
        ev.error.clone()
    } else {
        format!("{} ({})", ev.error, crate::errno::text(ev.errno))
    };
    let mut line = format!(
        "{} {error} {what} by {}[{}]{thread} uid={} {} netns={}",
        ev.time,
        sanitize(&ev.comm),
        ev.pid,
        ev.uid,
        options(ev),
        ev.netns,
    );
    if ev.bound_dev_if != 0 {
        match ev.diagnosis.as_ref().and_then(|d| d.device.as_deref()) {
            Some(name) => write!(line, " dev={}", sanitize(name)),
            None => write!(line, " dev=#{}", ev.bound_dev_if),
        }
        .ok();
    }
    let c = &ev.container;
    if let Some(label) = c.label() {
        let _ = write!(line, " {}", sanitize(&label));
    }
    if c.host_network == Some(true) && c.container_id.is_some() {
        line.push_str(" hostNetwork");
    }
    line.push('\n');
    if let Some(d) = &ev.diagnosis {
        for h in d.holders.iter().take(MAX_HOLDER_LINES) {
            let tag = if h.conflicts {
                "held by"
            } else {
                "also on the port"
            };
            let _ = writeln!(line, "    {tag}: {}", sanitize(&holder_text(h)));
        }
        let more = d.holders.len().saturating_sub(MAX_HOLDER_LINES) + d.omitted();
        if more > 0 {
            let _ = writeln!(line, "    ... and {more} more");
        }
        let _ = writeln!(
            line,
            "    cause: {}: {}",
            d.cause.as_str(),
            sanitize(&d.hint)
        );
    }
    if ev.undiagnosed.as_deref() == Some("stopping") {
        line.push_str("    (holders not looked up: still queued when bindtrace was stopped)\n");
    }
    line
}

/// Holders shown under a failure in text output (JSON has them all).
const MAX_HOLDER_LINES: usize = 5;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::event::{BackendName, EventName};

    pub(crate) fn event() -> Event {
        Event {
            time: "2026-11-25T15:41:07.000000001Z".into(),
            event: EventName::BindFailure,
            syscall: SyscallName::Bind,
            errno: 98,
            error: "EADDRINUSE".into(),
            pid: 42,
            tid: 42,
            comm: "java".into(),
            thread: None,
            uid: 0,
            gid: 0,
            netns: 4_026_531_840,
            cgroup_id: 1,
            family: "ipv6".into(),
            protocol: "tcp".into(),
            addr: "::".into(),
            port: 8080,
            remote_addr: None,
            remote_port: None,
            chosen_port: None,
            reuseaddr: true,
            reuseport: false,
            v6only: Some(false),
            options_known: true,
            bound_dev_if: 0,
            backend: BackendName::Tracepoint,
            container: crate::container::Context::default(),
            ts_ns: 0,
            in_use: None,
            undiagnosed: None,
            diagnosis: None,
        }
    }

    #[test]
    fn a_holder_line_says_where_its_owner_came_from() {
        let holder = |extra: serde_json::Value| {
            let mut v = serde_json::json!({
                "state": "TIME_WAIT", "protocol": "tcp", "local": "127.0.0.1:8080",
                "remote": "127.0.0.1:6379", "source": "unknown", "bound_dev_if": 0,
                "inode": 0, "conflicts": true,
            });
            v.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            holder_text(&serde_json::from_value(v).unwrap())
        };
        assert_eq!(
            holder(serde_json::json!({})),
            "TIME_WAIT tcp 127.0.0.1:8080 -> 127.0.0.1:6379 (owner unknown: no process has it, \
             and bindtrace neither saw it made nor found it open when it started) options unknown"
        );
        assert_eq!(
            holder(serde_json::json!({
                "state": "BOUND", "remote": null, "pid": 7, "comm": "python3", "uid": 0,
                "source": "history", "age_ms": 3, "owner_alive": false, "socket_closed": true,
                "reuseaddr": false, "reuseport": false,
            })),
            "BOUND tcp 127.0.0.1:8080 python3[7] uid=0 (history 3 ms ago, exited, socket closed \
             before lookup) no SO_REUSEADDR/SO_REUSEPORT"
        );
        // Closed while bindtrace watched: its record was there and is gone.
        assert!(
            holder(serde_json::json!({ "owner_forgotten": true }))
                .contains("most likely evicted its record from the history (raise --history-size)")
        );
    }

    /// A call that asked for any port shows its address and "any port", never `0.0.0.0:0`.
    #[test]
    fn a_call_for_any_port_is_never_shown_as_port_0() {
        let mut ev = event();
        ev.port = 0;
        let bind = text_line(&ev);
        assert!(bind.contains("bind tcp [::] (any port)"), "{bind}");
        ev.syscall = SyscallName::Connect;
        ev.remote_addr = Some("10.0.0.5".into());
        ev.remote_port = Some(443);
        let connect = text_line(&ev);
        assert!(
            connect.contains("connect tcp to 10.0.0.5:443 (from [::], any port)"),
            "{connect}"
        );
        for line in [bind, connect] {
            assert!(!line.contains(":0 ") && !line.contains(":0)"), "{line}");
        }
    }

    #[test]
    fn text_line_names_everything() {
        let line = text_line(&event());
        assert_eq!(
            line,
            "2026-11-25T15:41:07.000000001Z EADDRINUSE (Address already in use) bind tcp \
             [::]:8080 by java[42] uid=0 SO_REUSEADDR netns=4026531840\n"
        );
    }

    #[test]
    fn hostile_comm_cannot_forge_lines_or_colours() {
        let mut ev = event();
        ev.comm = "x\n2026 EADDRINUSE\x1b[31m".into();
        let line = text_line(&ev);
        assert_eq!(
            line.matches('\n').count(),
            1,
            "one line per event: {line:?}"
        );
        assert!(
            !line.contains('\x1b'),
            "no escape byte reaches the terminal: {line:?}"
        );
        assert!(line.contains("x\\x0a2026 EADDRINUSE\\x1b[31m"));

        let mut out = Vec::new();
        serde_json::to_writer(&mut out, &ev).unwrap();
        let s = String::from_utf8(out).unwrap();
        assert!(
            !s.contains('\n') && !s.contains('\x1b'),
            "JSON escapes them: {s}"
        );
        let back: Event = serde_json::from_str(&s).unwrap();
        assert_eq!(back.comm, ev.comm);
    }
}
