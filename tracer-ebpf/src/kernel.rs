//! Reading kernel memory: the calling task and `struct sock` fields, at offsets resolved from BTF
//! by the collector (`tracer_common::KernelOffsets`), and tracepoint fields at offsets read from
//! tracefs. Every reader returns `None` when the offset is unknown or the read fails, so a field
//! that moved on some kernel is reported as unknown rather than as a wrong value.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_probe_read_kernel, bpf_probe_read_kernel_buf, generated,
    },
    programs::TracePointContext,
};
use tracer_common::{AF_INET, AF_INET6, FieldLoc, flags, tcp_state};

use crate::config::conf;

/// Reads the field at `loc` of the kernel object at `base`.
#[inline(always)]
pub fn read(base: *const u8, loc: FieldLoc) -> Option<u64> {
    if !loc.known() || base.is_null() {
        return None;
    }
    let total_bits = loc.shift as u32 + loc.bits as u32;
    // SAFETY: bpf_probe_read_kernel checks the address; a bad one is an error, not a fault.
    let raw = unsafe {
        let p = base.add(loc.byte as usize);
        if total_bits <= 8 {
            bpf_probe_read_kernel(p).ok()? as u64
        } else if total_bits <= 16 {
            bpf_probe_read_kernel(p.cast::<u16>()).ok()? as u64
        } else if total_bits <= 32 {
            bpf_probe_read_kernel(p.cast::<u32>()).ok()? as u64
        } else {
            bpf_probe_read_kernel(p.cast::<u64>()).ok()?
        }
    };
    let v = raw >> loc.shift;
    Some(if loc.bits >= 64 {
        v
    } else {
        v & ((1u64 << loc.bits) - 1)
    })
}

/// The first bytes of `struct sock_common`, copied whole with one helper call (each costs ~90 ns
/// here, whatever its size): addresses, ports, family, state, option bits, device and, on 64-bit
/// kernels (`skc_net` at 48 on 6.1–6.18), the namespace pointer.
pub const HEAD: usize = 56;

/// [`HEAD`] as aligned 32-bit words, so that [`from_head`] takes a field with one load and a
/// shift. (As bytes, assembling a word at an offset only known at load time compiled to some 150
/// instructions of byte shuffling, run on every bind.)
pub type Head = [u32; HEAD / 4];

#[inline(always)]
pub fn read_head(sk: *const u8) -> Option<Head> {
    // SAFETY: bpf_probe_read_kernel checks the address.
    unsafe { bpf_probe_read_kernel(sk.cast::<Head>()) }.ok()
}

/// Extracts the field at `loc` from a copied [`HEAD`]: only fields inside it that do not cross
/// an aligned 32-bit word, which holds for every field read this way (naturally aligned ones of
/// up to 32 bits, and bitfields within a byte). `loc` comes from the frozen configuration, so the
/// verifier sees the word's index as a constant.
#[inline(always)]
pub fn from_head(head: &Head, loc: FieldLoc) -> Option<u64> {
    let start = loc.byte as usize;
    let shift = (start % 4) * 8 + loc.shift as usize;
    if !loc.known() || shift + loc.bits as usize > 32 || start / 4 >= head.len() {
        return None;
    }
    let v = (head[start / 4] >> shift) as u64;
    Some(if loc.bits >= 32 {
        v
    } else {
        v & ((1u64 << loc.bits) - 1)
    })
}

/// A pointer-sized, 8-byte-aligned field at `loc` inside a copied [`HEAD`], or None if it is not
/// wholly inside it.
#[inline(always)]
pub fn from_head_u64(head: &Head, loc: FieldLoc) -> Option<u64> {
    let start = loc.byte as usize;
    if !loc.known() || loc.bits != 64 || loc.shift != 0 || start % 8 != 0 || start + 8 > HEAD {
        return None;
    }
    Some(u64::from(head[start / 4]) | (u64::from(head[start / 4 + 1]) << 32))
}

#[inline(always)]
pub fn read_ptr(base: *const u8, loc: FieldLoc) -> Option<*const u8> {
    read(base, loc)
        .map(|v| v as *const u8)
        .filter(|p| !p.is_null())
}

