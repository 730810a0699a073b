//! `verdict()` end to end — requests and the sockets found on their port, against the cause, the
//! holders and the hint — and the conflict rules it applies.

use super::{
    phrases::{OLD_SERVER_LACKED, SERVER_FIX},
    rules::dual_stack_wildcard,
    *,
};

fn req(addr: &str, port: u16) -> Request {
    Request {
        syscall: SyscallName::Bind,
        errno: EADDRINUSE,
        udp: false,
        addr: addr.parse().unwrap(),
        port,
        reuseaddr: false,
        reuseport: false,
        v6only: None,
        uid: 1000,
        pid: 100,
        bound_dev_if: 0,
        remote: None,
        at_ns: None,
        in_use: None,
        comm: "python3".into(),
    }
}

fn holder(state: State, local: &str) -> Holder {
    Holder {
        state,
        protocol: "tcp".into(),
        local: local.parse().unwrap(),
        remote: None,
        pid: Some(200),
        comm: Some("redis-cli".into()),
        thread: None,
        uid: Some(1000),
        socket_uid: None,
        source: Source::Live,
        reuseaddr: Some(false),
        reuseport: Some(false),
        v6only: None,
        bound_dev_if: 0,
        device: None,
        age_ms: None,
        expires_ms: None,
        owner_alive: None,
        shared_with: vec![],
        opened_by: None,
        inode: 1,
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

fn ctx() -> PortContext {
    PortContext {
        range: Some((5000, 65535)),
        reserved: vec![],
        ports_in_use: None,
        device: None,
        address: None,
        unprivileged_start: None,
        tw_reuse: None,
        users: None,
    }
}

#[test]
fn seed_1a_time_wait_from_an_exited_process_blocks_even_reuseaddr() {
    let mut r = req("0.0.0.0", 8080);
    r.reuseaddr = true;
    let mut h = holder(State::TimeWait, "127.0.0.1:8080");
    h.remote = Some("127.0.0.1:6379".parse().unwrap());
    h.source = Source::History;
    h.owner_alive = Some(false);
    h.age_ms = Some(12_000);
    let d = verdict(&r, vec![h], &ctx());
    assert_eq!(d.cause, Cause::TimeWaitConflict);
    assert!(d.holders[0].conflicts);
    assert!(d.in_ephemeral_range);
    assert!(!d.same_process);
    assert!(
        d.hint
            .contains("opened 12 s ago by redis-cli (pid 200) (since exited) without SO_REUSEADDR"),
        "{}",
        d.hint
    );
    assert!(
        d.hint.contains("ip_local_reserved_ports=8080"),
        "{}",
        d.hint
    );
}

#[test]
fn time_wait_with_reuseaddr_on_both_sides_does_not_conflict() {
    let mut r = req("0.0.0.0", 8080);
    r.reuseaddr = true;
    let mut h = holder(State::TimeWait, "127.0.0.1:8080");
    h.reuseaddr = Some(true);
    assert!(!conflicts(&r, &h));
}

#[test]
fn seed_1b_and_3_2a_established_outgoing_connection() {
    let mut r = req("0.0.0.0", 8080);
    r.reuseaddr = true;
    let mut h = holder(State::Established, "127.0.0.1:8080");
    h.remote = Some("127.0.0.1:3306".parse().unwrap());
    let d = verdict(&r, vec![h], &ctx());
    assert_eq!(d.cause, Cause::OutgoingConnectionConflict);
    assert!(d.hint.contains("source port"), "{}", d.hint);
    // 3.2b: both set SO_REUSEADDR: no conflict.
    let mut h = holder(State::Established, "127.0.0.1:8080");
    h.reuseaddr = Some(true);
    assert!(!conflicts(&r, &h));
}

#[test]
fn seed_3_1_listener_never_shares_by_reuseaddr() {
    let mut r = req("127.0.0.1", 8080);
    r.reuseaddr = true;
    let mut h = holder(State::Listen, "0.0.0.0:8080");
    h.reuseaddr = Some(true);
    let d = verdict(&r, vec![h], &ctx());
    assert_eq!(d.cause, Cause::ListenerConflict);
    assert!(
        d.hint
            .starts_with("redis-cli (pid 200) is already listening on 0.0.0.0:8080")
    );
}

#[test]
fn seed_3_3_and_3_4_same_process() {
    let r = req("0.0.0.0", 8080);
    let mut h = holder(State::Established, "127.0.0.1:8080");
    h.pid = Some(100);
    let d = verdict(&r, vec![h], &ctx());
    assert_eq!(d.cause, Cause::OutgoingConnectionConflict);
    assert!(d.same_process);
    assert!(d.hint.starts_with("this process itself"), "{}", d.hint);

    let mut h = holder(State::Listen, "0.0.0.0:8080");
    h.pid = Some(7);
    h.shared_with = vec![100];
    let d = verdict(&req("127.0.0.1", 8080), vec![h], &ctx());
    assert_eq!(d.cause, Cause::ListenerConflict);
    assert!(d.same_process, "a socket shared with the caller counts");
}

#[test]
fn seed_3_6_reuseport_same_user_shares_other_user_does_not() {
    let mut r = req("0.0.0.0", 8080);
    r.reuseport = true;
    let mut h = holder(State::Listen, "0.0.0.0:8080");
    h.reuseport = Some(true);
    assert!(!conflicts(&r, &h), "same uid shares");
    h.uid = Some(0);
    assert!(conflicts(&r, &h));
    let d = verdict(&r, vec![h], &ctx());
    assert_eq!(d.cause, Cause::ReuseportMismatch);
    assert!(d.hint.contains("uid 1000 here, uid 0"), "{}", d.hint);
}

#[test]
fn listen_failure_is_decided_by_listeners_only() {
    let mut r = req("127.0.0.1", 8080);
    r.syscall = SyscallName::Listen;
    r.reuseaddr = true;
    let mut bound = holder(State::Bound, "127.0.0.1:8080");
    bound.reuseaddr = Some(true);
    let mut lst = holder(State::Listen, "127.0.0.1:8080");
    lst.reuseaddr = Some(true);
    let d = verdict(&r, vec![bound, lst], &ctx());
    assert_eq!(d.cause, Cause::ListenerConflict);
    assert_eq!(d.holders[0].state, State::Listen);
    assert!(!d.holders[1].conflicts);
}

/// connect() from a bound port, refused with EADDRNOTAVAIL: the connection to the same
/// destination from that address and port is named; one to another destination is not.
#[test]
fn four_tuple_in_use() {
    let mut r = req("127.0.0.1", 44000);
    r.syscall = SyscallName::Connect;
    r.errno = EADDRNOTAVAIL;
    r.remote = Some("127.0.0.1:6379".parse().unwrap());
    let mut other = holder(State::Established, "127.0.0.1:44000");
    other.remote = Some("127.0.0.1:5432".parse().unwrap());
    let mut tw = holder(State::TimeWait, "127.0.0.1:44000");
    tw.remote = r.remote;
    let d = verdict(&r, vec![other, tw], &ctx());
    assert_eq!(d.cause, Cause::FourTupleInUse);
    assert_eq!(d.holders[0].state, State::TimeWait);
    assert!(d.holders[0].conflicts && !d.holders[1].conflicts);
    assert!(d.hint.starts_with("redis-cli (pid 200) already has a connection from 127.0.0.1:44000 to 127.0.0.1:6379 (TIME_WAIT, which lasts up to 60 s)"), "{}", d.hint);

    // From an ephemeral port it is the range, as before.
    r.port = 0;
    assert_eq!(verdict(&r, vec![], &ctx()).cause, Cause::EphemeralExhausted);
    // Nothing left that matches: still the four-tuple, said without a holder.
    r.port = 44000;
    let d = verdict(&r, vec![], &ctx());
    assert_eq!(d.cause, Cause::FourTupleInUse);
    assert!(d.hint.contains("already exists"), "{}", d.hint);
}

#[test]
fn dual_stack() {
    // [::] without V6ONLY covers 0.0.0.0
    assert!(addresses_overlap(
        "0.0.0.0".parse().unwrap(),
        None,
        "::".parse().unwrap(),
        Some(false)
    ));
    assert!(!addresses_overlap(
        "0.0.0.0".parse().unwrap(),
        None,
        "::".parse().unwrap(),
        Some(true)
    ));
    assert!(addresses_overlap(
        "::ffff:127.0.0.1".parse().unwrap(),
        None,
        "127.0.0.1".parse().unwrap(),
        None
    ));
    assert!(!addresses_overlap(
        "127.0.0.1".parse().unwrap(),
        None,
        "127.0.0.2".parse().unwrap(),
        None
    ));
    let mut h = holder(State::Listen, "[::]:8080");
    h.v6only = Some(false);
    let d = verdict(&req("0.0.0.0", 8080), vec![h], &ctx());
    assert_eq!(d.cause, Cause::DualStackConflict);
    assert!(d.hint.contains("IPV6_V6ONLY"));

    // The seed's JVM: its [::] bind meets an IPv4 connection's port. The connection is the
    // matter; the hint says how the two overlap.
    let mut jvm = req("::", 8080);
    jvm.reuseaddr = true;
    jvm.v6only = Some(false);
    for (state, cause, local) in [
        (State::TimeWait, Cause::TimeWaitConflict, "127.0.0.1:8080"),
        // A JVM's own connections are IPv6 sockets with IPv4-mapped addresses.
        (
            State::Established,
            Cause::OutgoingConnectionConflict,
            "[::ffff:127.0.0.1]:8080",
        ),
    ] {
        let mut h = holder(state, local);
        h.remote = Some("127.0.0.1:6379".parse().unwrap());
        let d = verdict(&jvm, vec![h], &ctx());
        assert_eq!(d.cause, cause);
        assert!(
            d.hint
                .ends_with("([::] without IPV6_V6ONLY covers IPv4 port 8080 too)"),
            "{}",
            d.hint
        );
    }
    // An IPv4 bind refused by a `[::]` listener: the dual-stack hint, not the note about an
    // IPv6 connection's IPv4 face.
    let mut jvm_listener = holder(State::Listen, "[::]:8080");
    jvm_listener.v6only = Some(false);
    let d = verdict(&req("0.0.0.0", 8080), vec![jvm_listener], &ctx());
    assert_eq!(d.cause, Cause::DualStackConflict);
    assert!(!d.hint.contains("127.0.0.6"), "{}", d.hint);
    // No wildcard in between, or one with IPV6_V6ONLY: no such note.
    let mut h = holder(State::Established, "[2001:db8::1]:8080");
    h.remote = Some("[2001:db8::2]:6379".parse().unwrap());
    let mut specific = req("0.0.0.0", 8080);
    specific.reuseaddr = true;
    assert!(dual_stack_wildcard(&specific, &h).is_none());
    let mut v6only = jvm.clone();
    v6only.v6only = Some(true);
    let tw = holder(State::TimeWait, "127.0.0.1:8080");
    assert!(dual_stack_wildcard(&v6only, &tw).is_none());
    assert!(
        !verdict(&v6only, vec![tw], &ctx())
            .hint
            .contains("IPV6_V6ONLY covers")
    );
}

/// A dual-stack client's connection over IPv6 holds its source port against an IPv4
/// wildcard, not against a specific IPv4 address (127.0.0.6 included); a socket bound to
/// an IPv6 address is IPV6_V6ONLY and meets no IPv4 bind. Its option unknown, a connection is
/// taken to have the default.
#[test]
fn an_ipv6_connection_without_v6only_blocks_the_ipv4_wildcard() {
    let mut h = holder(State::Established, "[::1]:52888");
    h.remote = Some("[::1]:7777".parse().unwrap());
    h.v6only = Some(false);
    let mut r = req("0.0.0.0", 52888);
    r.reuseaddr = true;
    assert!(conflicts(&r, &h));
    let d = verdict(&r, vec![h.clone()], &ctx());
    assert_eq!(d.cause, Cause::OutgoingConnectionConflict);
    assert!(d.holders[0].conflicts);
    assert!(d.hint.contains("for IPv4's 0.0.0.0 too"), "{}", d.hint);
    assert!(!conflicts(&req("127.0.0.1", 52888), &h));
    assert!(
        !conflicts(&req("127.0.0.6", 52888), &h),
        "6.1+: not its IPv4 face"
    );
    h.v6only = Some(true);
    assert!(!conflicts(&r, &h));
    // Unknown (sock_diag tells it for listening and bound sockets only): what connect() leaves,
    // the default, off. A bound socket of unknown option was bound to its address, which sets it.
    h.v6only = None;
    assert!(conflicts(&r, &h), "unknown: a connection's default");
    h.state = State::Bound;
    h.remote = None;
    assert!(
        !conflicts(&r, &h),
        "unknown: as bound, which sets IPV6_V6ONLY"
    );
}

/// A TIME-WAIT whose owner and options are unknown (made before bindtrace started), refused
/// a bind with SO_REUSEADDR: the hint infers what the connection lacked and asks only for
/// what is missing; no dangling comma where no owner is named.
#[test]
fn an_unknown_time_wait_refusing_reuseaddr_asks_only_for_the_missing_side() {
    let mut h = holder(State::TimeWait, "127.0.0.1:9060");
    h.remote = Some("127.0.0.1:9041".parse().unwrap());
    h.pid = None;
    h.comm = None;
    h.reuseaddr = None;
    h.reuseport = None;
    let mut r = req("0.0.0.0", 9060);
    r.reuseaddr = true;
    let mut c = ctx();
    c.range = Some((32768, 60999));
    let d = verdict(&r, vec![h], &c);
    assert_eq!(d.cause, Cause::TimeWaitConflict);
    assert!(
        d.hint
            .starts_with("a TIME-WAIT connection from 127.0.0.1:9060 to 127.0.0.1:9041 holds"),
        "{}",
        d.hint
    );
    assert!(
        d.hint
            .contains("so the connection's socket was made without it"),
        "{}",
        d.hint
    );
    assert!(
        d.hint.contains(
            "for good: this socket has SO_REUSEADDR already: set it on the connection's \
             socket too"
        ),
        "{}",
        d.hint
    );
    assert!(!d.hint.contains("on both sockets"), "{}", d.hint);
}

/// A connection its process closed before exiting, still in FIN_WAIT2: nothing to stop or
/// set an option on; the hint says how long the kernel keeps it and who keeps it open.
#[test]
fn an_orphaned_connection_is_waited_out_not_stopped() {
    let mut h = holder(State::FinWait2, "127.0.0.1:9103");
    h.remote = Some("127.0.0.1:9102".parse().unwrap());
    h.inode = 0;
    h.owner_alive = Some(false);
    h.source = Source::History;
    let mut r = req("127.0.0.1", 9103);
    r.reuseaddr = true;
    let mut c = ctx();
    c.range = Some((32768, 60999));
    let d = verdict(&r, vec![h.clone()], &c);
    assert_eq!(d.cause, Cause::OutgoingConnectionConflict);
    for part in [
        "(FIN_WAIT2), made by redis-cli (pid 200), uses port 9103",
        "its process has closed it",
        "127.0.0.1:9102, which holds its end in CLOSE_WAIT (a process on this host: \
         `ss -tnp state close-wait src 127.0.0.1:9102` names it), closes it first: the \
         connection then waits as a TIME-WAIT for 60 s from that moment",
        "net.ipv4.tcp_fin_timeout",
        "now: wait for it to end",
    ] {
        assert!(d.hint.contains(part), "{part:?} in {}", d.hint);
    }
    // The peer's closing does not free the port: not offered as a way out.
    assert!(!d.hint.contains("closes it too"), "{}", d.hint);
    assert!(!d.hint.contains("stop that connection"), "{}", d.hint);
    // One a process still holds is not orphaned.
    h.inode = 4242;
    let d = verdict(&r, vec![h], &c);
    assert!(d.hint.contains("stop that connection"), "{}", d.hint);
}

/// A client that bound the port itself before connecting: reserving the port would not keep it
/// off (reservation only steers the kernel's own choice), so the fix for good is the client's.
#[test]
fn a_client_that_bound_its_port_is_not_answered_with_a_reservation() {
    let mut h = holder(State::TimeWait, "127.0.0.1:35001");
    h.remote = Some("127.0.0.1:9000".parse().unwrap());
    h.expires_ms = Some(50_000);
    let mut c = ctx();
    c.range = Some((30000, 40000));
    let r = req("0.0.0.0", 35001);
    let d = verdict(&r, vec![h.clone()], &c);
    assert!(
        d.hint.contains("ip_local_reserved_ports=35001"),
        "{}",
        d.hint
    );
    h.bound_before_connect = true;
    for state in [State::TimeWait, State::Established] {
        h.state = state;
        h.inode = if state == State::TimeWait { 0 } else { 4242 };
        let d = verdict(&r, vec![h.clone()], &c);
        assert!(!d.hint.contains("ip_local_reserved_ports"), "{}", d.hint);
        assert!(
            d.hint.contains(
                "for good: the connection's process bound port 35001 itself before connecting"
            ),
            "{}",
            d.hint
        );
        assert!(d.hint.contains("no bind() before connect()"), "{}", d.hint);
    }
    // Outside the range nothing was said of reserving: the fix stays SO_REUSEADDR.
    c.range = Some((40001, 60999));
    let d = verdict(&r, vec![h], &c);
    assert!(
        d.hint.contains("set SO_REUSEADDR on both sockets") && !d.hint.contains("itself"),
        "{}",
        d.hint
    );
}

/// A new server with SO_REUSEADDR refused by its predecessor's server-side TIME-WAIT: the
/// predecessor lacked it; the hint does not ask for what this socket has.
#[test]
fn a_predecessor_without_reuseaddr_is_what_refuses_a_server_with_it() {
    let mut h = holder(State::TimeWait, "10.77.0.1:7002");
    h.remote = Some("10.77.0.2:51000".parse().unwrap());
    h.accepted = true;
    let mut r = req("0.0.0.0", 7002);
    r.reuseaddr = true;
    let d = verdict(&r, vec![h.clone()], &ctx());
    assert_eq!(d.cause, Cause::TimeWaitConflict);
    assert!(d.hint.contains(OLD_SERVER_LACKED), "{}", d.hint);
    assert!(!d.hint.contains("before bind()"), "{}", d.hint);
    r.reuseaddr = false;
    let d = verdict(&r, vec![h], &ctx());
    assert!(d.hint.contains(SERVER_FIX), "{}", d.hint);
}

/// Reserving the range's only free port would leave outgoing connections none: not proposed.
#[test]
fn the_ranges_last_free_port_is_not_proposed_for_reserving() {
    let mut h = holder(State::TimeWait, "127.0.0.1:8080");
    h.remote = Some("127.0.0.1:9000".parse().unwrap());
    let mut c = ctx();
    c.range = Some((8080, 8080));
    let d = verdict(&req("0.0.0.0", 8080), vec![h.clone()], &c);
    assert!(
        !d.hint.contains("ip_local_reserved_ports=8080"),
        "{}",
        d.hint
    );
    assert!(
        d.hint
            .contains("8080 is the only unreserved port of the ephemeral range 8080-8080"),
        "{}",
        d.hint
    );
    c.range = Some((8080, 8081));
    let d = verdict(&req("0.0.0.0", 8080), vec![h], &c);
    assert!(
        d.hint.contains("ip_local_reserved_ports=8080"),
        "{}",
        d.hint
    );
}

/// A bound socket's ways out read as one list: close it, bind fewer addresses, or the option.
#[test]
fn a_bound_sockets_ways_out_read_as_a_list() {
    let mut h = holder(State::Bound, "127.0.0.1:9310");
    h.reuseaddr = Some(false);
    let mut r = req("0.0.0.0", 9310);
    r.reuseaddr = true;
    let d = verdict(&r, vec![h], &ctx());
    assert_eq!(d.cause, Cause::BoundSocketConflict);
    assert!(
        d.hint.ends_with(
            ": close it, bind only the addresses this service needs instead of the wildcard (that \
             socket holds one address), or set SO_REUSEADDR on that socket too (this socket has \
             it)"
        ),
        "{}",
        d.hint
    );
}

/// A socket that took the port after the call failed (the script bound again at once) did not
/// refuse it: not a culprit while another socket explains the failure.
#[test]
fn a_socket_that_took_the_port_after_the_failure_is_not_a_culprit() {
    let mut first = holder(State::Listen, "0.0.0.0:9300");
    first.took_port_ns = Some(100);
    let mut after = holder(State::Listen, "[::]:9300");
    after.v6only = Some(true);
    after.took_port_ns = Some(300);
    let mut r = req("::", 9300);
    r.v6only = Some(false);
    r.at_ns = Some(200);
    // The caller's own socket.
    r.pid = after.pid.unwrap();
    let d = verdict(&r, vec![after.clone(), first.clone()], &ctx());
    assert_eq!(d.cause, Cause::DualStackConflict);
    let late = d
        .holders
        .iter()
        .find(|h| h.took_port_ns == Some(300))
        .unwrap();
    assert!(!late.conflicts, "{:?}", d.holders);
    // Alone, it is still named: nothing else explains the failure.
    let d = verdict(&r, vec![after.clone()], &ctx());
    assert!(d.holders[0].conflicts);
    // Another process's: its record may be stamped after a failure it caused (preempted before
    // its call's exit), or be of its newer socket: left as the rules say.
    r.pid += 1;
    let d = verdict(&r, vec![after, first], &ctx());
    assert!(d.holders.iter().all(|h| h.conflicts), "{:?}", d.holders);
}

/// Listeners on two devices both block an unbound wildcard: the hint names both.
#[test]
fn every_listener_that_blocks_is_named() {
    let mut a = holder(State::Listen, "0.0.0.0:9020");
    a.bound_dev_if = 3;
    a.device = Some("vethA".into());
    let mut b = a.clone();
    b.pid = Some(201);
    b.comm = Some("python3".into());
    b.bound_dev_if = 2;
    b.device = Some("veth0".into());
    let d = verdict(&req("0.0.0.0", 9020), vec![a.clone(), b.clone()], &ctx());
    assert_eq!(d.cause, Cause::ListenerConflict);
    assert!(
        d.hint.contains(
            "it is not alone: python3 (pid 201) at 0.0.0.0:9020 on device veth0 also holds"
        ),
        "{}",
        d.hint
    );
    // Binding to either device would fail as well: both are named.
    assert!(
        d.hint
            .contains("(those sockets are bound to device vethA and veth0 only: bound to another"),
        "{}",
        d.hint
    );
    // The caller's own other socket is its own.
    let mut r = req("0.0.0.0", 9020);
    r.pid = 201;
    let d = verdict(&r, vec![a.clone(), b], &ctx());
    assert!(
        d.hint
            .contains("it is not alone: this process at 0.0.0.0:9020"),
        "{}",
        d.hint
    );
    // One socket on no device: binding to a device would not help.
    let mut anywhere = a.clone();
    anywhere.pid = Some(202);
    anywhere.bound_dev_if = 0;
    anywhere.device = None;
    let d = verdict(&req("0.0.0.0", 9020), vec![a, anywhere], &ctx());
    assert!(!d.hint.contains("could have the port beside"), "{}", d.hint);
}

#[test]
fn udp_and_devices() {
    let mut r = req("127.0.0.1", 5353);
    r.udp = true;
    r.reuseaddr = true;
    let mut h = holder(State::Bound, "127.0.0.1:5353");
    h.protocol = "udp".into();
    let d = verdict(&r, vec![h.clone()], &ctx());
    assert_eq!(d.cause, Cause::UdpConflict);
    h.reuseaddr = Some(true);
    assert!(!conflicts(&r, &h), "UDP shares when both set SO_REUSEADDR");
    let mut r = req("0.0.0.0", 8080);
    r.bound_dev_if = 2;
    let mut h = holder(State::Listen, "0.0.0.0:8080");
    h.bound_dev_if = 3;
    assert!(!conflicts(&r, &h), "different devices do not conflict");
}

/// A client's TIME-WAIT on an ephemeral port: what lets the bind through now (SO_REUSEADDR
/// when the connection had it, else waiting out the timer) and what keeps it from recurring
/// (reserving the port).
#[test]
fn a_time_wait_hint_gives_the_fix_for_now_and_for_good() {
    let mut h = holder(State::TimeWait, "10.0.0.1:40000");
    h.remote = Some("10.0.0.2:443".parse().unwrap());
    h.expires_ms = Some(41_200);
    let mut c = ctx();
    c.range = Some((32768, 60999));
    let d = verdict(&req("0.0.0.0", 40000), vec![h.clone()], &c);
    assert!(
        d.hint
            .contains("now: wait for the TIME-WAIT to end (42 s left)"),
        "{}",
        d.hint
    );
    assert!(
        d.hint
            .contains("; for good: port 40000 lies in the ephemeral range"),
        "{}",
        d.hint
    );
    // Of several, the wait is for the last to end (a crashed server's closed connections).
    let mut later = h.clone();
    later.remote = Some("10.0.0.3:443".parse().unwrap());
    later.expires_ms = Some(59_000);
    let d = verdict(&req("0.0.0.0", 40000), vec![h.clone(), later], &c);
    assert_eq!(d.holders[0].remote, Some("10.0.0.3:443".parse().unwrap()));
    assert!(d.hint.contains("(59 s left)"), "{}", d.hint);
    assert!(
        d.hint
            .ends_with(" (2 TIME-WAITs hold the port; this one ends last)"),
        "{}",
        d.hint
    );
    h.reuseaddr = Some(true);
    let d = verdict(&req("0.0.0.0", 40000), vec![h.clone()], &c);
    assert!(
        d.hint
            .contains("now: set SO_REUSEADDR on this socket (that connection had it)")
    );
    // Outside the range: sharing is the fix for good too.
    h.reuseaddr = Some(false);
    let d = verdict(&req("0.0.0.0", 8080), vec![h], &c);
    assert!(
        d.hint
            .contains("for good: set SO_REUSEADDR on both sockets"),
        "{}",
        d.hint
    );
}

/// A connected UDP socket on the port is a client's, its port the kernel's choice from the
/// ephemeral range: the seed's conflict in UDP, fixed by reserving the port.
#[test]
fn a_connected_udp_client_on_an_ephemeral_port_gets_the_reserve_fix() {
    let mut r = req("0.0.0.0", 40000);
    r.udp = true;
    let mut h = holder(State::Established, "127.0.0.1:40000");
    h.protocol = "udp".into();
    h.remote = Some("127.0.0.1:53".parse().unwrap());
    let mut c = ctx();
    c.range = Some((32768, 60999));
    let d = verdict(&r, vec![h.clone()], &c);
    assert_eq!(d.cause, Cause::OutgoingConnectionConflict);
    assert!(
        d.hint
            .contains("a UDP socket connected from 127.0.0.1:40000 to 127.0.0.1:53")
    );
    assert!(
        d.hint.contains("ip_local_reserved_ports=40000"),
        "{}",
        d.hint
    );
    // Unconnected, on an ephemeral port: a receiver, or a client that sent without bind().
    h.state = State::Bound;
    h.remote = None;
    let d = verdict(&r, vec![h], &c);
    assert_eq!(d.cause, Cause::UdpConflict);
    assert!(d.hint.contains("sent without bind()"), "{}", d.hint);
    assert!(
        d.hint.contains("ip_local_reserved_ports=40000"),
        "{}",
        d.hint
    );
}

/// UDP receivers share a port with SO_REUSEADDR on both: the hint names the side without it,
/// also across families (a JVM's MulticastSocket on `[::]` has it; a plain socket has not).
#[test]
fn udp_sharing_names_the_side_without_so_reuseaddr() {
    let mut r = req("0.0.0.0", 5000);
    r.udp = true;
    r.reuseaddr = true;
    let mut h = holder(State::Bound, "0.0.0.0:5000");
    h.protocol = "udp".into();
    let d = verdict(&r, vec![h.clone()], &ctx());
    assert!(
        d.hint.contains("set SO_REUSEADDR on that socket too"),
        "{}",
        d.hint
    );
    // And for SO_REUSEPORT, which that socket has and this one lacks.
    let mut rp = h.clone();
    rp.reuseport = Some(true);
    rp.reuseaddr = Some(false);
    r.reuseaddr = false;
    let d = verdict(&r, vec![rp], &ctx());
    assert!(
        d.hint
            .contains("or SO_REUSEPORT on this socket (that one has it already)"),
        "{}",
        d.hint
    );
    r.reuseaddr = true;
    let mut jvm = h.clone();
    jvm.local = "[::]:5000".parse().unwrap();
    jvm.v6only = Some(false);
    jvm.comm = Some("java".into());
    jvm.reuseaddr = Some(true);
    r.reuseaddr = false;
    let d = verdict(&r, vec![jvm], &ctx());
    assert_eq!(d.cause, Cause::DualStackConflict);
    assert!(
        d.hint.contains("set SO_REUSEADDR on this socket"),
        "{}",
        d.hint
    );
    // An IPv6 socket bound to `[::ffff:0.0.0.0]` holds the IPv4 wildcard: the IPv6 wildcard
    // asked for is this socket's.
    let mut mapped = holder(State::Listen, "[::ffff:0.0.0.0]:5000");
    mapped.v6only = Some(false);
    let mut v6 = req("::", 5000);
    v6.v6only = Some(false);
    let d = verdict(&v6, vec![mapped], &ctx());
    assert_eq!(d.cause, Cause::DualStackConflict);
    assert!(
        d.hint.contains("or set IPV6_V6ONLY on this socket"),
        "{}",
        d.hint
    );
}

#[test]
fn exhaustion_and_other_errnos() {
    let mut r = req("0.0.0.0", 0);
    r.syscall = SyscallName::Connect;
    r.errno = EADDRNOTAVAIL;
    r.remote = Some("10.0.0.5:6379".parse().unwrap());
    let c = PortContext {
        range: Some((40000, 40009)),
        reserved: vec![],
        ports_in_use: Some(10),
        device: None,
        address: None,
        unprivileged_start: None,
        tw_reuse: None,
        users: None,
    };
    let d = verdict(&r, vec![], &c);
    assert_eq!(d.cause, Cause::EphemeralExhausted);
    assert_eq!(d.port_range.as_deref(), Some("40000-40009"));
    assert!(
        d.hint.contains("towards 10.0.0.5:6379 (10 in use)"),
        "{}",
        d.hint
    );

    let mut r = req("0.0.0.0", 80);
    r.errno = EACCES;
    assert_eq!(verdict(&r, vec![], &ctx()).cause, Cause::PrivilegedPort);
    r.errno = EADDRNOTAVAIL;
    assert_eq!(verdict(&r, vec![], &ctx()).cause, Cause::AddressNotLocal);
    r.errno = EINVAL;
    assert_eq!(verdict(&r, vec![], &ctx()).cause, Cause::AlreadyBound);
}

#[test]
fn einval_names_the_address_check_that_refused() {
    use Cause::{
        AlreadyBound, LinkLocalWithoutInterface, MappedAddressOnV6Only, MulticastAddress, Unknown,
    };
    let (fresh, bound) = (Some(false), Some(true));
    // (address, udp, IPV6_V6ONLY, device, socket in use, cause)
    let cases = [
        ("127.0.0.1", false, None, 0, bound, AlreadyBound),
        ("127.0.0.1", false, None, 0, None, AlreadyBound),
        ("127.0.0.1", false, None, 0, fresh, Unknown),
        ("::1", false, Some(false), 0, bound, AlreadyBound),
        (
            "fe80::1",
            false,
            Some(false),
            0,
            fresh,
            LinkLocalWithoutInterface,
        ),
        (
            "ff02::1",
            true,
            Some(false),
            0,
            None,
            LinkLocalWithoutInterface,
        ),
        // The kernel checks the state first: a bound socket's second bind is that, whatever
        // the address (its scope id is not in the event; binding a specific address set
        // V6ONLY).
        ("fe80::1", false, Some(false), 0, bound, AlreadyBound),
        (
            "::ffff:127.0.0.1",
            false,
            Some(true),
            0,
            bound,
            AlreadyBound,
        ),
        ("fe80::1", false, Some(false), 2, fresh, Unknown),
        // Multicast on TCP is checked before the state.
        ("ff05::1", false, None, 0, bound, MulticastAddress),
        ("ff05::1", true, None, 0, None, AlreadyBound),
        (
            "::ffff:127.0.0.1",
            false,
            Some(true),
            0,
            fresh,
            MappedAddressOnV6Only,
        ),
        (
            "::ffff:127.0.0.1",
            false,
            Some(false),
            0,
            None,
            AlreadyBound,
        ),
    ];
    for (addr, udp, v6only, dev, in_use, want) in cases {
        let mut r = req(addr, 9000);
        r.errno = EINVAL;
        r.udp = udp;
        r.v6only = v6only;
        r.bound_dev_if = dev;
        r.in_use = in_use;
        let d = verdict(&r, vec![], &ctx());
        assert!(!d.hint.is_empty());
        assert_eq!(
            d.cause, want,
            "{addr} udp={udp} dev={dev} in_use={in_use:?}"
        );
    }
}

#[test]
fn other_errnos_have_their_own_causes() {
    let d = |errno: i32| {
        let mut r = req("10.1.2.3", 9000);
        r.errno = errno;
        verdict(&r, vec![], &ctx())
    };
    assert_eq!(d(ENODEV).cause, Cause::NoSuchDevice);
    assert_eq!(d(EPERM).cause, Cause::RefusedByBpf);
    assert_eq!(d(EAFNOSUPPORT).cause, Cause::WrongFamily);
    let other = d(105);
    assert_eq!(other.cause, Cause::Unknown);
    assert!(
        other
            .hint
            .contains("E105 from bind() is not a port conflict"),
        "{}",
        other.hint
    );
}

#[test]
fn a_refused_address_is_judged_by_what_the_namespace_has_now() {
    let hint = |addr: &str, now: Option<AddressNow>| {
        let mut r = req(addr, 9000);
        r.errno = EADDRNOTAVAIL;
        let mut c = ctx();
        c.address = now;
        let d = verdict(&r, vec![], &c);
        assert_eq!(d.cause, Cause::AddressNotLocal);
        d.hint
    };
    let h = hint("2001:db8::7", Some(AddressNow::Tentative("eth0".into())));
    assert!(h.contains("tentative"), "{h}");
    assert!(h.contains("net.ipv6.conf.eth0.accept_dad=0"), "{h}");
    assert!(h.contains("net.ipv6.ip_nonlocal_bind=1"), "{h}");
    let h = hint("2001:db8::7", Some(AddressNow::DadFailed("eth0".into())));
    assert!(h.contains("failed duplicate address detection"), "{h}");
    let h = hint("192.0.2.5", Some(AddressNow::Present("eth0".into())));
    assert!(h.contains("is on eth0 now"), "{h}");
    assert!(
        h.contains("IP_FREEBIND / net.ipv4.ip_nonlocal_bind=1"),
        "{h}"
    );
    let h = hint("192.0.2.5", Some(AddressNow::Absent));
    assert!(
        h.contains("none of its interfaces has it now either"),
        "{h}"
    );
    assert!(h.contains("(or 0.0.0.0)"), "{h}");
    let h = hint("2001:db8::9", None);
    assert!(h.contains("(or [::])"), "{h}");
    assert!(!h.contains("now either"), "{h}");
}

#[test]
fn a_servers_own_connections_are_named_as_accepted() {
    let mut tw = holder(State::TimeWait, "127.0.0.1:40000");
    tw.remote = Some("127.0.0.1:40001".parse().unwrap());
    tw.source = Source::History;
    tw.accepted = true;
    tw.age_ms = Some(5000);
    tw.owner_alive = Some(false);
    let d = verdict(&req("0.0.0.0", 40000), vec![tw.clone()], &ctx());
    assert_eq!(d.cause, Cause::TimeWaitConflict);
    assert!(
        d.hint
            .contains("accepted by the listener redis-cli (pid 200)"),
        "{}",
        d.hint
    );
    assert!(
        d.hint.contains("SO_REUSEADDR on the listening socket"),
        "{}",
        d.hint
    );
    assert!(
        !d.hint.contains("ip_local_reserved_ports"),
        "a server's own port needs no reservation: {}",
        d.hint
    );
    let mut est = tw;
    est.state = State::Established;
    est.source = Source::Live;
    let d = verdict(&req("0.0.0.0", 40000), vec![est.clone()], &ctx());
    assert_eq!(d.cause, Cause::AcceptedConnectionConflict);
    est.accepted = false;
    let d = verdict(&req("0.0.0.0", 40000), vec![est], &ctx());
    assert_eq!(d.cause, Cause::OutgoingConnectionConflict);
}

#[test]
fn exhaustion_hints_fit_the_call_that_wanted_a_port() {
    let hint = |syscall: SyscallName| {
        let mut r = req("0.0.0.0", 0);
        r.syscall = syscall;
        let d = verdict(&r, vec![], &ctx());
        assert_eq!(d.cause, Cause::EphemeralExhausted);
        d.hint
    };
    assert!(hint(SyscallName::Listen).contains("bind() the port"));
    assert!(hint(SyscallName::Bind).contains("bind() to port 0"));
}

#[test]
fn a_listener_shared_by_forked_workers_asks_to_stop_them_all() {
    let mut h = holder(State::Listen, "0.0.0.0:8080");
    h.comm = Some("gunicorn".into());
    h.shared_with = vec![201, 202];
    let d = verdict(&req("0.0.0.0", 8080), vec![h], &ctx());
    assert_eq!(d.cause, Cause::ListenerConflict);
    assert!(
        d.hint.contains(
            "gunicorn (pid 200) (with pids 201, 202, which share its socket) is already \
             listening"
        ),
        "{}",
        d.hint
    );
    assert!(d.hint.contains("stop all of them"), "{}", d.hint);
}

#[test]
fn an_inherited_socket_names_who_opened_it() {
    let mut h = holder(State::Listen, "0.0.0.0:8080");
    h.comm = Some("sleep".into());
    h.opened_by = Some(Opener {
        pid: 300,
        comm: "server".into(),
        alive: false,
    });
    let d = verdict(&req("0.0.0.0", 8080), vec![h.clone()], &ctx());
    assert_eq!(d.cause, Cause::ListenerConflict);
    assert!(
        d.hint
            .contains("which server (pid 300, since exited) opened"),
        "{}",
        d.hint
    );
    assert!(d.hint.contains("close-on-exec"), "{}", d.hint);
    h.comm = Some("server".into());
    h.shared_with = vec![201, 202];
    let mut r = req("0.0.0.0", 8080);
    r.pid = 300;
    let d = verdict(&r, vec![h], &ctx());
    assert!(d.hint.contains("which this process opened"), "{}", d.hint);
    assert!(
        d.hint
            .contains("stop server (pid 200) and pids 201, 202 (the server's process group"),
        "{}",
        d.hint
    );
    // The server's own worker, or itself daemonized: no talk of descriptors leaked.
    assert!(d.hint.contains("runs the same program"), "{}", d.hint);
    assert!(!d.hint.contains("close-on-exec"), "{}", d.hint);
    let mut h = holder(State::Listen, "0.0.0.0:8080");
    h.comm = Some("mysvc".into());
    h.shared_with = vec![201];
    h.opened_by = Some(Opener {
        pid: 300,
        comm: "activator".into(),
        alive: false,
    });
    let d = verdict(&req("0.0.0.0", 8080), vec![h], &ctx());
    assert!(
        d.hint.contains("stop mysvc (pid 200) and pid 201,"),
        "{}",
        d.hint
    );
    assert!(
        d.hint.contains("inherited it or was handed it"),
        "{}",
        d.hint
    );
}

#[test]
fn a_wildcard_against_one_address_is_told_to_narrow() {
    let mut r = req("0.0.0.0", 53);
    r.udp = true;
    let mut h = holder(State::Bound, "127.0.0.53:53");
    h.protocol = "udp".into();
    let d = verdict(&r, vec![h], &ctx());
    assert_eq!(d.cause, Cause::UdpConflict);
    assert!(
        d.hint
            .contains("stop it, choose another port, bind only the addresses this service needs"),
        "{}",
        d.hint
    );
    let d = verdict(
        &req("0.0.0.0", 80),
        vec![holder(State::Listen, "0.0.0.0:80")],
        &ctx(),
    );
    assert!(
        !d.hint.contains("addresses this service needs"),
        "{}",
        d.hint
    );
}

#[test]
fn daemons_that_hold_ports_on_purpose_are_explained() {
    let note = |comm: &str| {
        let mut h = holder(State::Listen, "0.0.0.0:8080");
        h.comm = Some(comm.into());
        verdict(&req("0.0.0.0", 8080), vec![h], &ctx()).hint
    };
    assert!(note("systemd").contains("systemctl list-sockets | grep 8080"));
    assert!(note("docker-proxy").contains("docker ps --filter publish=8080"));
    assert!(note("kube-proxy").contains("--service-node-port-range"));
    assert!(
        note("nginx").ends_with("choose another port"),
        "{}",
        note("nginx")
    );
}

/// SO_REUSEADDR lifts a conflict with a TIME-WAIT, a connection or a bound socket only when
/// both sockets have it: the hint asks it of the side that lacks it.
#[test]
fn the_reuseaddr_fix_names_the_side_that_lacks_it() {
    let hint = |state: State, ours: bool, theirs: bool| {
        let mut r = req("127.0.0.1", 80);
        r.reuseaddr = ours;
        let mut h = holder(state, "127.0.0.1:80");
        h.remote = Some("127.0.0.1:9000".parse().unwrap());
        h.reuseaddr = Some(theirs);
        verdict(&r, vec![h], &ctx()).hint
    };
    for state in [State::TimeWait, State::Established, State::Bound] {
        let h = hint(state, true, false);
        assert!(
            h.contains("this socket has SO_REUSEADDR already but")
                || h.contains("set SO_REUSEADDR on that socket too (this socket has it)"),
            "{h}"
        );
        let h = hint(state, false, true);
        assert!(h.contains("set SO_REUSEADDR on this socket ("), "{h}");
        let h = hint(state, false, false);
        assert!(h.contains("set SO_REUSEADDR on both sockets"), "{h}");
    }
    let mut r = req("0.0.0.0", 5353);
    r.udp = true;
    let mut h = holder(State::Bound, "0.0.0.0:5353");
    h.protocol = "udp".into();
    h.reuseaddr = Some(true);
    let d = verdict(&r, vec![h], &ctx());
    assert_eq!(d.cause, Cause::UdpConflict);
    assert!(
        d.hint.contains("set SO_REUSEADDR on this socket"),
        "{}",
        d.hint
    );
}

/// A listener still listed but open in no process, whose remembered owner has exited: it was
/// closing as bindtrace looked, or the kernel holds it; the hint says how to tell. Not said of
/// a live holder, nor of a TIME-WAIT or an orphaned connection (which outlive their process by
/// design).
#[test]
fn a_holder_whose_owner_just_exited_is_said_to_be_going() {
    let going = |state: State, source: Source| {
        let mut h = holder(state, "0.0.0.0:8080");
        h.source = source;
        h.owner_alive = Some(false);
        verdict(&req("0.0.0.0", 8080), vec![h], &ctx())
            .hint
            .contains("the port is free again; if it still does")
    };
    assert!(going(State::Listen, Source::History));
    assert!(!going(State::Listen, Source::Live));
    assert!(!going(State::TimeWait, Source::History));
    // An orphaned connection holds the port until it ends: not said of it either.
    assert!(!going(State::FinWait2, Source::History));
}

/// A range wholly reserved leaves the kernel no port to choose, whatever is in use: the hint says
/// so, not to pool connections.
#[test]
fn a_range_wholly_reserved_is_said_to_be() {
    let mut r = req("0.0.0.0", 0);
    r.errno = EADDRINUSE;
    let mut c = ctx();
    c.range = Some((40000, 40003));
    // Overlapping reservations count each port once.
    c.reserved = vec![(39990, 40001), (40001, 40002), (40003, 40003)];
    c.ports_in_use = Some(0);
    let d = verdict(&r, vec![], &c);
    assert_eq!(d.cause, Cause::EphemeralExhausted);
    assert!(d.hint.contains("(4 of its 4 ports reserved)"), "{}", d.hint);
    assert!(
        d.hint.contains("every port of the range is reserved"),
        "{}",
        d.hint
    );
    assert!(!d.hint.contains("IP_BIND_ADDRESS_NO_PORT"), "{}", d.hint);
    c.reserved.pop();
    let d = verdict(&r, vec![], &c);
    assert!(d.hint.contains("(3 of its 4 ports reserved)"), "{}", d.hint);
    assert!(!d.hint.contains("every port"), "{}", d.hint);
}

/// An exhausted range's hint says who holds it, how much of it is reserved, and, when
/// TIME-WAITs take the ports of a connect() and tcp_tw_reuse is off, how to reuse them.
#[test]
fn an_exhausted_range_says_who_holds_it() {
    let mut r = req("0.0.0.0", 0);
    r.syscall = SyscallName::Connect;
    r.errno = EADDRNOTAVAIL;
    r.remote = Some("10.0.0.5:443".parse().unwrap());
    let mut c = ctx();
    c.range = Some((40000, 40003));
    c.reserved = vec![(40003, 40010)];
    c.ports_in_use = Some(4);
    c.tw_reuse = Some(0);
    c.users = Some(PortUsers {
        by_state: [("ESTABLISHED".to_string(), 2), ("TIME_WAIT".to_string(), 2)].into(),
        top: vec![
            PortUser {
                pid: 7,
                comm: "curl".into(),
                alive: false,
                sockets: 2,
                processes: 1,
                exited: 1,
            },
            PortUser {
                pid: 42,
                comm: "python3".into(),
                alive: true,
                sockets: 1,
                processes: 1,
                exited: 0,
            },
        ],
        sampled: 4,
        unattributed: 1,
    });
    let d = verdict(&r, vec![], &c);
    assert_eq!(d.cause, Cause::EphemeralExhausted);
    for part in [
        "40000-40003 (1 of its 4 ports reserved) towards 10.0.0.5:443",
        "(4 in use: 2 ESTABLISHED, 2 TIME_WAIT; by curl (pid 7, exited) 2, python3 (pid 42) 1; \
         1 with no process found)",
        "2 of them are TIME-WAIT: `sysctl -w net.ipv4.tcp_tw_reuse=1`",
        "(this namespace has 0)",
    ] {
        assert!(d.hint.contains(part), "{part} in: {}", d.hint);
    }
    assert_eq!(d.port_users.as_ref().map(|u| u.sampled), Some(4));
    // The failing process among them is said to be itself.
    r.pid = 42;
    assert!(
        verdict(&r, vec![], &c)
            .hint
            .contains(", this process (python3, pid 42) 1;"),
        "{}",
        verdict(&r, vec![], &c).hint
    );
    r.pid = 100;
    // A client run once per request: its processes are one program.
    let users = c.users.as_mut().unwrap();
    users.top[0].processes = 3;
    users.top[0].exited = 2;
    assert!(
        verdict(&r, vec![], &c)
            .hint
            .contains("by curl (3 processes, e.g. pid 7, 2 exited) 2, python3 (pid 42) 1"),
        "{}",
        verdict(&r, vec![], &c).hint
    );
    // With TIME-WAIT reuse on, or for a bind(0), the sysctl is not offered.
    c.tw_reuse = Some(1);
    assert!(!verdict(&r, vec![], &c).hint.contains("tcp_tw_reuse"));
    r.syscall = SyscallName::Bind;
    r.errno = EADDRINUSE;
    c.tw_reuse = Some(0);
    assert!(!verdict(&r, vec![], &c).hint.contains("tcp_tw_reuse"));
}

/// A holder bound to one device blocks an unbound socket; bound to another device, the new
/// socket could share the port: the hint says so, naming the device. Not said when the
/// request is itself bound (to the same device, since they conflict).
#[test]
fn a_device_bound_holder_is_named_with_its_device() {
    let mut h = holder(State::Listen, "0.0.0.0:8080");
    h.bound_dev_if = 3;
    h.device = Some("eth1".into());
    let d = verdict(&req("0.0.0.0", 8080), vec![h.clone()], &ctx());
    assert!(d.hint.contains("bound to device eth1 only"), "{}", d.hint);
    let mut r = req("0.0.0.0", 8080);
    r.bound_dev_if = 3;
    assert!(
        !verdict(&r, vec![h], &ctx())
            .hint
            .contains("bound to device")
    );
}

/// The privileged-port hint gives the namespace's own threshold when it was read.
#[test]
fn a_privileged_port_hint_gives_the_namespaces_threshold() {
    let mut r = req("0.0.0.0", 443);
    r.errno = EACCES;
    let mut c = ctx();
    c.unprivileged_start = Some(500);
    let d = verdict(&r, vec![], &c);
    assert_eq!(d.cause, Cause::PrivilegedPort);
    assert!(d.hint.contains("(500 in this namespace)"), "{}", d.hint);
    assert!(d.hint.contains("a port of 500 or more"), "{}", d.hint);
    let d = verdict(&r, vec![], &ctx());
    assert!(d.hint.contains("a port of 1024 or more"), "{}", d.hint);
    // At or above the threshold, the kernel did not refuse it: a security module did.
    let mut r = req("0.0.0.0", 8081);
    r.errno = EACCES;
    let d = verdict(&r, vec![], &c);
    assert_eq!(d.cause, Cause::RefusedBySecurityModule);
    assert!(
        d.hint.contains("a security module refused the bind"),
        "{}",
        d.hint
    );
}

/// A JVM cannot set IPV6_V6ONLY, and -Djava.net.preferIPv4Stack=true would bind the same
/// IPv4 port: it is told to bind a specific address; Node is told its option; others get the
/// plain setsockopt advice. The same on whichever side the wildcard is.
#[test]
fn the_v6only_fix_fits_the_program() {
    let hint = |comm: &str, ours: bool| {
        let (mut r, mut h) = if ours {
            (req("::", 8080), holder(State::Listen, "0.0.0.0:8080"))
        } else {
            (req("0.0.0.0", 8080), holder(State::Listen, "[::]:8080"))
        };
        if ours {
            r.v6only = Some(false);
            r.comm = comm.into();
        } else {
            h.v6only = Some(false);
            h.comm = Some(comm.into());
        }
        let d = verdict(&r, vec![h], &ctx());
        assert_eq!(d.cause, Cause::DualStackConflict);
        d.hint
    };
    for ours in [true, false] {
        let java = hint("java", ours);
        assert!(java.contains("a JVM cannot set it"), "{java}");
        assert!(!java.contains("preferIPv4Stack"), "{java}");
        assert!(hint("node", ours).contains("ipv6Only: true"));
        let other = hint("busybox", ours);
        assert!(other.contains("set IPV6_V6ONLY on"), "{other}");
        assert!(!other.contains("JVM") && !other.contains("Node"), "{other}");
    }
}

#[test]
fn a_reuseport_group_tells_a_newcomer_to_join_it() {
    let mut h = holder(State::Listen, "0.0.0.0:8080");
    h.reuseport = Some(true);
    let d = verdict(&req("0.0.0.0", 8080), vec![h], &ctx());
    assert!(
        d.hint
            .contains("with SO_REUSEPORT (set it on this socket too"),
        "{}",
        d.hint
    );
}

#[test]
fn nothing_found_is_unknown_honestly() {
    let d = verdict(&req("0.0.0.0", 8080), vec![], &ctx());
    assert_eq!(d.cause, Cause::Unknown);
    assert!(d.holders.is_empty());
    assert!(
        d.hint.contains("no socket holding port 8080 was found"),
        "{}",
        d.hint
    );
}

#[test]
fn diagnosis_json_keys() {
    let mut h = holder(State::TimeWait, "127.0.0.1:8080");
    h.source = Source::History;
    let d = verdict(&req("0.0.0.0", 8080), vec![h], &ctx());
    let v = serde_json::to_value(&d).unwrap();
    assert_eq!(v["cause"], "time_wait_conflict");
    assert_eq!(v["holders"][0]["state"], "TIME_WAIT");
    assert_eq!(v["holders"][0]["source"], "history");
    assert_eq!(v["holders"][0]["local"], "127.0.0.1:8080");
    assert_eq!(v["port_range"], "5000-65535");
    let back: Diagnosis = serde_json::from_value(v).unwrap();
    assert_eq!(back, d);
}

#[test]
fn an_ipv6_clients_time_wait_blocks_an_ipv4_wildcard_bind() {
    // `curl -6` from an exited process: its TIME-WAIT on [::1]:P, whose IPV6_V6ONLY sock_diag
    // does not tell, blocks 0.0.0.0:P, not 127.0.0.1:P.
    let mut r = req("0.0.0.0", 42008);
    r.reuseaddr = true;
    let mut tw = holder(State::TimeWait, "[::1]:42008");
    tw.remote = Some("[::1]:9003".parse().unwrap());
    tw.source = Source::History;
    tw.comm = Some("curl".into());
    tw.owner_alive = Some(false);
    tw.reuseaddr = None;
    tw.reuseport = None;
    tw.expires_ms = Some(50_000);
    let d = verdict(&r, vec![tw.clone()], &ctx());
    assert_eq!(d.cause, Cause::TimeWaitConflict, "{d:?}");
    assert!(d.holders[0].conflicts);
    let specific = verdict(&req("127.0.0.1", 42008), vec![tw.clone()], &ctx());
    assert!(!specific.holders[0].conflicts, "only the IPv4 wildcard");
    // A client that set IPV6_V6ONLY (known from the history) leaves IPv4 alone.
    tw.v6only = Some(true);
    assert!(!verdict(&r, vec![tw], &ctx()).holders[0].conflicts);
}

#[test]
fn a_nearest_socket_that_would_not_refuse_the_call_is_said_to_be_only_that() {
    // The kernel refused 0.0.0.0:8080, but the only socket seen is an IPV6_V6ONLY listener on
    // [::], which by the rules does not meet IPv4.
    let mut h = holder(State::Listen, "[::]:8080");
    h.v6only = Some(true);
    let d = verdict(&req("0.0.0.0", 8080), vec![h], &ctx());
    assert!(!d.holders[0].conflicts);
    assert!(d.hint.contains("not a certain culprit"), "{}", d.hint);
    assert!(d.hint.contains("`ss -tanpe sport = :8080`"), "{}", d.hint);
}

#[test]
fn a_time_wait_on_a_port_reserved_since_is_waited_out() {
    // The operator followed the hint and reserved the port: the TIME-WAIT of a connection made
    // before stays, and no client's socket can be changed.
    let mut r = req("0.0.0.0", 40004);
    r.reuseaddr = true;
    let mut tw = holder(State::TimeWait, "127.0.0.1:40004");
    tw.remote = Some("127.0.0.1:9000".parse().unwrap());
    tw.source = Source::History;
    tw.owner_alive = Some(false);
    tw.expires_ms = Some(31_000);
    let mut c = ctx();
    c.range = Some((40000, 40010));
    c.reserved = vec![(40004, 40004)];
    let d = verdict(&r, vec![tw], &c);
    assert_eq!(d.cause, Cause::TimeWaitConflict);
    assert!(
        d.hint
            .contains("now: wait for the TIME-WAIT to end (31 s left)"),
        "{}",
        d.hint
    );
    assert!(d.hint.contains("port 40004 is reserved now"), "{}", d.hint);
    assert!(!d.hint.contains("set it there too"), "{}", d.hint);
    assert!(!d.in_ephemeral_range);
}

/// The paths of the null values in `v`.
fn nulls(v: &serde_json::Value, at: &str, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Null => out.push(at.to_string()),
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                nulls(x, &format!("{at}.{k}"), out);
            }
        }
        serde_json::Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                nulls(x, &format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn unknown_facts_are_left_out_of_the_json_not_null() {
    // A TIME-WAIT nobody remembers: no owner, no options, no age.
    let mut h = Holder::new(
        State::TimeWait,
        false,
        "127.0.0.1:8080".parse().unwrap(),
        Source::Unknown,
    );
    h.remote = Some("127.0.0.1:6379".parse().unwrap());
    let listener = Holder::new(
        State::Listen,
        false,
        "0.0.0.0:8080".parse().unwrap(),
        Source::Live,
    );
    let d = verdict(
        &req("0.0.0.0", 8080),
        vec![h, listener],
        &PortContext::default(),
    );
    let v = serde_json::to_value(&d).unwrap();
    let mut found = Vec::new();
    nulls(&v, "", &mut found);
    assert!(found.is_empty(), "null keys {found:?} in {v:#}");
    // And a log line written so reads back the same.
    let back: Diagnosis = serde_json::from_value(v).unwrap();
    assert_eq!(back, d);
}

#[test]
fn a_link_local_address_without_interface_is_shown_with_the_one_that_has_it() {
    let mut r = req("fe80::1", 8080);
    r.errno = EINVAL;
    let mut c = ctx();
    let d = verdict(&r, vec![], &c);
    assert_eq!(d.cause, Cause::LinkLocalWithoutInterface);
    assert!(d.hint.contains("fe80::1%eth0 in most tools"), "{}", d.hint);
    c.address = Some(AddressNow::Present("veth-a".into()));
    let d = verdict(&r, vec![], &c);
    assert!(
        d.hint.contains("fe80::1%veth-a in most tools"),
        "{}",
        d.hint
    );
}

#[test]
fn a_holder_in_a_pod_is_named_with_it() {
    let mut r = req("0.0.0.0", 41010);
    r.reuseaddr = true;
    let mut tw = holder(State::TimeWait, "10.0.0.10:41010");
    tw.remote = Some("10.0.0.10:8080".parse().unwrap());
    tw.source = Source::History;
    tw.comm = Some("curl".into());
    tw.container.pod_namespace = Some("default".into());
    tw.container.pod_name = Some("curl-client-6b7f9".into());
    let d = verdict(&r, vec![tw], &ctx());
    assert!(
        d.hint
            .contains("by curl (pid 200, pod default/curl-client-6b7f9)"),
        "{}",
        d.hint
    );
}

/// A failure against thousands of TIME-WAITs names the first holders and counts the rest by
/// state, so that a log line stays small.
#[test]
fn holders_beyond_a_limit_are_counted_not_listed() {
    let holders: Vec<Holder> = (0..20)
        .map(|i| {
            let mut h = holder(State::TimeWait, "127.0.0.1:8001");
            h.remote = Some(format!("127.0.0.1:{}", 40000 + i).parse().unwrap());
            h
        })
        .collect();
    let mut d = verdict(&req("0.0.0.0", 8001), holders, &ctx());
    d.keep_holders(16);
    assert_eq!(d.holders.len(), 16);
    assert_eq!(d.omitted(), 4);
    let v = serde_json::to_value(&d).unwrap();
    assert_eq!(v["holders_omitted"]["TIME_WAIT"], 4, "{v:#}");
    d.keep_holders(16);
    assert_eq!(d.omitted(), 4, "idempotent");
}

/// A listener's record whose socket had closed by the lookup and whose opener has exited: the
/// opener may have gone before the failure, leaving the socket to a worker it forked.
#[test]
fn a_closed_socket_of_an_exited_opener_may_have_been_a_workers() {
    let mut h = holder(State::Listen, "0.0.0.0:9132");
    h.source = Source::History;
    h.socket_closed = true;
    h.owner_alive = Some(false);
    let d = verdict(&req("0.0.0.0", 9132), vec![h.clone()], &ctx());
    assert!(
        d.hint.contains("a forked worker, a daemonized child"),
        "{}",
        d.hint
    );
    h.owner_alive = Some(true);
    let d = verdict(&req("0.0.0.0", 9132), vec![h], &ctx());
    assert!(!d.hint.contains("forked worker"), "{}", d.hint);
}
