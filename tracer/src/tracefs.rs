//! tracefs: mounting it when the host did not, and reading tracepoint field offsets from the
//! `format` files (they differ between kernels: `inet_sock_set_state.protocol` is a `u8` on 5.4 and
//! a `u16` from 5.10).

use std::{
    collections::HashMap,
    ffi::CString,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Result, anyhow, bail};
use tracer_common::{FieldLoc, TracepointOffsets};

const CANDIDATES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// Returns tracefs' mount point, mounting it on `/sys/kernel/tracing` if needed.
pub fn ensure_mounted() -> Result<PathBuf> {
    if let Some(p) = find() {
        return Ok(p);
    }
    let target = Path::new(CANDIDATES[0]);
    let src = CString::new("tracefs")?;
    let dst = CString::new(CANDIDATES[0])?;
    // SAFETY: plain mount(2) with valid C strings and no data.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            src.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EBUSY) {
            // Seen under lockdown=confidentiality: tracefs is mounted and empty.
            bail!(
                "tracefs is mounted on {} but holds no events/ (the kernel creates none under \
                 lockdown=confidentiality)",
                target.display()
            );
        }
        bail!(
            "tracefs is not mounted and mounting it on {} failed: {e} \
             (run as root, or mount it yourself: mount -t tracefs tracefs {})",
            target.display(),
            target.display()
        );
    }
    log::info!("mounted tracefs on {}", target.display());
    find().ok_or_else(|| anyhow!("mounted tracefs but {}/events is missing", target.display()))
}

/// tracefs' mount point, if mounted.
pub fn find() -> Option<PathBuf> {
    CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("events").is_dir())
}

/// Field name → location, parsed from a tracepoint `format` file.
pub fn parse_format(text: &str) -> HashMap<String, FieldLoc> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("field:") else {
            continue;
        };
        let mut decl = None;
        let mut offset = None;
        let mut size = None;
        for (i, part) in rest.split(';').enumerate() {
            let part = part.trim();
            if i == 0 {
                decl = Some(part);
            } else if let Some(v) = part.strip_prefix("offset:") {
                offset = v.parse::<u16>().ok();
            } else if let Some(v) = part.strip_prefix("size:") {
                size = v.parse::<u16>().ok();
            }
        }
        let (Some(decl), Some(offset), Some(size)) = (decl, offset, size) else {
            continue;
        };
        // "const void * skaddr", "__u8 saddr[4]": the name is the last word, minus any "[N]".
        let Some(name) = decl.rsplit([' ', '*']).next() else {
            continue;
        };
        let name = name.split('[').next().unwrap_or(name);
        // FieldLoc holds at most 255 bits; nothing read here is wider than an IPv6 address.
        if size == 0 || size > 31 {
            continue;
        }
        out.insert(name.to_string(), FieldLoc::at(offset, size as u8));
    }
    out
}

/// Fields of one tracepoint.
pub fn format(root: &Path, category: &str, name: &str) -> Result<HashMap<String, FieldLoc>> {
    let path = root.join("events").join(category).join(name).join("format");
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let hint = if category == "syscalls" {
                " (CONFIG_FTRACE_SYSCALLS is off)"
            } else {
                ""
            };
            bail!(
                "tracepoint {category}:{name} is not in this kernel{hint}: no {}",
                path.display()
            )
        }
        // Under lockdown=confidentiality, for one, tracefs refuses reads (EPERM).
        Err(e) => bail!(
            "tracepoint {category}:{name} cannot be read ({}): {e}",
            path.display()
        ),
    };
    Ok(parse_format(&text))
}

fn need(fields: &HashMap<String, FieldLoc>, tp: &str, name: &str) -> Result<FieldLoc> {
    fields
        .get(name)
        .copied()
        .ok_or_else(|| anyhow!("tracepoint {tp} has no field {name}"))
}

/// Byte arrays (addresses) are read whole, not as integers: keep their offset, mark them known.
fn array(fields: &HashMap<String, FieldLoc>, tp: &str, name: &str) -> Result<FieldLoc> {
    let f = need(fields, tp, name)?;
    Ok(FieldLoc::at(f.byte, 8))
}

