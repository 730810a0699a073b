//! The fexit and kprobe backends' shared part: turning the arguments of the kernel's inet
//! functions into events. Each backend (`fexit.rs`, `kprobe.rs`) only fetches arguments and the
//! return value its own way and calls these.
//!
//! Functions (prototypes checked on 6.1, 6.12 and 6.18; 6.19 renames `struct sockaddr` to
//! `struct sockaddr_unsized` in the bind prototypes, with the same registers):
//! - `int inet_bind(struct socket *sock, struct sockaddr *uaddr, int addr_len)` and
//!   `int inet6_bind(...)` (same): every bind() of an AF_INET/AF_INET6 socket, TCP and UDP alike
//!   (their `get_port` is `inet_csk_get_port` / `udp_v{4,6}_get_port` inside), including binds that
//!   bypass the syscall (io_uring's `IORING_OP_BIND`, in-kernel `kernel_bind()`). `uaddr` is the
//!   kernel's copy of the caller's address: the requested address and port.
//! - `int inet_csk_get_port(struct sock *sk, unsigned short snum)`: called by bind() (socket in
//!   CLOSE: reported by `inet_bind` instead, so one call yields one event) and by listen()
//!   (socket already LISTEN: the re-check that fails when another socket listens). Returns 1 on
//!   conflict up to 6.0 and -EADDRINUSE from 6.1: any non-zero is a failure, reported as
//!   EADDRINUSE, which is what listen() then returns.
//! - `int __inet_hash_connect(struct inet_timewait_death_row *, struct sock *sk, u64
//!   port_offset, ...)`: picks the ephemeral port of a TCP connect() (IPv4 and IPv6), or checks
//!   the 4-tuple of a socket bound before connecting, in the connecting task's context; 0 with
//!   the port set in `sk`, -EADDRNOTAVAIL when the range has no free port.
//! - `int inet_dgram_connect(struct socket *sock, struct sockaddr *uaddr, int addr_len, int
//!   flags)`: connect() of every AF_INET/AF_INET6 datagram socket (UDP, UDP-Lite, ICMP ping), the
//!   syscall's and io_uring's. A socket without a port is given one by `inet_autobind()` first,
//!   after the cgroup connect hooks; when no port is free the call returns -EAGAIN (as can the
//!   protocol's connect for a socket with a port: an IPsec SA not yet negotiated).

use aya_ebpf::helpers::bpf_probe_read_kernel;
use tracer_common::{AF_INET, AF_INET6, BindEvent, IPPROTO_UDP, Syscall, flags, tcp_state};

use crate::{
    config::conf,
    kernel::{SockView, parse_sockaddr, read_ptr, sock_remote, sock_view},
    report::{finish, scratch},
    sock_state,
};

const EADDRINUSE: i64 = 98;
const EADDRNOTAVAIL: i64 = 99;
const EAGAIN: i64 = 11;

/// Options and identity of `sk` copied into `ev`.
#[inline(always)]
fn fill_from_sock(ev: &mut BindEvent, sk: *const u8) {
    fill_from_view(ev, &sock_view(sk));
}

#[inline(always)]
fn fill_from_view(ev: &mut BindEvent, v: &SockView) {
    ev.flags |= v.flags;
    ev.bound_dev_if = v.bound_dev_if;
    ev.protocol = v.protocol;
    ev.sock_type = v.sock_type;
    ev.netns = v.netns;
    if ev.family == 0 {
        ev.family = v.family;
    }
    // Read after the call (fexit), a bind() to port 0 has the port it was given; before it
    // (kprobe), none yet.
    if ev.syscall == Syscall::Bind as u8 && ev.port == 0 {
        ev.chosen_port = v.port;
    }
}

/// The shortest address `inet_bind()` (`sizeof(struct sockaddr_in)`) and `inet6_bind()`
/// (`SIN6_LEN_RFC2133`) accept: a shorter one is refused (EINVAL) before the cgroup bind hook,
/// where the tracepoint backend starts a bind. Not reported by any backend: a malformed call,
/// and its bytes past `addr_len` are not the caller's.
pub const MIN_ADDR_LEN_V4: i32 = 16;
pub const MIN_ADDR_LEN_V6: i32 = 24;

/// A bind request, built in the scratch slot: the socket and the kernel's copy of the caller's
/// address, `addr_len` bytes of it (at least `min_len`, or nothing is built).
#[inline(always)]
pub fn bind_request(
    sock: *const u8,
    uaddr: *const u8,
    addr_len: i32,
    min_len: i32,
) -> Option<&'static mut BindEvent> {
    if addr_len < min_len {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel checks the address. The kernel copied the caller's address into
    // a sockaddr_storage, so 28 bytes (a sockaddr_in6) are always there.
    let raw: [u8; 28] = unsafe { bpf_probe_read_kernel(uaddr.cast::<[u8; 28]>()) }.ok()?;
    let mut head = [0u8; 24];
    head.copy_from_slice(&raw[..24]);
    let (family, port, addr) = parse_sockaddr(&head)?;
    let ev = scratch()?;
    ev.syscall = Syscall::Bind as u8;
    ev.family = family;
    ev.port = port;
    ev.addr = addr;
    ev.flags = flags::ADDR_KNOWN;
    if let Some(sk) = read_ptr(sock, conf!(kernel.socket_sk)) {
        fill_from_sock(ev, sk);
    }
    // A link-local (or link-scoped multicast) address's scope id names the interface; the kernel
    // binds the socket to it during the call, over any SO_BINDTODEVICE, so a kprobe at entry has
    // not seen it yet.
    let scope = u32::from_ne_bytes([raw[24], raw[25], raw[26], raw[27]]);
    let scoped = (addr[0] == 0xfe && addr[1] & 0xc0 == 0x80)
        || (addr[0] == 0xff && matches!(addr[1] & 0x0f, 1 | 2));
    if family == AF_INET6 && addr_len >= 28 && scoped && scope != 0 {
        ev.bound_dev_if = scope;
    }
    Some(ev)
}

