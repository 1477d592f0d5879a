//! Prefetch hints: the distance the decode kernels request their rows ahead (rows are streams
//! of K/4 bytes, too short for the hardware prefetcher to learn before they end), and lines
//! requested into L1 for loops whose data lie far apart.

/// How far ahead of the rows being read the next rows are prefetched (into L2) by the decode
/// kernels: two tiles, and at least [`MIN_PREFETCH_BYTES`]. Two tiles measured best on the 3B
/// layers with AVX-512 (21 GiB/s on one core, the bandwidth STREAM gets; one tile: 14, four: 20).
#[cfg(target_arch = "x86_64")]
const TILES_AHEAD: usize = 2;
/// Two tiles of the 700M layout's short rows (384 bytes at K = 1536) are only 3 KiB, too
/// little to hide DRAM latency: at least 8 KiB took its decode sweep from 15-16 to 18-21 GiB/s
/// on one core and 25-26 to 28-29 on two (16 KiB: no better at two threads).
#[cfg(target_arch = "x86_64")]
const MIN_PREFETCH_BYTES: usize = 8192;

/// The prefetch distance in bytes for decode tiles of `tile_bytes` packed bytes.
#[cfg(target_arch = "x86_64")]
pub(crate) fn prefetch_distance(tile_bytes: usize) -> usize {
    (TILES_AHEAD * tile_bytes).max(MIN_PREFETCH_BYTES)
}

/// Asks for the cache lines of `values` ahead of their use, into L1: a hint for loops whose
/// data lie too far apart, or stream too fast, for the hardware prefetcher.
#[inline(always)]
pub(crate) fn prefetch<T>(values: &[T]) {
    #[cfg(target_arch = "x86_64")]
    for line in values.chunks((64 / size_of::<T>().max(1)).max(1)) {
        // SAFETY: a prefetch is a hint that never faults, and SSE is in x86-64's baseline.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                line.as_ptr().cast(),
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = values;
}