/// Whether the tracepoints' fields are where the programs' compile-time layout puts them
/// (`tracer_common::tp_layout`), so they can be read with direct context loads.
pub fn matches_fixed_layout(o: &TracepointOffsets) -> bool {
    use tracer_common::tp_layout as l;
    let at = |f: FieldLoc, off: u16, bytes: u8| f.known() && f.byte == off && f.bits == bytes * 8;
    let arr = |f: FieldLoc, off: u16| f.known() && f.byte == off;
    at(o.sys_arg0, l::SYS_ARG0, 8)
        && at(o.sys_arg1, l::SYS_ARG1, 8)
        && at(o.sys_arg2, l::SYS_ARG2, 8)
        && at(o.sys_ret, l::SYS_RET, 8)
        && at(o.ss_skaddr, l::SS_SKADDR, 8)
        && at(o.ss_oldstate, l::SS_OLDSTATE, 4)
        && at(o.ss_newstate, l::SS_NEWSTATE, 4)
        && at(o.ss_sport, l::SS_SPORT, 2)
        && at(o.ss_dport, l::SS_DPORT, 2)
        && at(o.ss_family, l::SS_FAMILY, 2)
        && at(o.ss_protocol, l::SS_PROTOCOL, 2)
        && arr(o.ss_saddr, l::SS_SADDR)
        && arr(o.ss_daddr, l::SS_DADDR)
        && arr(o.ss_saddr_v6, l::SS_SADDR_V6)
        && arr(o.ss_daddr_v6, l::SS_DADDR_V6)
}

/// What tracefs says about the tracepoints bindtrace reads.
pub struct Found {
    /// Offsets of the syscall tracepoints' arguments and of `sock:inet_sock_set_state`; a group
    /// this kernel lacks is left unknown.
    pub offsets: TracepointOffsets,
    /// Why the syscall tracepoints cannot be read, if not (`CONFIG_FTRACE_SYSCALLS` off).
    pub syscalls: Result<(), String>,
    /// Why `sock:inet_sock_set_state` cannot be read, if not (before 4.16).
    pub set_state: Result<(), String>,
}

/// Reads the tracepoints' formats under `root`.
pub fn offsets(root: &Path) -> Found {
    let mut o = TracepointOffsets::default();
    let sys = || -> Result<[FieldLoc; 4]> {
        let enter = format(root, "syscalls", "sys_enter_bind")?;
        let exit = format(root, "syscalls", "sys_exit_bind")?;
        let e = "syscalls:sys_enter_bind";
        Ok([
            need(&enter, e, "fd")?,
            need(&enter, e, "umyaddr")?,
            need(&enter, e, "addrlen")?,
            need(&exit, "syscalls:sys_exit_bind", "ret")?,
        ])
    };
    let syscalls = sys()
        .map(|[a0, a1, a2, ret]| {
            (o.sys_arg0, o.sys_arg1, o.sys_arg2, o.sys_ret) = (a0, a1, a2, ret);
        })
        .map_err(|e| format!("{e:#}"));
    let ss = || -> Result<[FieldLoc; 11]> {
        let f = format(root, "sock", "inet_sock_set_state")?;
        let s = "sock:inet_sock_set_state";
        Ok([
            need(&f, s, "skaddr")?,
            need(&f, s, "oldstate")?,
            need(&f, s, "newstate")?,
            need(&f, s, "sport")?,
            need(&f, s, "dport")?,
            need(&f, s, "family")?,
            need(&f, s, "protocol")?,
            array(&f, s, "saddr")?,
            array(&f, s, "daddr")?,
            array(&f, s, "saddr_v6")?,
            array(&f, s, "daddr_v6")?,
        ])
    };
    let set_state = ss()
        .map(|f| {
            [
                o.ss_skaddr,
                o.ss_oldstate,
                o.ss_newstate,
                o.ss_sport,
                o.ss_dport,
                o.ss_family,
                o.ss_protocol,
                o.ss_saddr,
                o.ss_daddr,
                o.ss_saddr_v6,
                o.ss_daddr_v6,
            ] = f;
        })
        .map_err(|e| format!("{e:#}"));
    Found {
        offsets: o,
        syscalls,
        set_state,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SET_STATE_5_4: &str = "name: inet_sock_set_state
ID: 1234
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:__u16 family;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u8 protocol;\toffset:30;\tsize:1;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:31;\tsize:4;\tsigned:0;
";

    #[test]
    fn parses_pointer_array_and_narrow_fields() {
        let f = parse_format(SET_STATE_5_4);
        assert_eq!(f["skaddr"], FieldLoc::at(8, 8));
        assert_eq!(f["oldstate"], FieldLoc::at(16, 4));
        assert_eq!(f["protocol"], FieldLoc::at(30, 1), "5.4's u8 protocol");
        assert_eq!(f["saddr"].byte, 31);
        assert!(!f.contains_key("format"));
    }
}