/// `inet_bind()`/`inet6_bind()` returned `ret`.
#[inline(always)]
pub fn bind_done(sock: *const u8, uaddr: *const u8, addr_len: i32, min_len: i32, ret: i64) {
    if let Some(ev) = bind_request(sock, uaddr, addr_len, min_len) {
        finish(ev, ret, 0);
    }
}

/// A listen() re-check, built in the scratch slot: `sk` is LISTEN and `snum` its bound port.
/// None for the bind() path.
#[inline(always)]
pub fn listen_request(sk: *const u8, snum: u16) -> Option<&'static mut BindEvent> {
    let v = sock_view(sk);
    if v.state != tcp_state::LISTEN {
        return None;
    }
    let ev = scratch()?;
    ev.syscall = Syscall::Listen as u8;
    ev.family = v.family;
    ev.port = snum;
    ev.addr = v.addr;
    ev.flags = flags::ADDR_KNOWN;
    fill_from_sock(ev, sk);
    Some(ev)
}

/// `inet_csk_get_port()` returned `ret` (non-zero: conflict).
#[inline(always)]
pub fn get_port_done(ev: &mut BindEvent, ret: i64) {
    finish(ev, if ret == 0 { 0 } else { -EADDRINUSE }, 0);
}

/// `__inet_hash_connect()` returned `ret`: on success the caller becomes the port's remembered
/// owner; "no free port" is a bindtrace event.
#[inline(always)]
pub fn hash_connect_done(sk: *const u8, ret: i64) {
    if ret == 0 {
        sock_state::hashed(sk);
        return;
    }
    if ret != -EADDRNOTAVAIL {
        return;
    }
    let v = sock_view(sk);
    connect_failed(&v, sock_remote(sk, v.family), ret);
}

/// Reports a connect() that found no local port, from its socket's view `v` and destination
/// `remote` (address, port).
#[inline(always)]
fn connect_failed(v: &SockView, remote: ([u8; 16], u16), ret: i64) {
    let Some(ev) = scratch() else {
        return;
    };
    ev.syscall = Syscall::Connect as u8;
    ev.family = v.family;
    ev.addr = v.addr;
    ev.port = v.port;
    (ev.remote_addr, ev.remote_port) = remote;
    ev.flags = flags::ADDR_KNOWN;
    fill_from_view(ev, v);
    finish(ev, ret, 0);
}

/// `inet_dgram_connect()` returned `ret` (fexit and kprobe backends). `uaddr` is the kernel's copy
/// of the caller's address (in a `sockaddr_storage`: 24 bytes are always there).
#[inline(always)]
pub fn dgram_connect_done(sock: *const u8, uaddr: *const u8, ret: i64) {
    if ret != -EAGAIN {
        return;
    }
    // SAFETY: bpf_probe_read_kernel checks the address. Zeroes (no destination) if it fails.
    let raw = unsafe { bpf_probe_read_kernel(uaddr.cast::<[u8; 24]>()) }.unwrap_or([0; 24]);
    if let Some(sk) = read_ptr(sock, conf!(kernel.socket_sk)) {
        autobind_failed(sk, &raw);
    }
}

/// A connect() of a datagram socket failed with -EAGAIN: `inet_dgram_connect()` returns that when
/// `inet_autobind()` finds no free port for a socket without one — UDP's port exhaustion,
/// reported for UDP sockets only (ICMP ping sockets' ids are not ports), and only if the socket
/// still has no port. Other EAGAINs of connect() are not reported: an AF_UNIX socket's full
/// backlog, an IPsec SA still being negotiated.
/// `remote`: the caller's destination address (all zero if it could not be read).
#[inline(always)]
pub fn autobind_failed(sk: *const u8, remote: &[u8; 24]) {
    let v = sock_view(sk);
    // Still without a port: the autobind failed. (A socket with one can get -EAGAIN from the
    // protocol's connect: an IPsec policy whose SA is still being negotiated, with
    // net.core.xfrm_larval_drop=0.)
    if (v.family != AF_INET && v.family != AF_INET6) || v.protocol != IPPROTO_UDP || v.port != 0 {
        return;
    }
    // Every byte of the record is written on every path: 6.1's verifier refuses a read of stack
    // it cannot prove written (an `Option` left unset), which 6.18 allows root.
    let dest = match parse_sockaddr(remote) {
        Some((_, port, addr)) => (addr, port),
        None => ([0; 16], 0),
    };
    connect_failed(&v, dest, -EAGAIN);
}
