//! The sockets found on the port: their state, where their owner came from, and the process
//! that opened a socket others hold now.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// A holder's socket state (JSON `holders[].state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum State {
    Listen,
    Established,
    SynSent,
    SynRecv,
    FinWait1,
    FinWait2,
    TimeWait,
    CloseWait,
    LastAck,
    Closing,
    /// Bound, neither listening nor connected (TCP_BOUND_INACTIVE, an unconnected UDP socket).
    Bound,
}

impl State {
    /// From the kernel's state number (`tracer_common::tcp_state`).
    pub fn from_kernel(state: u8, udp: bool) -> Self {
        use tracer_common::tcp_state as s;
        match state {
            s::ESTABLISHED => Self::Established,
            s::SYN_SENT => Self::SynSent,
            s::SYN_RECV | s::NEW_SYN_RECV => Self::SynRecv,
            s::FIN_WAIT1 => Self::FinWait1,
            s::FIN_WAIT2 => Self::FinWait2,
            s::TIME_WAIT => Self::TimeWait,
            s::CLOSE_WAIT => Self::CloseWait,
            s::LAST_ACK => Self::LastAck,
            s::LISTEN if !udp => Self::Listen,
            s::CLOSING => Self::Closing,
            _ => Self::Bound,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Listen => "LISTEN",
            Self::Established => "ESTABLISHED",
            Self::SynSent => "SYN_SENT",
            Self::SynRecv => "SYN_RECV",
            Self::FinWait1 => "FIN_WAIT1",
            Self::FinWait2 => "FIN_WAIT2",
            Self::TimeWait => "TIME_WAIT",
            Self::CloseWait => "CLOSE_WAIT",
            Self::LastAck => "LAST_ACK",
            Self::Closing => "CLOSING",
            Self::Bound => "BOUND",
        }
    }

    pub(super) fn is_connection(self) -> bool {
        !matches!(self, Self::Listen | Self::TimeWait | Self::Bound)
    }

    /// Which holder explains a failure best, first.
    pub(super) fn rank(self) -> u8 {
        match self {
            Self::Listen => 0,
            Self::TimeWait => 2,
            Self::Bound => 3,
            _ => 1,
        }
    }
}

/// Where a holder's owner (pid, command) came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Looked up now: the process has the socket open.
    Live,
    /// Remembered by bindtrace's kernel programs (the socket has no owner now, e.g. TIME-WAIT).
    History,
    /// A connection that was open in this process when bindtrace started (its start-up scan),
    /// since closed into TIME-WAIT: made before bindtrace could see it made.
    Startup,
    /// Neither: the socket is there but nothing names its process.
    Unknown,
}

/// A socket that holds (or held) the port.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "independent facts about one socket, each its own JSON field"
)]
/// In JSON, a fact not known (a TIME-WAIT's owner, a listener's peer) is left out, not null.
pub struct Holder {
    pub state: State,
    pub protocol: String,
    pub local: SocketAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<SocketAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    /// From history, of a process still running: the name of the thread that took the port,
    /// where it differs from the process's (`comm`; a JVM's "http-nio-8080-e" in "java").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// The socket's own uid (`sock_i_uid()`: its creator's, as sock_diag lists it), where it
    /// differs from `uid`, the process's: a server that bound as root and then dropped to
    /// another user. SO_REUSEPORT's same-user rule compares the sockets' uids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_uid: Option<u32>,
    pub source: Source,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reuseaddr: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reuseport: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v6only: Option<bool>,
    pub bound_dev_if: u32,
    /// The name of `bound_dev_if` in the namespace (SO_BINDTODEVICE), when bound to one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// How long ago the owner took the port (from history).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_ms: Option<u64>,
    /// A TIME-WAIT's time left when it was looked up (the kernel's timer, via sock_diag).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
    /// Whether the owner process still runs (history owners).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_alive: Option<bool>,
    /// Other processes sharing the same socket.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shared_with: Vec<u32>,
    /// For a live listening or bound socket none of whose holders bindtrace saw take the port:
    /// the process it saw take it, which the holders inherited the socket from (fork/exec).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opened_by: Option<Opener>,
    /// Socket inode (0: TIME-WAIT or orphaned).
    pub inode: u64,
    /// Container and Kubernetes context of the owner (keys absent when unknown).
    #[serde(flatten, default)]
    pub container: crate::container::Context,
    /// The remembered owner's cgroup id (0: unknown), for its context once it has exited.
    #[serde(skip)]
    pub owner_cgroup: u64,
    /// The socket was gone when bindtrace looked (its owner closed it or exited just after the
    /// failure): it is known from bindtrace's history as the last socket seen to take the port.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub socket_closed: bool,
    /// A connection on the port accepted by a listener there (a server's side of it, not one it
    /// opened): its owner is that listener's, as bindtrace's history saw it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub accepted: bool,
    /// A TIME-WAIT of unknown owner that began while bindtrace was watching: the history saw
    /// the connection, or the start-up scan found it open, and no longer has it — evicted by
    /// newer connections (`--history-size`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub owner_forgotten: bool,
    /// A connection whose process bound its port itself before connecting (bindtrace saw the
    /// bind()): the kernel did not pick the port from the ephemeral range, so reserving the port
    /// would not keep that client off it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bound_before_connect: bool,
    /// When the socket took the port (CLOCK_MONOTONIC ns), as its own history record says: one
    /// that took it after the failure cannot have refused the call.
    #[serde(skip)]
    pub took_port_ns: Option<u64>,
    /// Whether the kernel's rules say this socket blocks the request.
    pub conflicts: bool,
}

impl Holder {
    /// The device the socket is bound to (SO_BINDTODEVICE), by name where known, else `#index`;
    /// None when bound to none.
    pub fn device_name(&self) -> Option<String> {
        (self.bound_dev_if != 0).then(|| {
            self.device
                .clone()
                .unwrap_or_else(|| format!("#{}", self.bound_dev_if))
        })
    }

    /// The uid SO_REUSEPORT's same-user rule sees: the socket's own, else its process's.
    pub fn sharing_uid(&self) -> Option<u32> {
        self.socket_uid.or(self.uid)
    }

    /// A socket in `state` on `local`, nothing else known yet.
    pub fn new(state: State, udp: bool, local: SocketAddr, source: Source) -> Self {
        Self {
            state,
            protocol: if udp { "udp" } else { "tcp" }.to_string(),
            local,
            remote: None,
            pid: None,
            comm: None,
            thread: None,
            uid: None,
            socket_uid: None,
            source,
            reuseaddr: None,
            reuseport: None,
            v6only: None,
            bound_dev_if: 0,
            device: None,
            age_ms: None,
            expires_ms: None,
            owner_alive: None,
            shared_with: Vec::new(),
            opened_by: None,
            inode: 0,
            container: crate::container::Context::default(),
            owner_cgroup: 0,
            socket_closed: false,
            accepted: false,
            owner_forgotten: false,
            bound_before_connect: false,
            took_port_ns: None,
            conflicts: false,
        }
    }
}

/// The process that took the port with a socket others hold now (JSON `holders[].opened_by`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Opener {
    pub pid: u32,
    pub comm: String,
    /// Whether it still runs.
    pub alive: bool,
}

impl Opener {
    pub(super) fn text(&self) -> String {
        let gone = if self.alive { "" } else { ", since exited" };
        format!("{} (pid {}{gone})", self.comm, self.pid)
    }
}
