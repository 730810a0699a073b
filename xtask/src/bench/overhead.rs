//! `overhead`: what each watched operation costs, in one run, under four conditions — nothing
//! attached; the floor (empty programs on the same hooks: the cost of the hooks themselves);
//! `bindtrace watch` with its default configuration; and a peer, a bpftrace script on the same
//! tracepoints doing the equivalent work (`xtask/bench/peer.bt`). The conditions are interleaved:
//! each round runs every condition, in a rotating order, so drift in the machine hits them alike.
//! The workload runs on CPU 0 in a private network namespace; the tools run on CPU 1.
//!
//! With `--against REV`, a fifth condition, `bindtrace@REV` (`against.rs`), runs in the same
//! rounds, and the report ends with the two builds side by side, program by program.
//!
//! Three views of the cost, because wall-clock time on a virtual machine is noisy at the
//! sub-microsecond scale: wall time per operation; the workload thread's own CPU time per
//! operation (`CLOCK_THREAD_CPUTIME_ID`: what the traced process pays, hooks included); and the
//! time the kernel spent in BPF programs per operation (`kernel.bpf_stats_enabled`: the programs'
//! own work, exactly, without the cost of reaching the hook, which the floor shows).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::Command,
    time::Instant,
};

use anyhow::Result;
use serde_json::{Value, json};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::{Attached, against::Against, bindtrace_cmd, in_netns, verdict::percentile};
use crate::util;

/// What is attached while the workloads run.
enum Tool {
    Nothing,
    Floor,
    Bindtrace(PathBuf),
    Peer,
}

struct Condition {
    name: String,
    tool: Tool,
}

/// The conditions, in this order: the first four are always measured (the report's added-cost
/// figures index them as `NOTHING`..`PEER`); a build of another commit comes last.
fn conditions(against: Option<&Against>) -> Vec<Condition> {
    let c = |name: &str, tool| Condition {
        name: name.to_string(),
        tool,
    };
    let mut out = vec![
        c("nothing", Tool::Nothing),
        c("floor", Tool::Floor),
        c("bindtrace", Tool::Bindtrace(super::bindtrace_path())),
        c("peer", Tool::Peer),
    ];
    if let Some(a) = against {
        out.push(c(
            &format!("bindtrace@{}", a.hash),
            Tool::Bindtrace(a.binary.clone()),
        ));
    }
    out
}

const NOTHING: usize = 0;
const FLOOR: usize = 1;
const BINDTRACE: usize = 2;
const PEER: usize = 3;
const AGAINST: usize = 4;

/// (name, operations per round)
const WORKLOADS: [(&str, u32); 5] = [
    ("bind+close", 20_000),
    ("failing bind", 20_000),
    ("connect/accept/close", 3_000),
    ("2 binds + failing listen", 10_000),
    ("UDP connect+close", 20_000),
];

fn tcp() -> Socket {
    Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("socket")
}

fn addr(port: u16) -> SockAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port)).into()
}

/// One workload's cost per operation.
#[derive(Clone)]
struct Cost {
    wall: f64,
    cpu: f64,
    bpf: f64,
    /// Per BPF program that ran: (ns per operation, runs per operation).
    programs: BTreeMap<String, (f64, f64)>,
    /// Binds refused because the previous operation's socket, closed, still held the port: a
    /// sign that something kept a reference to it (see the failing-listen workload).
    refused: u32,
}

fn thread_cpu_ns() -> u128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut ts) };
    ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128
}

/// The ids of the BPF programs loaded before the condition being measured attached its own:
/// another `bindtrace watch`, a bpftrace script, a service's programs. Their time is not the
/// condition's.
static FOREIGN: std::sync::Mutex<BTreeSet<u32>> = std::sync::Mutex::new(BTreeSet::new());

fn loaded_ids() -> BTreeSet<u32> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| p.id())
        .collect()
}

/// Per BPF program name, of those the condition loaded: nanoseconds the kernel has spent in it
/// and how many times it ran (with bpf_stats enabled).
fn bpf_stats() -> BTreeMap<String, (u128, u64)> {
    let foreign = FOREIGN.lock().map(|f| f.clone()).unwrap_or_default();
    let mut out: BTreeMap<String, (u128, u64)> = BTreeMap::new();
    for p in aya::programs::loaded_programs().filter_map(Result::ok) {
        if foreign.contains(&p.id()) {
            continue;
        }
        let name = p.name_as_str().unwrap_or("?").to_string();
        let e = out.entry(name).or_default();
        e.0 += p.run_time().as_nanos();
        e.1 += p.run_count();
    }
    out
}

