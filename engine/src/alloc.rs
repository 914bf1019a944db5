//! The allocator's settings for `cordon` and `cordon-bench` (both use mimalloc).
//!
//! By default mimalloc commits its arenas ahead of use and keeps freed memory for a second
//! before giving it back. Under a large export (pages of JSON parsed and dropped, across
//! the runtime's threads) that doubled the peak resident memory of `cordon run` (Splunk
//! 1 GiB: 27 → 73 MB; Elasticsearch 256 MiB: 39 → 85–110 MB, over the 100 MB bar). With
//! memory committed as it is used and freed memory given back at once, the peaks are back to
//! 38 and 46 MB.

/// `mi_option_arena_eager_commit` in mimalloc v3's `mi_option_e` (libmimalloc-sys 0.1.49,
/// pinned in the workspace `Cargo.toml`; the crate has no constant for it).
const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
/// `mi_option_purge_delay` in the same enum.
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Apply the settings. The binaries call it before `main` (a constructor), ahead of the
/// first allocation, which reserves mimalloc's first arena: set later, eager commit would
/// already apply to it. It allocates nothing.
pub fn tune() {
    for option in [ARENA_EAGER_COMMIT, PURGE_DELAY] {
        // SAFETY: setting an option is a plain store into mimalloc's option table; the
        // option numbers are checked against their defaults by the test below.
        unsafe { libmimalloc_sys::mi_option_set(option, 0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The numbers name the options meant: their documented defaults (`arena_eager_commit`
    /// 2, "only on overcommit systems"; `purge_delay` 1,000 ms in `options.c`) and their
    /// neighbours' constants in the binding.
    #[test]
    fn option_numbers_match_the_bundled_mimalloc() {
        use libmimalloc_sys as sys;
        assert_eq!(sys::mi_option_use_numa_nodes, PURGE_DELAY + 1);
        assert_eq!(sys::mi_option_verbose, ARENA_EAGER_COMMIT - 2);
        // The test binary keeps the system allocator, and nothing here set these options.
        for (option, default, name) in [
            (PURGE_DELAY, 1000, "MIMALLOC_PURGE_DELAY"),
            (ARENA_EAGER_COMMIT, 2, "MIMALLOC_ARENA_EAGER_COMMIT"),
        ] {
            if std::env::var_os(name).is_none() {
                // SAFETY: reading an option.
                assert_eq!(unsafe { sys::mi_option_get(option) }, default, "{name}");
            }
        }
    }
}