/// Reads `N` bytes (an address) at `loc` of the object at `base`.
#[inline(always)]
pub fn read_bytes<const N: usize>(base: *const u8, loc: FieldLoc) -> Option<[u8; N]> {
    if !loc.known() || base.is_null() {
        return None;
    }
    let mut out = [0u8; N];
    // SAFETY: as above.
    unsafe { bpf_probe_read_kernel_buf(base.add(loc.byte as usize), &mut out).ok()? };
    Some(out)
}

/// Reads a whole tracepoint field (8, 16, 32 or 64 bits wide) through `bpf_probe_read_kernel`,
/// at the offset tracefs gave.
#[inline(always)]
fn tp_read_helper(ctx: &TracePointContext, loc: FieldLoc) -> Option<u64> {
    if !loc.known() {
        return None;
    }
    let off = loc.byte as usize;
    // SAFETY: the offsets come from this kernel's tracefs format file.
    unsafe {
        match loc.bits {
            8 => ctx.read_at::<u8>(off).ok().map(u64::from),
            16 => ctx.read_at::<u16>(off).ok().map(u64::from),
            32 => ctx.read_at::<u32>(off).ok().map(u64::from),
            64 => ctx.read_at::<u64>(off).ok(),
            _ => None,
        }
    }
}

/// Reads a tracepoint field: with a direct context load at the compile-time offset `OFF` when
/// the collector found this kernel's layout to be `tracer_common::tp_layout` (no helper call),
/// else through `bpf_probe_read_kernel` at the offset tracefs gave (`loc`). `T` is the field's
/// width (u8/u16/u32/u64).
#[inline(always)]
pub fn tp_read<const OFF: usize, T: Into<u64> + Copy>(
    ctx: &TracePointContext,
    loc: FieldLoc,
) -> Option<u64> {
    if conf!(tp_direct) != 0 {
        // SAFETY: an aligned load at a constant offset inside the tracepoint's record; the
        // verifier checks it against the record's size.
        return Some(
            unsafe { core::ptr::read_volatile(ctx.as_ptr().cast::<u8>().add(OFF).cast::<T>()) }
                .into(),
        );
    }
    tp_read_helper(ctx, loc)
}

/// An address field of a tracepoint (4 or 16 bytes), like [`tp_read`].
#[inline(always)]
pub fn tp_bytes<const OFF: usize, const N: usize>(
    ctx: &TracePointContext,
    loc: FieldLoc,
) -> Option<[u8; N]> {
    if conf!(tp_direct) != 0 {
        let mut out = [0u8; N];
        let p = ctx.as_ptr().cast::<u8>();
        let mut i = 0;
        while i < N {
            // SAFETY: aligned 4-byte loads at constant offsets inside the record.
            let w = unsafe { core::ptr::read_volatile(p.add(OFF + i).cast::<u32>()) };
            out[i..i + 4].copy_from_slice(&w.to_ne_bytes());
            i += 4;
        }
        return Some(out);
    }
    if !loc.known() {
        return None;
    }
    // SAFETY: as in `tp_read_helper`.
    unsafe { ctx.read_at::<[u8; N]>(loc.byte as usize).ok() }
}

/// The inode number of a `struct net`.
#[inline(always)]
pub fn net_inum(net: *const u8) -> u32 {
    read(net, conf!(kernel.net_inum)).unwrap_or(0) as u32
}

/// The network namespace (inode number) of a socket, 0 if unreadable.
#[inline(always)]
pub fn sock_netns(sk: *const u8) -> u32 {
    read_ptr(sk, conf!(kernel.skc_net)).map_or(0, net_inum)
}

/// The network namespace of the socket `v` was read from (`sk`): through the namespace pointer
/// its head copy holds, one read fewer than [`sock_netns`].
#[inline(always)]
pub fn view_netns(v: &SockView, sk: *const u8) -> u32 {
    if v.net != 0 {
        net_inum(v.net as *const u8)
    } else {
        sock_netns(sk)
    }
}

/// The network namespace (inode number) of the current task, 0 if unreadable.
#[inline(always)]
pub fn current_netns() -> u32 {
    // SAFETY: a helper without arguments.
    let task = unsafe { generated::bpf_get_current_task() } as *const u8;
    read_ptr(task, conf!(kernel.task_nsproxy))
        .and_then(|nsproxy| read_ptr(nsproxy, conf!(kernel.nsproxy_net_ns)))
        .map_or(0, net_inum)
}

