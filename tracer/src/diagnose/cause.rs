//! The cause of a failure, in one word (JSON `cause`).

use serde::{Deserialize, Serialize};

/// The cause of a failure (JSON `cause`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// A listening socket holds the port.
    ListenerConflict,
    /// A TIME-WAIT connection holds the port.
    TimeWaitConflict,
    /// A connection (ESTABLISHED, SYN-SENT, ...) uses the port as its local port.
    OutgoingConnectionConflict,
    /// A connection accepted on the port (by a listener since closed) is still open.
    AcceptedConnectionConflict,
    /// A socket is bound to the port but neither listens nor connects.
    BoundSocketConflict,
    /// A UDP socket holds the port.
    UdpConflict,
    /// Both sides set SO_REUSEPORT but belong to different users.
    ReuseportMismatch,
    /// An IPv6 wildcard covers a listening or bound IPv4 socket (or the reverse). Against a
    /// connection or a TIME-WAIT that cause is given instead, the overlap in its hint.
    DualStackConflict,
    /// No free port in `ip_local_port_range` (TCP connect EADDRNOTAVAIL, bind(0) EADDRINUSE, a UDP
    /// socket's connect EAGAIN).
    EphemeralExhausted,
    /// connect() from a bound port (EADDRNOTAVAIL): a connection with the same source and
    /// destination address and port exists.
    FourTupleInUse,
    /// EACCES: a port below `ip_unprivileged_port_start` without CAP_NET_BIND_SERVICE.
    PrivilegedPort,
    /// EACCES on a port at or above `ip_unprivileged_port_start`: not the kernel's port check but
    /// a security module's (SELinux name_bind, AppArmor).
    RefusedBySecurityModule,
    /// EADDRNOTAVAIL on bind: the address is not on any interface of the namespace.
    AddressNotLocal,
    /// EINVAL: the socket is already bound, connected or listening.
    AlreadyBound,
    /// EINVAL: an IPv6 link-local address (or link-scope multicast) with no interface: neither a
    /// scope id nor SO_BINDTODEVICE.
    LinkLocalWithoutInterface,
    /// EINVAL: an IPv4-mapped address on an IPv6 socket with IPV6_V6ONLY.
    #[serde(rename = "mapped_address_on_v6only")]
    MappedAddressOnV6Only,
    /// EINVAL: a TCP socket asked for an IPv6 multicast address (`__inet6_bind()`; IPv4 has no such check).
    MulticastAddress,
    /// EAFNOSUPPORT: an address whose family field is not the socket's.
    WrongFamily,
    /// EPERM: a cgroup BPF program refused the bind (nothing else in the bind path says EPERM).
    RefusedByBpf,
    /// ENODEV: the interface named by the scope id or SO_BINDTODEVICE is not in the namespace.
    NoSuchDevice,
    /// Nothing found that explains it.
    Unknown,
}

impl Cause {
    /// Whether another socket holding the port is what this cause is about (so a holder is
    /// looked for), rather than the caller's own address, privileges or range.
    pub fn is_conflict(self) -> bool {
        matches!(
            self,
            Self::ListenerConflict
                | Self::TimeWaitConflict
                | Self::OutgoingConnectionConflict
                | Self::AcceptedConnectionConflict
                | Self::BoundSocketConflict
                | Self::UdpConflict
                | Self::ReuseportMismatch
                | Self::DualStackConflict
                | Self::FourTupleInUse
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ListenerConflict => "listener_conflict",
            Self::TimeWaitConflict => "time_wait_conflict",
            Self::OutgoingConnectionConflict => "outgoing_connection_conflict",
            Self::AcceptedConnectionConflict => "accepted_connection_conflict",
            Self::BoundSocketConflict => "bound_socket_conflict",
            Self::UdpConflict => "udp_conflict",
            Self::ReuseportMismatch => "reuseport_mismatch",
            Self::DualStackConflict => "dual_stack_conflict",
            Self::EphemeralExhausted => "ephemeral_exhausted",
            Self::FourTupleInUse => "four_tuple_in_use",
            Self::PrivilegedPort => "privileged_port",
            Self::RefusedBySecurityModule => "refused_by_security_module",
            Self::AddressNotLocal => "address_not_local",
            Self::AlreadyBound => "already_bound",
            Self::LinkLocalWithoutInterface => "link_local_without_interface",
            Self::MappedAddressOnV6Only => "mapped_address_on_v6only",
            Self::MulticastAddress => "multicast_address",
            Self::NoSuchDevice => "no_such_device",
            Self::RefusedByBpf => "refused_by_bpf",
            Self::WrongFamily => "wrong_family",
            Self::Unknown => "unknown",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_read_the_same_in_json_and_text() {
        use Cause::*;
        for c in [
            ListenerConflict,
            TimeWaitConflict,
            OutgoingConnectionConflict,
            AcceptedConnectionConflict,
            BoundSocketConflict,
            UdpConflict,
            ReuseportMismatch,
            DualStackConflict,
            EphemeralExhausted,
            FourTupleInUse,
            PrivilegedPort,
            RefusedBySecurityModule,
            AddressNotLocal,
            AlreadyBound,
            LinkLocalWithoutInterface,
            MappedAddressOnV6Only,
            MulticastAddress,
            WrongFamily,
            RefusedByBpf,
            NoSuchDevice,
            Unknown,
        ] {
            assert_eq!(serde_json::to_value(c).unwrap(), c.as_str());
        }
    }
}
