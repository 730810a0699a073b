//! The load-time configuration global (see `tracer_common::Config`).

use tracer_common::Config;

/// Overwritten by the collector at load time (`EbpfLoader::override_global("CONFIG", ..)`); the
/// kernel then freezes it, so the verifier sees constants and prunes disabled filters.
#[unsafe(no_mangle)]
pub static CONFIG: Config = Config::ZERO;

/// Reads one field of [`CONFIG`] with a volatile load, so the compiler cannot fold the
/// compile-time default in: `conf!(filter_pid)`, `conf!(kernel.skc_num)`.
macro_rules! conf {
    ($($field:ident).+) => {{
        #[allow(unused_unsafe, reason = "the macro is also used inside unsafe blocks")]
        // SAFETY: CONFIG is a plain static; the read is in bounds and aligned.
        let v = unsafe { core::ptr::read_volatile(&raw const $crate::config::CONFIG.$($field).+) };
        v
    }};
}
pub(crate) use conf;
