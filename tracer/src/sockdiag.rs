//! NETLINK_SOCK_DIAG: the kernel's own list of sockets on a port (what `ss` uses), in the network
//! namespace of the calling thread (see `netns::run_in`).
//!
//! A bytecode filter (`INET_DIAG_REQ_BYTECODE`, ports `>= lo && <= hi`) makes the kernel skip every
//! other socket, so a host with tens of thousands of connections answers in well under a
//! millisecond. Lists listeners, connections, TIME-WAIT and, from 6.8, bound-only sockets
//! (`TCP_BOUND_INACTIVE`); UDP sockets need the `udp_diag` module (when absent, callers fall back to
//! `/proc/thread-self/net/udp`).

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use bytes::{Buf, BufMut, BytesMut};

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const INET_DIAG_REQ_BYTECODE: u16 = 1;
const INET_DIAG_BC_S_GE: u8 = 2;
const INET_DIAG_BC_S_LE: u8 = 3;
const INET_DIAG_SKV6ONLY: u16 = 11;
const NLMSG_HDR: usize = 16;
const INET_DIAG_MSG: usize = 72;

/// One socket as the kernel lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiagSocket {
    pub protocol: u8,
    /// Kernel TCP state number (`tracer_common::tcp_state`); UDP: 7 unconnected, 1 connected.
    pub state: u8,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// 0 for TIME-WAIT sockets, which have no owner.
    pub uid: u32,
    /// Socket inode (`socket:[N]` in /proc/PID/fd); 0 for TIME-WAIT and orphaned sockets.
    pub inode: u64,
    pub bound_dev_if: u32,
    /// IPV6_V6ONLY: the kernel reports it for listening and unconnected sockets only
    /// (`inet_diag_msg_attrs_fill()`), None for the rest.
    pub v6only: Option<bool>,
    /// A TIME-WAIT socket's time left, in ms (`idiag_expires`): in TIME_WAIT, or in FIN_WAIT2
    /// once its process has closed it (`tcp_fin_timeout`); None for other sockets, and where not
    /// read (from /proc).
    pub expires_ms: Option<u32>,
}

/// `idiag_timer` of a TIME-WAIT socket: its time left is `idiag_expires`.
const TIMER_TIME_WAIT: u8 = 3;

fn ip_from(family: u8, words: &[u8; 16]) -> IpAddr {
    if family == libc::AF_INET6 as u8 {
        IpAddr::V6(Ipv6Addr::from(*words))
    } else {
        IpAddr::V4(Ipv4Addr::new(words[0], words[1], words[2], words[3]))
    }
}

/// Builds the dump request for `protocol`/`family`, local ports `lo..=hi`.
fn request(protocol: u8, family: u8, lo: u16, hi: u16) -> BytesMut {
    // inet_diag_bc_op {u8 code; u8 yes; u16 no} followed by {0, 0, port} for port comparisons.
    // Accept = run off the end exactly; reject = jump 4 bytes past it.
    let mut bc = BytesMut::new();
    bc.put_u8(INET_DIAG_BC_S_GE);
    bc.put_u8(8);
    bc.put_u16_le(16 + 4);
    bc.put_u32_le(u32::from(lo) << 16);
    bc.put_u8(INET_DIAG_BC_S_LE);
    bc.put_u8(8);
    bc.put_u16_le(8 + 4);
    bc.put_u32_le(u32::from(hi) << 16);

    let attr_len = 4 + bc.len();
    let total = NLMSG_HDR + 56 + attr_len;
    let mut b = BytesMut::with_capacity(total);
    b.put_u32_le(total as u32);
    b.put_u16_le(SOCK_DIAG_BY_FAMILY);
    b.put_u16_le(NLM_F_REQUEST | NLM_F_DUMP);
    b.put_u32_le(1); // seq
    b.put_u32_le(0); // pid: the kernel
    // inet_diag_req_v2
    b.put_u8(family);
    b.put_u8(protocol);
    b.put_u8(0); // idiag_ext
    b.put_u8(0);
    b.put_u32_le(u32::MAX); // every state, including TCP_BOUND_INACTIVE (6.8+)
    b.put_bytes(0, 48); // inet_diag_sockid: no exact match
    // rtattr INET_DIAG_REQ_BYTECODE
    b.put_u16_le(attr_len as u16);
    b.put_u16_le(INET_DIAG_REQ_BYTECODE);
    b.extend_from_slice(&bc);
    b
}

/// Parses one `inet_diag_msg` (and its attributes) from a netlink payload.
fn parse_msg(protocol: u8, mut p: &[u8]) -> Option<DiagSocket> {
    if p.len() < INET_DIAG_MSG {
        return None;
    }
    let family = p.get_u8();
    let state = p.get_u8();
    let timer = p.get_u8();
    p.advance(1); // retrans
    let sport = p.get_u16();
    let dport = p.get_u16();
    let mut src = [0u8; 16];
    p.copy_to_slice(&mut src);
    let mut dst = [0u8; 16];
    p.copy_to_slice(&mut dst);
    let bound_dev_if = p.get_u32_le();
    p.advance(8); // cookie
    let expires_ms = p.get_u32_le();
    p.advance(8); // rqueue, wqueue
    let uid = p.get_u32_le();
    let inode = p.get_u32_le();
    let mut v6only = None;
    while p.len() >= 4 {
        let len = usize::from(p.get_u16_le());
        let kind = p.get_u16_le();
        if len < 4 || len - 4 > p.remaining() {
            break;
        }
        let body = len - 4;
        if kind == INET_DIAG_SKV6ONLY && body >= 1 {
            v6only = Some(p[0] != 0);
        }
        p.advance(((body + 3) & !3).min(p.remaining()));
    }
    Some(DiagSocket {
        protocol,
        state,
        local: SocketAddr::new(ip_from(family, &src), sport),
        remote: SocketAddr::new(ip_from(family, &dst), dport),
        uid,
        inode: u64::from(inode),
        bound_dev_if,
        v6only,
        // Timer 3 is a TIME-WAIT socket's (`inet_twsk_diag_fill()`): TIME_WAIT, or the
        // FIN_WAIT2 of a connection its process closed, which the kernel keeps as one too.
        expires_ms: (timer == TIMER_TIME_WAIT).then_some(expires_ms),
    })
}

