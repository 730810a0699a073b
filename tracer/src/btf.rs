//! Kernel struct offsets from BTF, resolved at load time and handed to the programs as the
//! read-only `CONFIG` global (Rust eBPF has no CO-RE field relocations).
//!
//! Kernels without BTF get a fallback table for x86_64 (`sock_common` has had the same layout from
//! 4.19 to 6.18); fields it cannot vouch for are left unknown, and the programs then report them as
//! unknown instead of reading garbage.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow, bail};
use btf_rs::{Btf, Type};
use tracer_common::{FieldLoc, KernelOffsets};

pub const SYSFS_VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// The kernel's type information.
pub struct KernelBtf {
    btf: Btf,
}

impl KernelBtf {
    /// Loads `path`, or the running kernel's `/sys/kernel/btf/vmlinux`.
    pub fn load(path: Option<&Path>) -> Result<Self> {
        let path = path.map_or_else(|| PathBuf::from(SYSFS_VMLINUX), Path::to_path_buf);
        // Mapping the file and resolving only the ~20 members needed is ~10x faster than
        // parsing all 150 000 types up front; sysfs BTF cannot be mapped before 6.15, so fall back.
        let btf = Btf::from_file_with_backend(&path, btf_rs::Backend::Mmap)
            .or_else(|_| Btf::from_file(&path))
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| format!("cannot read kernel BTF from {}", path.display()))?;
        Ok(Self { btf })
    }

    fn strip(&self, mut ty: Type) -> Result<Type> {
        // Typedefs and qualifiers do not change layout.
        for _ in 0..16 {
            match &ty {
                Type::Typedef(_)
                | Type::Const(_)
                | Type::Volatile(_)
                | Type::Restrict(_)
                | Type::TypeTag(_) => {
                    let inner = ty
                        .as_btf_type()
                        .ok_or_else(|| anyhow!("untyped qualifier"))?;
                    ty = self
                        .btf
                        .resolve_chained_type(inner)
                        .map_err(|e| anyhow!("{e}"))?;
                }
                _ => return Ok(ty),
            }
        }
        bail!("type chain too long")
    }

    fn size_bits(&self, ty: &Type) -> Result<u32> {
        Ok(match self.strip(ty.clone())? {
            Type::Int(i) => i.size() as u32 * 8,
            Type::Ptr(_) => 64,
            Type::Enum(e) => e.size() as u32 * 8,
            Type::Enum64(e) => e.size() as u32 * 8,
            Type::Struct(s) | Type::Union(s) => s.size() as u32 * 8,
            Type::Array(a) => {
                let elem = self
                    .btf
                    .resolve_chained_type(&a)
                    .map_err(|e| anyhow!("{e}"))?;
                self.size_bits(&elem)? * a.len() as u32
            }
            other => bail!("no size for a {} member", other.name()),
        })
    }

    /// Finds `member` inside struct/union `ty` (looking through anonymous members), returning its
    /// bit offset from the start of `ty`, its size in bits and its type.
    fn member(&self, ty: &Type, member: &str) -> Result<Option<(u32, u32, Type)>> {
        let (Type::Struct(s) | Type::Union(s)) = self.strip(ty.clone())? else {
            bail!("not a struct or union");
        };
        for m in &s.members {
            let name = self.btf.resolve_name(m).unwrap_or_default();
            let mty = self
                .btf
                .resolve_chained_type(m)
                .map_err(|e| anyhow!("{e}"))?;
            if name == member {
                let bits = match m.bitfield_size() {
                    Some(n) if n > 0 => n,
                    _ => self.size_bits(&mty)?,
                };
                return Ok(Some((m.bit_offset(), bits, mty)));
            }
            if name.is_empty()
                && matches!(self.strip(mty.clone())?, Type::Struct(_) | Type::Union(_))
                && let Some((off, bits, t)) = self.member(&mty, member)?
            {
                return Ok(Some((m.bit_offset() + off, bits, t)));
            }
        }
        Ok(None)
    }

    /// Location of `path` (`"skc_net.net"`) inside `struct name`.
    pub fn field(&self, name: &str, path: &str) -> Result<FieldLoc> {
        let mut ty = self
            .btf
            .resolve_types_by_name(name)
            .map_err(|e| anyhow!("{e}"))?
            .into_iter()
            .find(|t| matches!(t, Type::Struct(_)))
            .ok_or_else(|| anyhow!("struct {name} not in BTF"))?;
        let mut offset = 0;
        let mut size = 0;
        for part in path.split('.') {
            let (off, bits, t) = self
                .member(&ty, part)?
                .ok_or_else(|| anyhow!("struct {name} has no member {path}"))?;
            offset += off;
            size = bits;
            ty = t;
        }
        // Integers are read up to 64 bits; wider fields (IPv6 addresses) are copied as bytes.
        if size == 0 || size > 255 {
            bail!("{name}.{path} is {size} bits wide");
        }
        Ok(FieldLoc::bitfield(offset, size as u8))
    }

    /// Every offset the programs use. A field this kernel lacks is left unknown.
    pub fn offsets(&self) -> (KernelOffsets, Vec<String>) {
        let mut missing = Vec::new();
        let mut get = |s: &str, p: &str| match self.field(s, p) {
            Ok(loc) => loc,
            Err(e) => {
                missing.push(format!("{s}.{p}: {e:#}"));
                FieldLoc::NONE
            }
        };
        let o = KernelOffsets {
            skc_daddr: get("sock_common", "skc_daddr"),
            skc_rcv_saddr: get("sock_common", "skc_rcv_saddr"),
            skc_dport: get("sock_common", "skc_dport"),
            skc_num: get("sock_common", "skc_num"),
            skc_family: get("sock_common", "skc_family"),
            skc_state: get("sock_common", "skc_state"),
            skc_reuse: get("sock_common", "skc_reuse"),
            skc_reuseport: get("sock_common", "skc_reuseport"),
            skc_ipv6only: get("sock_common", "skc_ipv6only"),
            skc_bound_dev_if: get("sock_common", "skc_bound_dev_if"),
            skc_net: get("sock_common", "skc_net.net"),
            skc_v6_daddr: get("sock_common", "skc_v6_daddr"),
            skc_v6_rcv_saddr: get("sock_common", "skc_v6_rcv_saddr"),
            sk_protocol: get("sock", "sk_protocol"),
            sk_type: get("sock", "sk_type"),
            net_inum: get("net", "ns.inum"),
            task_nsproxy: get("task_struct", "nsproxy"),
            nsproxy_net_ns: get("nsproxy", "net_ns"),
            socket_sk: get("socket", "sk"),
            task_files: get("task_struct", "files"),
            files_fdt: get("files_struct", "fdt"),
            fdtable_fd: get("fdtable", "fd"),
            file_private_data: get("file", "private_data"),
            task_group_leader: get("task_struct", "group_leader"),
            task_comm: get("task_struct", "comm"),
            _pad: FieldLoc::NONE,
        };
        (o, missing)
    }
}