/// Times `ops` runs of `op`.
fn timed(ops: u32, mut op: impl FnMut()) -> Cost {
    let (c0, b0, t0) = (thread_cpu_ns(), bpf_stats(), Instant::now());
    for _ in 0..ops {
        op();
    }
    let wall = t0.elapsed().as_nanos();
    let (c1, b1) = (thread_cpu_ns(), bpf_stats());
    let per = |d: u128| d as f64 / f64::from(ops);
    let programs: BTreeMap<String, (f64, f64)> = b1
        .iter()
        .filter_map(|(name, &(ns, runs))| {
            let (ns0, runs0) = b0.get(name).copied().unwrap_or_default();
            (runs > runs0).then(|| {
                let d = (ns.saturating_sub(ns0), runs - runs0);
                (name.clone(), (per(d.0), d.1 as f64 / f64::from(ops)))
            })
        })
        .collect();
    Cost {
        wall: per(wall),
        cpu: per(c1 - c0),
        bpf: programs.values().map(|p| p.0).sum(),
        programs,
        refused: 0,
    }
}

/// The cost per operation of each workload, run once (inside the namespace thread).
fn measure() -> Vec<Cost> {
    let mut out = Vec::new();
    // (a) successful bind, then close
    out.push(timed(WORKLOADS[0].1, || {
        let s = tcp();
        s.bind(&addr(0)).expect("bind");
    }));
    // (b) failing bind (EADDRINUSE)
    let holder = tcp();
    holder.bind(&addr(7001)).expect("holder");
    out.push(timed(WORKLOADS[1].1, || {
        let s = tcp();
        assert!(s.bind(&addr(7001)).is_err());
    }));
    drop(holder);
    // (c) connect, accept, close (RST: no TIME-WAIT piles up across rounds)
    let l = tcp();
    l.set_reuse_address(true).expect("reuse");
    l.bind(&addr(7002)).expect("listener");
    l.listen(1024).expect("listen");
    out.push(timed(WORKLOADS[2].1, || {
        let c = tcp();
        c.connect(&addr(7002)).expect("connect");
        let (a, _) = l.accept().expect("accept");
        a.set_linger(Some(std::time::Duration::ZERO))
            .expect("linger");
        drop(a);
        drop(c);
    }));
    drop(l);
    // (d) failing listen: two SO_REUSEADDR sockets bound to one port (allowed), the first
    // listens, the second's listen() fails; both closed. The next operation's first bind can
    // only be refused if the last listener outlived its close: another process held a reference
    // to its file at that instant (a reader of /proc/PID/fd, a duplicated descriptor). Once, in
    // an A/B run, it was; such binds are retried and counted, and the report names the condition.
    let mut refused = 0;
    let mut cost = timed(WORKLOADS[3].1, || {
        let a = tcp();
        let b = tcp();
        a.set_reuse_address(true).expect("reuse");
        b.set_reuse_address(true).expect("reuse");
        while let Err(e) = a.bind(&addr(7003)) {
            assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "first bind: {e}");
            refused += 1;
            assert!(refused < 1000, "first bind refused 1000 times: {e}");
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
        b.bind(&addr(7003)).expect("shared bind");
        a.listen(16).expect("first listen");
        assert!(b.listen(16).is_err());
    });
    cost.refused = refused;
    out.push(cost);
    // (e) a UDP socket's connect(), which gives it an ephemeral port (autobind), then close: the
    // connect() hooks' cost on a call that is neither reported nor remembered.
    out.push(timed(WORKLOADS[4].1, || {
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).expect("socket");
        s.connect(&addr(7004)).expect("udp connect");
    }));
    out
}

