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
