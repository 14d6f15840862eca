//! Memory-mapped segment files, and every `unsafe` block of the log.
//!
//! In: an open segment file (read-write, already at its full length). Out: a [`SegmentMap`]
//! (shared, `Arc`) and [`Region`]s: exclusive, non-overlapping byte ranges of the mapping. The
//! writer (a worker thread) holds the region at and past its cursor and splits records off its
//! front; a `Reservation` holds its record's region while the socket fills it. The segment
//! service's threads only pre-fault and write back ranges (neither changes a byte) and, once
//! every handle to a mapping is gone, unmap it before truncating the file.
//!
//! Why the `unsafe` here is sound:
//! * Ownership: a `SegmentMap` is created only by [`map_segment`], which hands out exactly one
//!   region covering the whole mapping. Regions are only ever split, never cloned or widened, so
//!   two live regions never overlap and a `&mut [u8]` from one never aliases another.
//! * Lifetime: every region holds the `Arc<SegmentMap>`; the mapping is unmapped when the last
//!   region and the last pre-fault request are gone, never earlier.
//! * Truncation: only the segment service truncates a segment file, and only after
//!   `Arc::try_unwrap` proved it held the last handle, i.e. after the mapping is gone. Other
//!   processes must not truncate or write segment files of a running node: readers in other
//!   processes use `read(2)`, never a mapping, because the service truncates sealed files under
//!   them.
//! * Sealed segments: a [`SealedMap`] is a read-only mapping of a sealed file up to its sealed
//!   length, which nothing writes or shortens while it exists ([`map_sealed`]).
//! * The OS calls (`fallocate`, `flock`) below only take a file descriptor the caller owns.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use memmap2::{Advice, Mmap, MmapOptions, MmapRaw, UncheckedAdvice};

/// A read-write shared mapping of a whole segment file.
#[derive(Debug)]
pub struct SegmentMap {
    raw: MmapRaw,
}

/// Maps `len` bytes of `file` and returns the one region that covers all of them.
pub fn map_segment(file: &File, len: usize) -> io::Result<Region> {
    let actual = file.metadata()?.len();
    if u64::try_from(len).map_or(true, |len| len > actual) {
        // Touching a page past the end of the file would raise SIGBUS.
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "segment file shorter than its mapping",
        ));
    }
    let raw = MmapOptions::new().len(len).map_raw(file)?;
    Ok(Region {
        map: Arc::new(SegmentMap { raw }),
        start: 0,
        len,
    })
}

impl SegmentMap {
    pub fn len(&self) -> usize {
        self.raw.len()
    }

    /// Faults `[offset, offset + len)` in writable without changing its contents
    /// (MADV_POPULATE_WRITE), so the writer later meets no page fault there. Safe to call on a
    /// range another thread is writing: the kernel only allocates and maps pages. Returns
    /// `Ok(false)` when the kernel does not know the advice (before Linux 5.14).
    pub fn populate_write(&self, offset: usize, len: usize) -> io::Result<bool> {
        let end = offset.checked_add(len);
        if end.is_none_or(|end| end > self.len()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "pre-fault range outside the mapping",
            ));
        }
        if len == 0 {
            return Ok(true);
        }
        match self.raw.advise_range(Advice::PopulateWrite, offset, len) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

impl SegmentMap {
    /// Keeps the page-cache folios this mapping's faults allocate at one page each
    /// (MADV_RANDOM: no fault read-ahead, and so no large folios sized from it, up to the
    /// device's read-ahead: 8 MiB on the machine measured). A write fault dirties its whole
    /// folio and write-back writes the whole folio, so a group commit that covers 150 KiB
    /// inside a 1 MiB folio writes the folio, and again at every later commit into it: four
    /// times the bytes, and at 8 KiB bodies half the throughput of "fsync" durability
    /// (`bench/RESULTS.md`, run 16). Not for "os" durability, whose write-back covers a second
    /// of records at once and which measured 12% slower with small folios.
    pub fn keep_folios_small(&self) -> io::Result<()> {
        self.raw.advise(Advice::Random)
    }

