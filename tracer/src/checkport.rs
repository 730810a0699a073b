//! `bindtrace check-port`: before a service starts, would its bind succeed now — and if not, who
//! would block it and why (the same verdicts as `watch`)? Also warns when the port lies inside the
//! ephemeral range without being reserved, the seed's incident waiting to happen. Exit status 0
//! (free) or 1 (blocked), to gate a pre-start hook (`ExecStartPre=bindtrace check-port 8080`).
//!
//! `--listening` instead lists the ports services listen on inside the ephemeral range and
//! proposes the `net.ipv4.ip_local_reserved_ports` value that protects them all.
//!
//! It only looks: no socket is bound, so a check cannot itself take the port from the service.

use std::{collections::BTreeSet, fs, net::IpAddr, os::unix::fs::MetadataExt};

use anyhow::{Context as _, Result, anyhow};
use clap::Args;
use serde::Serialize;

use crate::{
    cli::parse_port,
    diagnose::{self, Diagnosis, Holder, Request},
    netns,
    output::{OutputFormat, sanitize},
    owners::Investigator,
};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Proto {
    #[default]
    Tcp,
    Udp,
}

#[derive(Debug, Args)]
pub struct CheckPortArgs {
    /// The port the service will bind (not with --listening).
    #[arg(value_parser = parse_port, required_unless_present = "listening")]
    pub port: Option<u16>,

    /// The address it will bind.
    #[arg(long, default_value = "0.0.0.0")]
    pub addr: IpAddr,

    #[arg(long, value_enum, default_value_t = Proto::Tcp)]
    pub protocol: Proto,

    /// Check in the network namespace of this process (default: this one).
    #[arg(long, value_name = "PID")]
    pub pid_netns: Option<u32>,

    /// The service sets SO_REUSEADDR.
    #[arg(long)]
    pub reuseaddr: bool,

    /// The service sets SO_REUSEPORT.
    #[arg(long)]
    pub reuseport: bool,

    /// List listening ports inside the ephemeral range and propose ip_local_reserved_ports.
    #[arg(long, conflicts_with = "port")]
    pub listening: bool,

    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

fn open_netns(pid: Option<u32>) -> Result<(netns::Netns, u32)> {
    let pid = pid.unwrap_or_else(std::process::id);
    let path = format!("/proc/{pid}/ns/net");
    let inode = fs::metadata(&path)
        .with_context(|| format!("no network namespace for pid {pid} ({path})"))?
        .ino();
    let ns = netns::Finder::default()
        .open(inode, pid, pid)
        .ok_or_else(|| anyhow!("cannot open the network namespace of pid {pid}"))?;
    Ok((ns, inode as u32))
}

#[derive(Serialize)]
struct PortCheck<'a> {
    port: u16,
    protocol: &'static str,
    addr: String,
    would_fail: bool,
    /// Blocked unless options that could not be read (a TIME-WAIT's SO_REUSEADDR) are set.
    may_fail: bool,
    #[serde(flatten)]
    diagnosis: &'a Diagnosis,
}

