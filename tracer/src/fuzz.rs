//! Property tests: every decoder of input bindtrace does not control — ring-buffer records from
//! the kernel, netlink replies, `/proc` and tracefs text, cgroup paths, log lines — is fed
//! arbitrary input and must never panic; where there is a round trip, it must hold.
//!
//! The case count is fixed (`CASES`, or `BINDTRACE_FUZZ_CASES` for a longer run), so the time CI
//! spends here is bounded: about a second.

use proptest::prelude::*;
use tracer_common::{ABI_VERSION, BIND_EVENT_SIZE, EventKind};

use crate::{container, diagnose, event, host, owners, report, sockdiag, tracefs};

const CASES: u32 = 2000;

fn config() -> ProptestConfig {
    let cases = std::env::var("BINDTRACE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CASES);
    ProptestConfig::with_cases(cases)
}

/// A record with a valid header and arbitrary contents.
fn plausible_record() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), BIND_EVENT_SIZE).prop_map(|mut b| {
        b[0..4].copy_from_slice(&(EventKind::Failure as u32).to_ne_bytes());
        b[4..6].copy_from_slice(&ABI_VERSION.to_ne_bytes());
        b[6..8].copy_from_slice(&(BIND_EVENT_SIZE as u16).to_ne_bytes());
        b
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn ring_buffer_records_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = event::decode(&bytes);
    }

    #[test]
    fn any_well_framed_record_becomes_an_event_and_json(bytes in plausible_record()) {
        let (kind, raw) = event::decode(&bytes).expect("a well-framed record decodes");
        let ev = event::Event::from_raw(kind, &raw, i128::from);
        let json = serde_json::to_string(&ev).unwrap();
        let mut back: event::Event = serde_json::from_str(&json).unwrap();
        // The kernel's monotonic stamp is not written out (`time` is).
        back.ts_ns = ev.ts_ns;
        back.in_use = ev.in_use;
        prop_assert_eq!(back, ev);
    }

    #[test]
    fn netlink_replies_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut out = Vec::new();
        let _ = sockdiag::parse_reply(6, &bytes, &mut out);
    }

    #[test]
    fn well_framed_netlink_messages_never_panic(
        payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..160), 1..4)
    ) {
        // Correct netlink framing (length, SOCK_DIAG_BY_FAMILY) around arbitrary inet_diag_msg
        // bodies and attributes: the inner parser gets the garbage.
        let mut buf = Vec::new();
        for p in &payloads {
            let len = 16 + p.len();
            buf.extend_from_slice(&(len as u32).to_le_bytes());
            buf.extend_from_slice(&20u16.to_le_bytes());
            buf.extend_from_slice(&[0; 10]);
            buf.extend_from_slice(p);
            buf.resize(buf.len().next_multiple_of(4), 0);
        }
        let mut out = Vec::new();
        let _ = sockdiag::parse_reply(6, &buf, &mut out);
        prop_assert!(out.len() <= payloads.len());
    }

    #[test]
    fn log_lines_never_panic(line in ".{0,400}") {
        let mut s = report::Summary::default();
        s.line(&line);
    }

    #[test]
    fn log_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let mut s = report::Summary::default();
        s.read(bytes.as_slice()).unwrap();
    }

    #[test]
    fn text_from_proc_and_tracefs_never_panics(text in "(.{0,80}\n){0,8}") {
        let _ = tracefs::parse_format(&text);
        let _ = host::cgroup2_root_from(&text);
        let _ = owners::parse_proc_net(&text, 6);
        let _ = diagnose::parse_range(&text);
        let _ = diagnose::parse_reserved(&text);
        let _ = container::parse_cgroup_path(&text);
    }

    #[test]
    fn reserved_ports_round_trip(ports in proptest::collection::btree_set(1u16.., 0..40)) {
        let text = diagnose::PortContext::default().reserved_with(ports.iter().copied());
        let parsed = diagnose::parse_reserved(&text);
        let mut back = std::collections::BTreeSet::new();
        for (a, b) in parsed {
            back.extend(a..=b);
        }
        prop_assert_eq!(back, ports);
    }
}