/// `struct sock_common` on x86_64, identical from 4.19 to 6.18; used only
/// when the kernel has no BTF. Everything outside `sock_common` varies with the kernel's
/// configuration, so it is left unknown (netns reads as 0, protocol as unknown).
pub fn fallback_offsets() -> (KernelOffsets, Vec<&'static str>) {
    let o = KernelOffsets {
        skc_daddr: FieldLoc::at(0, 4),
        skc_rcv_saddr: FieldLoc::at(4, 4),
        skc_dport: FieldLoc::at(12, 2),
        skc_num: FieldLoc::at(14, 2),
        skc_family: FieldLoc::at(16, 2),
        skc_state: FieldLoc::at(18, 1),
        skc_reuse: FieldLoc::bitfield(152, 4),
        skc_reuseport: FieldLoc::bitfield(156, 1),
        skc_ipv6only: FieldLoc::bitfield(157, 1),
        skc_bound_dev_if: FieldLoc::at(20, 4),
        skc_net: FieldLoc::at(48, 8),
        skc_v6_daddr: FieldLoc::at(56, 16),
        skc_v6_rcv_saddr: FieldLoc::at(72, 16),
        sk_protocol: FieldLoc::NONE,
        sk_type: FieldLoc::NONE,
        net_inum: FieldLoc::NONE,
        task_nsproxy: FieldLoc::NONE,
        nsproxy_net_ns: FieldLoc::NONE,
        socket_sk: FieldLoc::at(24, 8),
        task_files: FieldLoc::NONE,
        files_fdt: FieldLoc::NONE,
        fdtable_fd: FieldLoc::NONE,
        file_private_data: FieldLoc::NONE,
        task_group_leader: FieldLoc::NONE,
        task_comm: FieldLoc::NONE,
        _pad: FieldLoc::NONE,
    };
    let unknown = vec![
        "sock.sk_protocol",
        "sock.sk_type",
        "net.ns.inum",
        "task_struct.nsproxy",
        "task_struct.files",
    ];
    (o, unknown)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fallback table must agree with the BTF of the kernel running the tests, where it has
    /// BTF (every kernel this project tests on has).
    #[test]
    fn fallback_matches_running_kernel() {
        let Ok(btf) = KernelBtf::load(None) else {
            eprintln!("SKIP: {SYSFS_VMLINUX} is not readable here");
            return;
        };
        let (real, missing) = btf.offsets();
        assert!(missing.is_empty(), "unresolved fields: {missing:?}");
        let (fb, _) = fallback_offsets();
        for (name, a, b) in [
            ("skc_num", real.skc_num, fb.skc_num),
            ("skc_family", real.skc_family, fb.skc_family),
            ("skc_state", real.skc_state, fb.skc_state),
            ("skc_reuse", real.skc_reuse, fb.skc_reuse),
            ("skc_reuseport", real.skc_reuseport, fb.skc_reuseport),
            ("skc_ipv6only", real.skc_ipv6only, fb.skc_ipv6only),
            (
                "skc_bound_dev_if",
                real.skc_bound_dev_if,
                fb.skc_bound_dev_if,
            ),
            ("skc_net", real.skc_net, fb.skc_net),
            (
                "skc_v6_rcv_saddr",
                real.skc_v6_rcv_saddr,
                fb.skc_v6_rcv_saddr,
            ),
        ] {
            assert_eq!(a, b, "{name}: BTF says {a:?}, fallback says {b:?}");
        }
    }

    #[test]
    fn bitfields_and_nested_members_resolve() {
        let Ok(btf) = KernelBtf::load(None) else {
            eprintln!("SKIP: {SYSFS_VMLINUX} is not readable here");
            return;
        };
        let reuse = btf.field("sock_common", "skc_reuse").unwrap();
        assert_eq!(reuse.bits, 4, "skc_reuse is a 4-bit field");
        let inum = btf.field("net", "ns.inum").unwrap();
        assert_eq!(inum.bits, 32);
        assert!(btf.field("sock_common", "no_such_member").is_err());
    }
}