/// The `struct sock` of the current task's descriptor `fd`: `current->files->fdt->fd[fd]`, then
/// the file's `struct socket` (`private_data`) and its `sk`. Only for a descriptor a socket call
/// just used (a non-socket's `private_data` is something else; the caller checks the family it
/// finds). Unlocked reads: a descriptor closed meanwhile reads as `None` or another socket.
#[inline(always)]
pub fn current_fd_sock(fd: u64) -> Option<*const u8> {
    // SAFETY: a helper without arguments.
    let task = unsafe { generated::bpf_get_current_task() } as *const u8;
    let fdt = read_ptr(task, conf!(kernel.task_files))
        .and_then(|files| read_ptr(files, conf!(kernel.files_fdt)))?;
    let fds = read_ptr(fdt, conf!(kernel.fdtable_fd))?;
    // `fd` comes from the call's arguments; an fd past the table's end fails the read or reads
    // another pointer, which the family check catches.
    let file = read_ptr(
        fds.wrapping_add((fd & 0xffff_ffff) as usize * 8),
        FieldLoc::at(0, 8),
    )?;
    let sock = read_ptr(file, conf!(kernel.file_private_data))?;
    read_ptr(sock, conf!(kernel.socket_sk))
}

/// Who is running: filled into events and owner records.
pub struct Caller {
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    pub cgroup_id: u64,
    pub comm: [u8; 16],
}

#[inline(always)]
pub fn caller() -> Caller {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    Caller {
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        // SAFETY: a helper without arguments.
        cgroup_id: unsafe { generated::bpf_get_current_cgroup_id() },
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    }
}

/// The current process's name: its thread-group leader's `comm` (`/proc/PID/comm`), where the
/// calling thread's may differ.
#[inline(always)]
pub fn process_comm() -> Option<[u8; 16]> {
    // SAFETY: a helper without arguments.
    let task = unsafe { generated::bpf_get_current_task() } as *const u8;
    let leader = read_ptr(task, conf!(kernel.task_group_leader))?;
    read_bytes::<16>(leader, conf!(kernel.task_comm))
}

/// The name an owner record keeps for a call by thread `tid` (named `comm`) of process `pid`:
/// the process's, which outlives neither but is what an operator looks for once it has exited
/// (a JVM's "java", not its "pool-conn-1" thread). Read only for a thread other than the main
/// one, whose name is the process's.
#[inline(always)]
pub fn owner_comm(pid: u32, tid: u32, comm: &[u8; 16]) -> [u8; 16] {
    if pid == tid {
        *comm
    } else {
        process_comm().unwrap_or(*comm)
    }
}

#[inline(always)]
pub fn current_tid() -> u32 {
    bpf_get_current_pid_tgid() as u32
}

/// The peer of a connecting socket: address and port (host order).
#[inline(always)]
pub fn sock_remote(sk: *const u8, family: u16) -> ([u8; 16], u16) {
    let mut addr = [0u8; 16];
    if family == AF_INET6 {
        addr = read_bytes::<16>(sk, conf!(kernel.skc_v6_daddr)).unwrap_or([0; 16]);
    } else if let Some(a) = read_bytes::<4>(sk, conf!(kernel.skc_daddr)) {
        addr[..4].copy_from_slice(&a);
    }
    // Two bytes into a zeroed buffer, not `read()`: LLVM once merged `read()`'s failure path as
    // an undefined register here, which the verifier rejects (`R9 !read_ok` on 6.1 and 6.12).
    let port = read_bytes::<2>(sk, conf!(kernel.skc_dport)).map_or(0, u16::from_be_bytes);
    (addr, port)
}

/// Family, port (host order) and address of a `sockaddr_in`/`sockaddr_in6` image: family(2)
/// port(2, network order) then addr(4) at 4, or flowinfo(4) and addr(16) at 8.
#[inline(always)]
pub fn parse_sockaddr(raw: &[u8; 24]) -> Option<(u16, u16, [u8; 16])> {
    let family = u16::from_ne_bytes([raw[0], raw[1]]);
    let port = u16::from_be_bytes([raw[2], raw[3]]);
    let mut addr = [0u8; 16];
    match family {
        AF_INET => addr[..4].copy_from_slice(&raw[4..8]),
        AF_INET6 => addr.copy_from_slice(&raw[8..24]),
        _ => return None,
    }
    Some((family, port, addr))
}