    /// Writes `[offset, offset + len)` back to the file and waits for the device (msync with
    /// MS_SYNC, which Linux carries out as an fdatasync of that range). Never changes bytes:
    /// safe while other threads write elsewhere in the mapping.
    ///
    /// First it drops this process's page table entries for the whole pages of the range
    /// (MADV_DONTNEED). Write-back must write-protect every mapped dirty page, and each
    /// write-protect on its own flushes the TLB of every core that runs one of our threads: an
    /// IPI per page, a quarter of a worker's time in "fsync" mode in run 15's profile. Dropping
    /// the entries first costs one batched flush for the range; the pages stay in the page cache,
    /// marked dirty, and the next touch of one (a consumer's read, a reservation finishing its
    /// body in the range's last page) maps it again from there.
    pub fn sync_range(&self, offset: usize, len: usize) -> io::Result<()> {
        let end = match offset.checked_add(len) {
            Some(end) if end <= self.len() => end,
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "sync range outside the mapping",
                ))
            }
        };
        if len == 0 {
            return Ok(());
        }
        let page = page_size();
        let (first, last) = (offset - offset % page, end - end % page);
        if last > first {
            // SAFETY: the range lies in the mapping (checked above) and the mapping is shared
            // and backed by the file, so MADV_DONTNEED discards no data: dirty page table
            // entries hand their dirty bit to the page cache, and any later access, by any
            // thread, reads the same bytes back from it. The virtual range stays mapped (only
            // its page table entries go), so every slice into the mapping stays valid.
            unsafe {
                self.raw
                    .unchecked_advise_range(UncheckedAdvice::DontNeed, first, last - first)?;
            }
        }
        self.raw.flush_range(offset, len)
    }
}

/// Exclusive right to read and write bytes `[start, start + len)` of a mapping.
#[derive(Debug)]
pub struct Region {
    map: Arc<SegmentMap>,
    start: usize,
    len: usize,
}

impl Region {
    /// Offset of the region's first byte in the segment file.
    pub fn offset(&self) -> usize {
        self.start
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn map(&self) -> &Arc<SegmentMap> {
        &self.map
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: `start + len <= map.len()` holds from `map_segment` on, since `split_to` and
        // `advance` only shrink it. The mapping is alive: we hold its Arc, and nothing truncates
        // the file while a handle exists (module doc). No other region overlaps this one, and
        // `&mut self` makes the returned slice the only reference into it.
        unsafe {
            std::slice::from_raw_parts_mut(self.map.raw.as_mut_ptr().add(self.start), self.len)
        }
    }

    /// Splits off the first `n` bytes as their own region; `self` keeps the rest.
    /// Panics if `n > self.len()` (a caller's bookkeeping bug, never input-driven).
    pub fn split_to(&mut self, n: usize) -> Region {
        assert!(n <= self.len, "split past the end of a region");
        let front = Region {
            map: Arc::clone(&self.map),
            start: self.start,
            len: n,
        };
        self.start += n;
        self.len -= n;
        front
    }

    /// Gives up the first `n` bytes (records that are complete and will not be written again).
    pub fn advance(&mut self, n: usize) {
        assert!(n <= self.len, "advance past the end of a region");
        self.start += n;
        self.len -= n;
    }

    /// Stores `value` at `at` (relative, 4-aligned) with release ordering, so that any process
    /// that sees the new word also sees every byte written into the mapping before it.
    pub fn publish_u32(&mut self, at: usize, value: u32) {
        assert!(
            at.checked_add(4).is_some_and(|end| end <= self.len),
            "state word outside its region"
        );
        // SAFETY: in bounds per the assertion and the region invariant (see `bytes_mut`).
        let ptr = unsafe { self.map.raw.as_mut_ptr().add(self.start + at) };
        assert!(ptr.cast::<u32>().is_aligned(), "state word not 4-aligned");
        // SAFETY: the pointer is valid, aligned for u32 (asserted) and lives as long as the map
        // we hold; `&mut self` rules out any other Rust reference to these bytes meanwhile.
        let word = unsafe { AtomicU32::from_ptr(ptr.cast::<u32>()) };
        word.store(value, Ordering::Release);
    }
}

/// A read-only shared mapping of the first `sealed_len` bytes of a sealed segment file, for a
/// consumer that reads whole sealed segments (the compactor): its records are read where the
/// writer put them, in the page cache, instead of being copied out with `read(2)` into a buffer
/// of their own. That copy was a third of the compactor's CPU at 8 KiB bodies (the profile of
/// bench/RESULTS.md, run 17), and its destination another segment's worth of memory traffic on
/// cores the request path shares; run 18 measures the node without it.
#[derive(Debug)]
pub struct SealedMap {
    map: Mmap,
}

/// Maps the first `sealed_len` bytes of `file`, which must be a segment whose header, read
/// before, says it is sealed at `sealed_len`; or all of it, if the file is shorter (damaged: its
/// records up to the cut are still there, as recovery keeps them). `InvalidData` if that
/// leaves nothing to map.
///
/// The pages are read in and mapped here (MADV_POPULATE_READ), so that a page the disk cannot
/// read is this call's error, as it would be `read(2)`'s, and not a SIGBUS at the first touch.
/// `Unsupported` where the kernel does not know the advice (before Linux 5.14): read the file
/// instead.
///
/// Why reading through it is sound:
/// * No byte of it changes while it is mapped. A sealed segment is never written again by the
///   node (its writer gave it up before the header was sealed, and the sealed header is final).
///   It becomes writable again only as a spare, and a spare is reused only after
///   [`is_sole_opener`] succeeds, which the kernel refuses while any mapping of the file exists,
///   this one included. Other processes must not write segment files of a running node (module
///   doc).
/// * No page of it goes away. The node shortens a sealed file only to its `sealed_len` (the
///   truncation right after the sealed header is written, or recovery before any consumer
///   runs), and this maps no further than that, nor than the file's length when mapped;
///   deleting or renaming the file leaves the mapping whole.
pub fn map_sealed(file: &File, sealed_len: u64) -> io::Result<SealedMap> {
    let len = usize::try_from(sealed_len.min(file.metadata()?.len()))
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "segment too large to map"))?;
    if len == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "nothing of the sealed segment to map",
        ));
    }
    // SAFETY: see the function doc: the mapped bytes neither change nor go away while mapped.
    let map = unsafe { MmapOptions::new().len(len).map(file)? };
    match map.advise(Advice::PopulateRead) {
        Ok(()) => Ok(SealedMap { map }),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "MADV_POPULATE_READ unknown to this kernel",
        )),
        Err(e) => Err(e),
    }
}