/// `lo-hi` runs of sorted ports: `8080,9000-9002`.
pub fn ranges(ports: &BTreeSet<u16>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut it = ports.iter().copied().peekable();
    while let Some(start) = it.next() {
        let mut end = start;
        while it.peek() == Some(&(end.wrapping_add(1))) && end < u16::MAX {
            end = it.next().unwrap_or(end);
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    out.join(",")
}

/// Whether `h` blocks `req` whatever those of its options that could not be read (a TIME-WAIT's
/// SO_REUSEADDR and SO_REUSEPORT, which sock_diag does not report): assumed set, the kindest case.
fn blocks_for_certain(req: &Request, h: &Holder) -> bool {
    let mut kindest = h.clone();
    kindest.reuseaddr = kindest.reuseaddr.or(Some(true));
    kindest.reuseport = kindest.reuseport.or(Some(true));
    diagnose::conflicts(req, &kindest)
}

pub fn run(args: &CheckPortArgs) -> Result<bool> {
    let (ns, inode) = open_netns(args.pid_netns)?;
    let mut inv = Investigator::new(None);
    let udp = args.protocol == Proto::Udp;
    if args.listening {
        return listening(&mut inv, &ns, udp, args.output);
    }
    let port = args.port.ok_or_else(|| anyhow!("a port is required"))?;
    let req = Request::bind(args.addr, port, udp, args.reuseaddr, args.reuseport);
    let d = inv.investigate(&req, inode, Some(&ns));
    let blocked = d
        .holders
        .iter()
        .any(|h| h.conflicts && blocks_for_certain(&req, h));
    // Blocked only if options nobody can read now (a TIME-WAIT's) are not set.
    let uncertain = !blocked && d.holders.iter().any(|h| h.conflicts);
    let proto = if udp { "udp" } else { "tcp" };
    match args.output {
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&PortCheck {
                port,
                protocol: proto,
                addr: args.addr.to_string(),
                would_fail: blocked,
                may_fail: uncertain,
                diagnosis: &d,
            })?
        ),
        OutputFormat::Text => {
            let what = crate::event::endpoint(&args.addr.to_string(), port);
            if blocked {
                println!("{proto} {what}: a bind now would FAIL with EADDRINUSE");
                for h in d.holders.iter().filter(|h| h.conflicts) {
                    println!("    held by: {}", sanitize(&crate::output::holder_text(h)));
                }
                println!("    cause: {}: {}", d.cause.as_str(), sanitize(&d.hint));
            } else if uncertain {
                println!(
                    "{proto} {what}: a bind now MAY FAIL with EADDRINUSE: it depends on options \
                     of the socket below that cannot be read from outside (bindtrace watch, \
                     running when it was made, knows them)"
                );
                for h in d.holders.iter().filter(|h| h.conflicts) {
                    println!("    held by: {}", sanitize(&crate::output::holder_text(h)));
                }
                println!(
                    "    if it fails: {}: {}",
                    d.cause.as_str(),
                    sanitize(&d.hint)
                );
            } else {
                println!("{proto} {what}: free now");
            }
            if d.in_ephemeral_range {
                println!(
                    "    warning: {port} lies in the ephemeral range {} and is not reserved: an \
                     outgoing connection can take it at any moment; reserve it with \
                     `sysctl -w net.ipv4.ip_local_reserved_ports={port}` (add to any existing list)",
                    d.port_range.as_deref().unwrap_or("?")
                );
            }
        }
    }
    Ok(!blocked)
}

#[derive(Serialize)]
struct Listening {
    port_range: Option<String>,
    reserved_ports: String,
    /// Listening ports inside the range and not reserved, with their owners.
    unprotected: Vec<(u16, String)>,
    /// `ip_local_reserved_ports` covering the current value and those ports.
    proposed_reserved_ports: Option<String>,
}

fn listening(
    inv: &mut Investigator,
    ns: &netns::Netns,
    udp: bool,
    output: OutputFormat,
) -> Result<bool> {
    let (holders, ctx) = inv.listeners(ns, udp);
    let mut unprotected: Vec<(u16, String)> = holders
        .iter()
        .filter(|h| ctx.in_ephemeral_range(h.local.port()))
        .map(|h| {
            let who = match (&h.comm, h.pid) {
                (Some(c), Some(p)) => format!("{c}[{p}]"),
                _ => "?".to_string(),
            };
            (h.local.port(), who)
        })
        .collect();
    unprotected.sort();
    unprotected.dedup();
    let mut reserved: BTreeSet<u16> = BTreeSet::new();
    for &(a, b) in &ctx.reserved {
        reserved.extend(a..=b);
    }
    let current = ranges(&reserved);
    reserved.extend(unprotected.iter().map(|(p, _)| *p));
    let report = Listening {
        port_range: ctx.range.map(|(lo, hi)| format!("{lo}-{hi}")),
        reserved_ports: current,
        proposed_reserved_ports: (!unprotected.is_empty()).then(|| ranges(&reserved)),
        unprotected,
    };
    match output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        OutputFormat::Text => {
            let range = report.port_range.as_deref().unwrap_or("?");
            if report.unprotected.is_empty() {
                println!("no listening port lies inside the ephemeral range {range} unreserved");
            } else {
                println!("listening ports inside the ephemeral range {range}, not reserved:");
                for (p, who) in &report.unprotected {
                    println!("    {p:>5}  {}", sanitize(who));
                }
                println!(
                    "protect them: sysctl -w net.ipv4.ip_local_reserved_ports={}",
                    report.proposed_reserved_ports.as_deref().unwrap_or("")
                );
            }
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_are_compact() {
        let s: BTreeSet<u16> = [8080, 9000, 9001, 9002, 65535, 1].into_iter().collect();
        assert_eq!(ranges(&s), "1,8080,9000-9002,65535");
        assert_eq!(ranges(&BTreeSet::new()), "");
    }
}
