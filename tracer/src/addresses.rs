//! What the calling thread's network namespace has of an address now: for a bind() refused its
//! address (EADDRNOTAVAIL), whether the address came after the call, is still tentative (IPv6
//! duplicate address detection) or failed detection — each a different fix.

use std::net::{IpAddr, Ipv6Addr};

use crate::diagnose::{AddressNow, canonical};

/// `IFA_F_OPTIMISTIC`, `IFA_F_DADFAILED` and `IFA_F_TENTATIVE` (include/uapi/linux/if_addr.h).
const IFA_F_OPTIMISTIC: u32 = 0x04;
const IFA_F_DADFAILED: u32 = 0x08;
const IFA_F_TENTATIVE: u32 = 0x40;

/// `ip`'s state in the calling thread's namespace (call it there: `Netns::run_in`); None if the
/// namespace's addresses cannot be read.
pub fn state_of(ip: IpAddr) -> Option<AddressNow> {
    match canonical(ip) {
        IpAddr::V6(a) => {
            // Unlike getifaddrs(), this file has each address's DAD flags.
            let text = std::fs::read_to_string("/proc/thread-self/net/if_inet6").ok()?;
            Some(parse_if_inet6(&text, a))
        }
        IpAddr::V4(a) => ipv4_device(a.into()),
    }
}

/// Finds `a` in `/proc/net/if_inet6` ("fe800000000000000000000000000001 02 40 20 80 eth0":
/// address, index, prefix length, scope, flags, name; all hex but the name).
pub fn parse_if_inet6(text: &str, a: Ipv6Addr) -> AddressNow {
    let want = u128::from(a);
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [addr, _index, _prefix, _scope, flags, name] = f[..] else {
            continue;
        };
        if u128::from_str_radix(addr, 16) != Ok(want) {
            continue;
        }
        let flags = u32::from_str_radix(flags, 16).unwrap_or(0);
        let name = name.to_string();
        return if flags & IFA_F_DADFAILED != 0 {
            AddressNow::DadFailed(name)
        } else if flags & IFA_F_TENTATIVE != 0 && flags & IFA_F_OPTIMISTIC == 0 {
            // An optimistic address is usable while detection runs (`ipv6_chk_addr()` lets it
            // through); a plain tentative one is not.
            AddressNow::Tentative(name)
        } else {
            AddressNow::Present(name)
        };
    }
    AddressNow::Absent
}

/// The interface that has IPv4 address `a` (`addr`, network byte order), by getifaddrs().
fn ipv4_device(addr: u32) -> Option<AddressNow> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` on success; it is freed below.
    if unsafe { libc::getifaddrs(&raw mut list) } != 0 {
        return None;
    }
    let mut found = AddressNow::Absent;
    let mut p = list;
    while !p.is_null() {
        // SAFETY: a node of the list getifaddrs returned, alive until freeifaddrs.
        let ifa = unsafe { &*p };
        p = ifa.ifa_next;
        if ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: a non-null ifa_addr points to a sockaddr of its family.
        let sa = unsafe { &*ifa.ifa_addr };
        if i32::from(sa.sa_family) != libc::AF_INET {
            continue;
        }
        // SAFETY: the family is AF_INET, so this is a sockaddr_in (read unaligned: it is
        // declared as a sockaddr).
        let sin = unsafe { ifa.ifa_addr.cast::<libc::sockaddr_in>().read_unaligned() };
        if u32::from_be(sin.sin_addr.s_addr) == addr {
            // SAFETY: ifa_name is a NUL-terminated interface name.
            let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
            found = AddressNow::Present(name.to_string_lossy().into_owned());
            break;
        }
    }
    // SAFETY: `list` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(list) };
    Some(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_inet6_states() {
        let text = "\
00000000000000000000000000000001 01 80 10 80       lo
20010db8000000000000000000000007 05 40 00 40       v0
20010db8000000000000000000000008 05 40 00 c8       v0
20010db800000000000000000000000a 05 40 00 44       v0
fe800000000000000000000000000001 02 40 20 80     eth0
";
        let st = |a: &str| parse_if_inet6(text, a.parse().unwrap());
        assert_eq!(st("::1"), AddressNow::Present("lo".into()));
        assert_eq!(st("2001:db8::7"), AddressNow::Tentative("v0".into()));
        assert_eq!(st("2001:db8::8"), AddressNow::DadFailed("v0".into()));
        assert_eq!(st("2001:db8::a"), AddressNow::Present("v0".into()));
        assert_eq!(st("fe80::1"), AddressNow::Present("eth0".into()));
        assert_eq!(st("2001:db8::9"), AddressNow::Absent);
    }

    #[test]
    fn loopback_is_found_by_getifaddrs() {
        // Every namespace bindtrace runs in has lo; 127.0.0.1 is on it once lo is up, which
        // it is on any host that runs tests.
        assert_eq!(
            state_of("127.0.0.1".parse().unwrap()),
            Some(AddressNow::Present("lo".into()))
        );
        assert_eq!(
            state_of("192.0.2.77".parse().unwrap()),
            Some(AddressNow::Absent)
        );
    }
}