impl AsRef<[u8]> for SealedMap {
    fn as_ref(&self) -> &[u8] {
        &self.map
    }
}

/// The size of a memory page (4 KiB on x86-64; read once from the system).
fn page_size() -> usize {
    static PAGE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: sysconf only reads a system constant.
        let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        usize::try_from(size)
            .ok()
            .filter(|&s| s > 0)
            .unwrap_or(4096)
    })
}

/// Allocates `len` bytes of disk for `file` up front (extending it to `len`): no ENOSPC can hit a
/// write into the mapping later (that would be a SIGBUS), and the blocks are allocated off the
/// hot path. Falls back to a sparse `set_len` where the filesystem cannot allocate.
pub fn allocate(file: &File, len: u64) -> io::Result<()> {
    let off_len = libc::off_t::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "segment too large"))?;
    loop {
        // SAFETY: plain syscall on a descriptor `file` owns for the duration of the call.
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, off_len) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EOPNOTSUPP) => return file.set_len(len),
            _ => return Err(err),
        }
    }
}

/// Takes an exclusive, non-blocking `flock` on `file`; `Ok(false)` if another holder has it.
/// The lock lives as long as the open file.
pub fn try_lock_exclusive(file: &File) -> io::Result<bool> {
    // SAFETY: plain syscall on a descriptor `file` owns for the duration of the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(err)
    }
}

/// Whether `file` is open nowhere else: no other descriptor or mapping of it, in any process.
/// Takes a write lease and drops it at once; the kernel grants one only then. `Ok(false)` too
/// when it cannot tell: a file of another user, a file system without leases.
pub fn is_sole_opener(file: &File) -> io::Result<bool> {
    // SAFETY: plain syscalls on a descriptor `file` owns for the duration of the calls.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLEASE, libc::F_WRLCK) };
    if rc == 0 {
        // SAFETY: as above.
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLEASE, libc::F_UNLCK) };
        return if rc == 0 {
            Ok(true)
        } else {
            Err(io::Error::last_os_error())
        };
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EAGAIN | libc::EACCES | libc::EPERM | libc::EINVAL | libc::ENOLCK) => Ok(false),
        _ => Err(err),
    }
}

