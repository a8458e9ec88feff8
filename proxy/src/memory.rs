//! Process memory settings shared by the binaries built on mast-proxy (the sidecar itself and
//! the pilot load generator, which runs its twins).

/// Turn transparent huge pages off for this process (and, as the kernel keeps the flag across
/// `fork` and `execve`, its children).
///
/// mimalloc (v3) asks for huge pages on its 1 GiB arena (`MADV_HUGEPAGE`), so the first byte
/// touched in any 2 MiB stretch makes the whole stretch resident and the kernel zeroes it.
/// - The sidecar: its heap is small and spread over several such stretches; with the demo's
///   config from pilot the heap was 7.7 MB resident (6 MB of it huge pages) for 0.8 MB without
///   them (bench/README.md, "Sidecar memory").
/// - pilot-load: its simulated proxies take in gigabytes in messages of up to 550 KB, and with
///   huge pages most of one of its threads went on zeroing them (`clear_page_erms`).
///
/// It allocates nothing, so it can run as an `.init_array` constructor before the allocator's.
pub extern "C" fn disable_transparent_huge_pages() {
    // SAFETY: a prctl with integer arguments that only sets a flag of this process. A failing
    // prctl (a kernel without it) leaves THP as it was.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

// Indices of mi_option_arena_eager_commit and mi_option_purge_delay in mimalloc.h (v2 and v3
// alike; v3 is what libmimalloc-sys builds), which libmimalloc-sys does not name.
const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Whether mimalloc commits a whole arena when it reserves one (its default on Linux).
/// Call it first thing in `main`.
pub fn set_arena_eager_commit(eager: bool) {
    // SAFETY: a plain option setter; mimalloc reads it when it next reserves an arena.
    unsafe { libmimalloc_sys::mi_option_set(ARENA_EAGER_COMMIT, eager.into()) }
}

/// How long pages mimalloc freed stay committed before they go back to the OS: 0 at once,
/// -1 never (mimalloc's default is 1000 ms). Call it first thing in `main`.
pub fn set_purge_delay_ms(ms: i64) {
    // SAFETY: a plain option setter; mimalloc reads it when it next purges.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, ms) }
}
