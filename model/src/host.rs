//! Settings of the host process for CPU inference and training.

/// Largest freed block glibc keeps for reuse instead of unmapping it (its maximum on 64-bit).
const KEEP_BLOCKS_UP_TO: i32 = 32 << 20;

/// Makes glibc's allocator keep freed blocks of up to 32 MiB and stop trimming its heap, so the
/// activations one forward pass frees are reused by the next instead of being returned to the
/// OS and faulted in again page by page (on Flex, the mid-size forward pass ran 4-9% faster).
/// Process-wide and permanent: peak memory is unchanged, but the process keeps what it has
/// reached. Returns whether the allocator accepted both settings; does nothing (and returns
/// false) outside Linux with glibc. The `blip3` binary calls it first thing; an application
/// embedding the model decides for itself.
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `mallopt` only changes allocator parameters; it is called with valid
        // parameter numbers and values and touches no memory of ours.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, KEEP_BLOCKS_UP_TO) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = KEEP_BLOCKS_UP_TO;
        false
    }
}