fn attach(tool: &Tool) -> Result<Option<Attached>> {
    let ready = std::env::temp_dir().join(format!("bindtrace-bench-{}", std::process::id()));
    Ok(match tool {
        Tool::Nothing => None,
        Tool::Floor => {
            let mut c = bindtrace_cmd();
            c.arg("__floor").arg("--ready-file").arg(&ready);
            Some(Attached::start(c, Some(&ready), None)?)
        }
        Tool::Bindtrace(binary) => {
            let mut c = Command::new(binary);
            c.args(["watch", "--output", "json", "--ready-file"])
                .arg(&ready);
            Some(Attached::start(c, Some(&ready), None)?)
        }
        Tool::Peer => {
            let mut c = Command::new("bpftrace");
            // Room for every connection's owner, as bindtrace's history has (bpftrace's maps
            // default to 4 096 keys, past which updates fail and cost less).
            c.env("BPFTRACE_MAP_KEYS_MAX", "65536")
                .arg(util::root().join("xtask/bench/peer.bt"));
            Some(Attached::start(c, None, Some("Attaching"))?)
        }
    })
}

/// Median, min, max of a sample.
fn spread(v: &[f64]) -> (f64, f64, f64) {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    (
        percentile(&v, 0.5),
        percentile(&v, 0.0),
        percentile(&v, 1.0),
    )
}

const STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// One way of looking at a cost.
type View = (&'static str, fn(&Cost) -> f64);

pub fn run(rounds: u32, against: Option<&Against>) -> Result<Value> {
    if !util::succeeds(Command::new("bpftrace").arg("--version")) {
        crate::setup::apt(&["bpftrace"])?;
    }
    let stats_before = std::fs::read_to_string(STATS).unwrap_or_else(|_| "0".into());
    std::fs::write(STATS, "1")?;
    let result = others_on_the_paths().and_then(|others| {
        let mut v = run_rounds(rounds, &conditions(against))?;
        v["other_programs_on_the_paths"] = others.into();
        Ok(v)
    });
    let _ = std::fs::write(STATS, stats_before.trim());
    result
}

/// A condition's BPF time counts only the programs it loaded; programs already attached to the
/// measured paths (another `bindtrace watch`, a bpftrace script) are left out of it, but they
/// still run in every condition, slowing the workload (thread CPU, wall time) and sharing the
/// caches: said before the rounds, with their cost.
fn others_on_the_paths() -> Result<Vec<String>> {
    *FOREIGN.lock().expect("not poisoned") = BTreeSet::new();
    let costs = in_netns(measure)?;
    let mut others: BTreeMap<String, f64> = BTreeMap::new();
    for c in costs {
        for (name, (ns, _)) in c.programs {
            *others.entry(name).or_default() += ns;
        }
    }
    let list: Vec<String> = others
        .iter()
        .map(|(name, ns)| format!("{name} ({ns:.0} ns per operation)"))
        .collect();
    if !list.is_empty() {
        eprintln!(
            "xtask: warning: BPF programs not the bench's run on the measured paths: {} — left \
             out of the BPF time, but in every condition's thread CPU and wall time; stop what \
             loaded them (`bpftool prog show` lists them) for a clean run",
            list.join(", ")
        );
    }
    Ok(list)
}

fn run_rounds(rounds: u32, conditions: &[Condition]) -> Result<Value> {
    // samples[(workload, condition)] = one Cost per round
    let mut samples: BTreeMap<(usize, usize), Vec<Cost>> = BTreeMap::new();
    for round in 0..rounds {
        for k in 0..conditions.len() {
            let c = (k + round as usize) % conditions.len();
            *FOREIGN.lock().expect("not poisoned") = loaded_ids();
            let tool = attach(&conditions[c].tool)?;
            let costs = in_netns(measure)?;
            drop(tool);
            for (w, v) in costs.into_iter().enumerate() {
                samples.entry((w, c)).or_default().push(v);
            }
        }
        eprintln!("    round {}/{rounds} done", round + 1);
    }
    let view = |w: usize, c: usize, f: fn(&Cost) -> f64| {
        spread(&samples[&(w, c)].iter().map(f).collect::<Vec<_>>())
    };
    let views: [View; 3] = [
        ("wall time", |c| c.wall),
        ("workload thread CPU time", |c| c.cpu),
        ("time in BPF programs", |c| c.bpf),
    ];
    let mut rows = Vec::new();
    for (vname, f) in views {
        println!("\n{vname}, ns per operation, median (min-max) over {rounds} interleaved rounds:");
        let heads: Vec<String> = conditions
            .iter()
            .map(|c| format!("{:>20}", c.name))
            .collect();
        println!("  {:<26} {}", "operation", heads.join(" "));
        for (w, (name, _)) in WORKLOADS.iter().enumerate() {
            let cells: Vec<String> = (0..conditions.len())
                .map(|c| {
                    let (m, lo, hi) = view(w, c, f);
                    format!("{:>20}", format!("{m:.0} ({lo:.0}-{hi:.0})"))
                })
                .collect();
            println!("  {name:<26} {}", cells.join(" "));
        }
    }
    println!("\nadded over nothing (medians; thread CPU time / BPF program time):");
    for (w, (name, ops)) in WORKLOADS.iter().enumerate() {
        let cpu = |c| view(w, c, |x| x.cpu).0;
        let bpf = |c| view(w, c, |x| x.bpf).0;
        let added = |c| cpu(c) - cpu(NOTHING);
        println!(
            "  {name:<26} floor {:>6.0} / {:>4.0} ns   bindtrace {:>6.0} / {:>4.0} ns   peer {:>6.0} / {:>4.0} ns   bindtrace = {:>4.1} % of the bare op, {:.2}x the peer",
            added(FLOOR),
            bpf(FLOOR),
            added(BINDTRACE),
            bpf(BINDTRACE),
            added(PEER),
            bpf(PEER),
            100.0 * added(BINDTRACE) / cpu(NOTHING),
            cpu(BINDTRACE) / cpu(PEER),
        );
        let cond_json = |f: fn(&Cost) -> f64| {
            conditions
                .iter()
                .enumerate()
                .map(|(c, cond)| {
                    let (m, lo, hi) = view(w, c, f);
                    (
                        cond.name.clone(),
                        json!({"median": m, "min": lo, "max": hi}),
                    )
                })
                .collect::<serde_json::Map<_, _>>()
        };
        rows.push(json!({
            "operation": name,
            "ops_per_round": ops,
            "wall_ns_per_op": cond_json(|c| c.wall),
            "thread_cpu_ns_per_op": cond_json(|c| c.cpu),
            "bpf_ns_per_op": cond_json(|c| c.bpf),
            "added_cpu_ns": {"floor": added(FLOOR), "bindtrace": added(BINDTRACE), "peer": added(PEER)},
            "bindtrace_added_percent_of_op": 100.0 * added(BINDTRACE) / cpu(NOTHING),
            "bindtrace_over_peer_cpu": cpu(BINDTRACE) / cpu(PEER),
        }));
    }
    let mut out = json!({
        "rounds": rounds,
        "rebinds_refused": refused(&samples, conditions),
        "workloads": rows,
        "bindtrace_by_program": by_program(&samples, conditions, BINDTRACE),
    });
    if conditions.len() > AGAINST {
        out["against"] = json!({
            "condition": conditions[AGAINST].name,
            "by_program": by_program(&samples, conditions, AGAINST),
            "comparison": compare(&samples, conditions),
        });
    }
    Ok(out)
}

/// Per condition, the binds the failing-listen workload had to retry (`Cost::refused`), printed
/// when there were any.
fn refused(samples: &BTreeMap<(usize, usize), Vec<Cost>>, conditions: &[Condition]) -> Value {
    let out: serde_json::Map<String, Value> = conditions
        .iter()
        .enumerate()
        .map(|(c, cond)| {
            let n: u32 = (0..WORKLOADS.len())
                .map(|w| samples[&(w, c)].iter().map(|x| x.refused).sum::<u32>())
                .sum();
            if n > 0 {
                println!(
                    "\nunder {}: {n} bind(s) refused because the socket closed just before still \
                     held the port (retried)",
                    cond.name
                );
            }
            (cond.name.clone(), json!(n))
        })
        .collect();
    Value::Object(out)
}

/// This tree's bindtrace against the other commit's, per workload: BPF time and thread CPU time
/// (medians over the rounds), and the ratio of this tree's to the other's taken round by round —
/// both ran in the same round, seconds apart, so the machine's drift between rounds cancels —
/// as its median and range: a range that spans 1 is a difference smaller than the noise.
fn compare(samples: &BTreeMap<(usize, usize), Vec<Cost>>, conditions: &[Condition]) -> Value {
    let (a, b) = (&conditions[BINDTRACE].name, &conditions[AGAINST].name);
    println!(
        "\n{a} against {b} (medians; ratio per round, median (min-max); < 1: {a} is cheaper):"
    );
    let mut out = serde_json::Map::new();
    for (w, (name, _)) in WORKLOADS.iter().enumerate() {
        let mut cells = Vec::new();
        let mut row = serde_json::Map::new();
        for (vname, f) in [
            ("BPF", (|c: &Cost| c.bpf) as fn(&Cost) -> f64),
            ("thread CPU", |c| c.cpu),
        ] {
            let values = |c: usize| samples[&(w, c)].iter().map(f).collect::<Vec<_>>();
            let (this, other) = (values(BINDTRACE), values(AGAINST));
            let ratios: Vec<f64> = this
                .iter()
                .zip(&other)
                .map(|(x, y)| x / y)
                .filter(|r| r.is_finite())
                .collect();
            let ((ma, ..), (mb, ..), (r, lo, hi)) =
                (spread(&this), spread(&other), spread(&ratios));
            cells.push(format!(
                "{vname} {ma:.0} vs {mb:.0} ns, {r:.2}x ({lo:.2}-{hi:.2})"
            ));
            row.insert(
                vname.to_string(),
                json!({"this": ma, "against": mb, "ratio": r, "ratio_min": lo, "ratio_max": hi}),
            );
        }
        println!("  {name:<26} {}", cells.join("   "));
        let programs = compare_programs(&samples[&(w, BINDTRACE)], &samples[&(w, AGAINST)]);
        row.insert("programs".to_string(), programs);
        out.insert((*name).to_string(), Value::Object(row));
    }
    Value::Object(out)
}

/// The same per-round ratio for each BPF program both builds ran (ns per operation): where a
/// change to one program shows, when the whole operation's figure moves less than its noise.
fn compare_programs(this: &[Cost], other: &[Cost]) -> Value {
    let names: std::collections::BTreeSet<&String> =
        this.iter().flat_map(|r| r.programs.keys()).collect();
    let mut cells = Vec::new();
    let mut out = serde_json::Map::new();
    for p in names {
        let ratios: Vec<f64> = this
            .iter()
            .zip(other)
            .filter_map(|(a, b)| Some(a.programs.get(p)?.0 / b.programs.get(p)?.0))
            .filter(|r| r.is_finite())
            .collect();
        if ratios.is_empty() {
            continue;
        }
        let (r, lo, hi) = spread(&ratios);
        cells.push(format!("{p} {r:.2}x ({lo:.2}-{hi:.2})"));
        out.insert(
            p.clone(),
            json!({"ratio": r, "ratio_min": lo, "ratio_max": hi}),
        );
    }
    println!("  {:<26} by program: {}", "", cells.join(", "));
    Value::Object(out)
}

/// Where condition `c`'s BPF time goes, program by program (medians over the rounds), printed
/// and returned as JSON: the figures that say which program to cut.
fn by_program(
    samples: &BTreeMap<(usize, usize), Vec<Cost>>,
    conditions: &[Condition],
    c: usize,
) -> Value {
    println!(
        "\n{}'s time in BPF per operation, by program (median ns per op, runs per op):",
        conditions[c].name
    );
    let mut out = serde_json::Map::new();
    for (w, (name, _)) in WORKLOADS.iter().enumerate() {
        let rounds = &samples[&(w, c)];
        let names: std::collections::BTreeSet<&String> =
            rounds.iter().flat_map(|r| r.programs.keys()).collect();
        let mut progs: Vec<(String, f64, f64)> = names
            .into_iter()
            .map(|p| {
                let get = |f: fn(&(f64, f64)) -> f64| {
                    spread(
                        &rounds
                            .iter()
                            .map(|r| r.programs.get(p).map_or(0.0, f))
                            .collect::<Vec<_>>(),
                    )
                    .0
                };
                (p.clone(), get(|x| x.0), get(|x| x.1))
            })
            .filter(|(_, _, runs)| *runs >= 0.01)
            .collect();
        progs.sort_by(|a, b| b.1.total_cmp(&a.1));
        let cells: Vec<String> = progs
            .iter()
            .map(|(p, ns, runs)| format!("{p} {ns:.0} ({runs:.2}x)"))
            .collect();
        println!("  {name:<26} {}", cells.join(", "));
        out.insert(
            (*name).to_string(),
            progs
                .iter()
                .map(|(p, ns, runs)| json!({"program": p, "ns_per_op": ns, "runs_per_op": runs}))
                .collect(),
        );
    }
    Value::Object(out)
}
