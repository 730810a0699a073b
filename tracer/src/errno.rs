//! Errno names and texts for the errors bind(), listen() and connect() return.

/// `(number, name, text)` — the texts are glibc's `strerror()`.
const TABLE: &[(i32, &str, &str)] = &[
    (1, "EPERM", "Operation not permitted"),
    (4, "EINTR", "Interrupted system call"),
    (9, "EBADF", "Bad file descriptor"),
    (11, "EAGAIN", "Resource temporarily unavailable"),
    (12, "ENOMEM", "Cannot allocate memory"),
    (13, "EACCES", "Permission denied"),
    (14, "EFAULT", "Bad address"),
    (19, "ENODEV", "No such device"),
    (22, "EINVAL", "Invalid argument"),
    (24, "EMFILE", "Too many open files"),
    (88, "ENOTSOCK", "Socket operation on non-socket"),
    (91, "EPROTOTYPE", "Protocol wrong type for socket"),
    (92, "ENOPROTOOPT", "Protocol not available"),
    (93, "EPROTONOSUPPORT", "Protocol not supported"),
    (95, "EOPNOTSUPP", "Operation not supported"),
    (
        97,
        "EAFNOSUPPORT",
        "Address family not supported by protocol",
    ),
    (98, "EADDRINUSE", "Address already in use"),
    (99, "EADDRNOTAVAIL", "Cannot assign requested address"),
    (101, "ENETUNREACH", "Network is unreachable"),
    (106, "EISCONN", "Transport endpoint is already connected"),
    (110, "ETIMEDOUT", "Connection timed out"),
    (111, "ECONNREFUSED", "Connection refused"),
    (114, "EALREADY", "Operation already in progress"),
    (115, "EINPROGRESS", "Operation now in progress"),
];

/// `EADDRINUSE` for 98; `E<n>` for numbers not in the table; `OK` for 0.
pub fn name(errno: i32) -> String {
    if errno == 0 {
        return "OK".to_string();
    }
    TABLE
        .iter()
        .find(|(n, ..)| *n == errno)
        .map_or_else(|| format!("E{errno}"), |(_, name, _)| (*name).to_string())
}

/// The human text of an errno ("Address already in use").
pub fn text(errno: i32) -> &'static str {
    TABLE
        .iter()
        .find(|(n, ..)| *n == errno)
        .map_or("unknown error", |(.., text)| text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_errors_bind_returns() {
        assert_eq!(name(98), "EADDRINUSE");
        assert_eq!(name(99), "EADDRNOTAVAIL");
        assert_eq!(name(13), "EACCES");
        assert_eq!(name(22), "EINVAL");
        assert_eq!(name(0), "OK");
        assert_eq!(name(4242), "E4242");
        assert_eq!(text(98), "Address already in use");
    }

    #[test]
    fn table_agrees_with_libc() {
        for (n, name, _) in TABLE {
            let expected = match *name {
                "EPERM" => libc::EPERM,
                "ENODEV" => libc::ENODEV,
                "EACCES" => libc::EACCES,
                "EINVAL" => libc::EINVAL,
                "EADDRINUSE" => libc::EADDRINUSE,
                "EADDRNOTAVAIL" => libc::EADDRNOTAVAIL,
                "EAFNOSUPPORT" => libc::EAFNOSUPPORT,
                "EOPNOTSUPP" => libc::EOPNOTSUPP,
                "EAGAIN" => libc::EAGAIN,
                _ => continue,
            };
            assert_eq!(*n, expected, "{name}");
        }
    }
}