/// What the programs need to know about a `struct sock` (or `inet_timewait_sock`: both start with
/// `struct sock_common`).
#[derive(Clone, Copy)]
pub struct SockView {
    pub family: u16,
    pub state: u8,
    pub port: u16,
    pub addr: [u8; 16],
    pub bound_dev_if: u32,
    /// `tracer_common::flags` bits, with the `*_KNOWN` bits for what could be read.
    pub flags: u16,
    pub protocol: u16,
    pub sock_type: u16,
    pub netns: u32,
    /// `skc_net` (a `struct net *`) when the head copy holds it, else 0: see [`view_netns`].
    pub net: u64,
}

/// What one read of the head of `struct sock_common` tells: family, state, port, IPv4 address,
/// option bits, device and namespace pointer. The IPv6 address, namespace, protocol and type stay
/// unset (see [`sock_view`]).
#[inline(always)]
pub fn sock_head_view(sk: *const u8) -> SockView {
    let mut v = SockView {
        family: 0,
        state: 0,
        port: 0,
        addr: [0; 16],
        bound_dev_if: 0,
        flags: 0,
        protocol: 0,
        sock_type: 0,
        netns: 0,
        net: 0,
    };
    let Some(head) = read_head(sk) else {
        return v;
    };
    v.net = from_head_u64(&head, conf!(kernel.skc_net)).unwrap_or(0);
    let field = |loc| from_head(&head, loc);
    v.family = field(conf!(kernel.skc_family)).unwrap_or(0) as u16;
    let (state, num) = (field(conf!(kernel.skc_state)), field(conf!(kernel.skc_num)));
    v.state = state.unwrap_or(0) as u8;
    v.port = num.unwrap_or(0) as u16;
    if let (Some(state), Some(num)) = (state, num)
        && (num != 0 || state as u8 != tcp_state::CLOSE)
    {
        v.flags |= flags::IN_USE;
    }
    if v.family != AF_INET6
        && let Some(a) = field(conf!(kernel.skc_rcv_saddr))
    {
        v.addr[..4].copy_from_slice(&(a as u32).to_le_bytes());
    }
    if let (Some(reuse), Some(reuseport)) = (
        field(conf!(kernel.skc_reuse)),
        field(conf!(kernel.skc_reuseport)),
    ) {
        v.flags |= flags::SOCKOPTS_KNOWN;
        if reuse != 0 {
            v.flags |= flags::REUSEADDR;
        }
        if reuseport != 0 {
            v.flags |= flags::REUSEPORT;
        }
    }
    if let Some(v6only) = field(conf!(kernel.skc_ipv6only)) {
        v.flags |= flags::V6ONLY_KNOWN;
        if v6only != 0 && v.family == AF_INET6 {
            v.flags |= flags::V6ONLY;
        }
    }
    if let Some(dev) = field(conf!(kernel.skc_bound_dev_if)) {
        v.bound_dev_if = dev as u32;
        v.flags |= flags::DEV_KNOWN;
    }
    v
}

/// Reads `sk`'s socket options and identity: [`sock_head_view`], then the IPv6 address,
/// namespace, protocol and type field by field. Fields that cannot be read stay zero and their
/// `*_KNOWN` bit stays clear.
#[inline(never)]
pub fn sock_view(sk: *const u8) -> SockView {
    let mut v = sock_head_view(sk);
    if v.family == AF_INET6 {
        v.addr = read_bytes::<16>(sk, conf!(kernel.skc_v6_rcv_saddr)).unwrap_or([0; 16]);
    }
    v.netns = view_netns(&v, sk);
    if let (Some(proto), Some(ty)) = (
        read(sk, conf!(kernel.sk_protocol)),
        read(sk, conf!(kernel.sk_type)),
    ) {
        v.protocol = proto as u16;
        v.sock_type = ty as u16;
        v.flags |= flags::PROTO_KNOWN;
    }
    v
}