/// Splits a netlink reply into messages; returns `Ok(true)` at NLMSG_DONE.
pub(crate) fn parse_reply(
    protocol: u8,
    mut buf: &[u8],
    out: &mut Vec<DiagSocket>,
) -> io::Result<bool> {
    while buf.len() >= NLMSG_HDR {
        let len = (&buf[0..4]).get_u32_le() as usize;
        let kind = (&buf[4..6]).get_u16_le();
        if len < NLMSG_HDR || len > buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "truncated netlink message",
            ));
        }
        let payload = &buf[NLMSG_HDR..len];
        match kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let code = if payload.len() >= 4 {
                    (&payload[0..4]).get_i32_le()
                } else {
                    0
                };
                if code != 0 {
                    return Err(io::Error::from_raw_os_error(-code));
                }
            }
            SOCK_DIAG_BY_FAMILY => out.extend(parse_msg(protocol, payload)),
            _ => {}
        }
        let aligned = (len + 3) & !3;
        buf = &buf[aligned.min(buf.len())..];
    }
    Ok(false)
}

/// Sockets of `protocol` (`IPPROTO_TCP`/`IPPROTO_UDP`) and `family` (`AF_INET`/`AF_INET6`) whose
/// local port is in `lo..=hi`, in the calling thread's network namespace.
pub fn dump(protocol: u8, family: u8, lo: u16, hi: u16) -> io::Result<Vec<DiagSocket>> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let req = request(protocol, family, lo, hi);
    // SAFETY: a zeroed sockaddr_nl addresses the kernel.
    let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    sa.nl_family = libc::AF_NETLINK as u16;
    // SAFETY: valid buffer and address for the duration of the call.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            req.as_ptr().cast(),
            req.len(),
            0,
            (&raw const sa).cast(),
            size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: recv into our buffer.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 || parse_reply(protocol, &buf[..n as usize], &mut out)? {
            return Ok(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_layout() {
        let r = request(6, 2, 8080, 8080);
        assert_eq!(r.len(), 16 + 56 + 4 + 16);
        assert_eq!((&r[0..4]).get_u32_le() as usize, r.len());
        assert_eq!(r[16], 2, "family");
        assert_eq!(r[17], 6, "protocol");
        // bytecode: S_GE yes=8 no=20 port; S_LE yes=8 no=12 port
        let bc = &r[16 + 56 + 4..];
        assert_eq!(&bc[0..4], &[2, 8, 20, 0]);
        assert_eq!((&bc[6..8]).get_u16_le(), 8080);
        assert_eq!(&bc[8..12], &[3, 8, 12, 0]);
        assert_eq!((&bc[14..16]).get_u16_le(), 8080);
    }

    #[test]
    fn parses_a_reply_and_stops_at_done() {
        let mut msg = BytesMut::new();
        msg.put_u8(2); // AF_INET
        msg.put_u8(6); // TIME_WAIT
        msg.put_u16(0);
        msg.put_u16(8080); // sport, network order
        msg.put_u16(6379);
        msg.extend_from_slice(&[127, 0, 0, 1]);
        msg.put_bytes(0, 12);
        msg.extend_from_slice(&[127, 0, 0, 2]);
        msg.put_bytes(0, 12);
        msg.put_u32_le(0); // if
        msg.put_bytes(0, 8 + 12);
        msg.put_u32_le(1000); // uid
        msg.put_u32_le(4242); // inode
        let mut nl = BytesMut::new();
        nl.put_u32_le((NLMSG_HDR + msg.len()) as u32);
        nl.put_u16_le(SOCK_DIAG_BY_FAMILY);
        nl.put_bytes(0, 10);
        nl.extend_from_slice(&msg);
        nl.put_u32_le(NLMSG_HDR as u32 + 4);
        nl.put_u16_le(NLMSG_DONE);
        nl.put_bytes(0, 10);
        nl.put_u32_le(0);
        let mut out = Vec::new();
        assert!(parse_reply(6, &nl, &mut out).unwrap());
        assert_eq!(out.len(), 1);
        let s = &out[0];
        assert_eq!(s.local, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(s.remote, "127.0.0.2:6379".parse().unwrap());
        assert_eq!((s.state, s.uid, s.inode), (6, 1000, 4242));
    }

    #[test]
    fn truncated_or_garbage_replies_are_errors_not_panics() {
        let mut out = Vec::new();
        assert!(parse_reply(6, &[0xff; 40], &mut out).is_err());
        assert!(!parse_reply(6, &[1, 2, 3], &mut out).unwrap());
        let mut err = BytesMut::new();
        err.put_u32_le(20);
        err.put_u16_le(NLMSG_ERROR);
        err.put_bytes(0, 10);
        err.put_i32_le(-22);
        assert_eq!(
            parse_reply(6, &err, &mut out).unwrap_err().raw_os_error(),
            Some(22)
        );
    }
}