/// Unmaps a segment if `map` is the last handle to it, so its file may be truncated next.
/// Gives the handle back otherwise.
pub fn unmap_if_last(map: Arc<SegmentMap>) -> Result<(), Arc<SegmentMap>> {
    Arc::try_unwrap(map).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapped(len: usize) -> (tempfile::TempDir, File, Region) {
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("m"))
            .unwrap();
        allocate(&file, len as u64).unwrap();
        let region = map_segment(&file, len).unwrap();
        (dir, file, region)
    }

    /// The spare pool's reuse check must see a sealed segment's mapping even after the
    /// descriptor it was made from is closed: that is what keeps its bytes from changing.
    #[test]
    fn a_sealed_mapping_keeps_its_file_from_being_reused_until_it_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sealed");
        std::fs::write(&path, b"sealed segment bytes").unwrap();
        let map = map_sealed(&File::open(&path).unwrap(), 6).unwrap();
        assert_eq!(map.as_ref(), b"sealed");
        let spare = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        assert!(!is_sole_opener(&spare).unwrap(), "mapped, yet reusable");
        drop(map);
        assert!(is_sole_opener(&spare).unwrap());
    }

    #[test]
    fn a_sealed_mapping_ends_at_the_sealed_length_or_the_end_of_a_shorter_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("short");
        std::fs::write(&path, b"short").unwrap();
        let file = File::open(&path).unwrap();
        assert_eq!(map_sealed(&file, 3).unwrap().as_ref(), b"sho");
        assert_eq!(map_sealed(&file, 1 << 20).unwrap().as_ref(), b"short");
        let err = map_sealed(&file, 0).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        std::fs::write(&path, b"").unwrap();
        let err = map_sealed(&File::open(&path).unwrap(), 64).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn regions_split_write_and_reach_the_file() {
        let (dir, _file, mut root) = mapped(8192);
        assert!(root.bytes_mut().iter().all(|&b| b == 0));
        let mut head = root.split_to(64);
        head.bytes_mut()[..4].copy_from_slice(b"head");
        root.bytes_mut()[..4].copy_from_slice(b"tail");
        root.publish_u32(8, 0xAABB_CCDD);
        assert_eq!(
            (head.offset(), head.len(), root.offset(), root.len()),
            (0, 64, 64, 8128)
        );
        root.advance(8128);
        assert_eq!(root.len(), 0);
        assert!(root.map().populate_write(0, 8192).is_ok());
        let on_disk = std::fs::read(dir.path().join("m")).unwrap();
        assert_eq!(&on_disk[0..4], b"head");
        assert_eq!(&on_disk[64..68], b"tail");
        assert_eq!(&on_disk[72..76], &0xAABB_CCDDu32.to_le_bytes());
    }

    #[test]
    fn a_write_back_keeps_every_byte_and_the_pages_stay_writable() {
        let (dir, _file, mut root) = mapped(4 * 4096);
        root.bytes_mut()[..10_000].fill(b'a');
        // Drops the page table entries of pages 0 and 1 (whole in the range), then msync.
        root.map().sync_range(0, 10_000).unwrap();
        assert!(root.bytes_mut()[..10_000].iter().all(|&b| b == b'a'));
        // A dropped page and the range's last, partial one take writes again.
        root.bytes_mut()[100..200].fill(b'b');
        root.bytes_mut()[10_000..12_000].fill(b'c');
        root.map().keep_folios_small().unwrap();
        root.map().sync_range(0, 12_000).unwrap();
        let on_disk = std::fs::read(dir.path().join("m")).unwrap();
        assert!(on_disk[..100].iter().all(|&b| b == b'a'));
        assert!(on_disk[100..200].iter().all(|&b| b == b'b'));
        assert!(on_disk[200..10_000].iter().all(|&b| b == b'a'));
        assert!(on_disk[10_000..12_000].iter().all(|&b| b == b'c'));
        assert!(on_disk[12_000..].iter().all(|&b| b == 0));
        assert!(root.map().sync_range(0, 4 * 4096 + 1).is_err());
    }

    #[test]
    fn bounds_are_checked() {
        let (_dir, file, mut root) = mapped(4096);
        assert!(root.map().populate_write(4000, 97).is_err());
        assert!(root.map().populate_write(usize::MAX, 2).is_err());
        assert!(map_segment(&file, 8192).is_err());
        let r =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| root.publish_u32(4094, 1)));
        assert!(r.is_err());
    }

    #[test]
    fn unmap_only_when_last() {
        let (_dir, _file, root) = mapped(4096);
        let extra = Arc::clone(root.map());
        let extra = unmap_if_last(extra).unwrap_err();
        drop(root);
        assert!(unmap_if_last(extra).is_ok());
    }

    #[test]
    fn second_lock_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let open = || File::create(dir.path().join("lock")).unwrap();
        let (a, b) = (open(), open());
        assert!(try_lock_exclusive(&a).unwrap());
        assert!(!try_lock_exclusive(&b).unwrap());
        drop(a);
        assert!(try_lock_exclusive(&b).unwrap());
    }
}
