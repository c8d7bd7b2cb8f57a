//! The consumer side of the BPF ring buffer, mapped directly.
//!
//! aya's `RingBuf` publishes the consumer position after every record: a
//! store to the page the programs read on every reservation, so with the
//! reader draining on the other core that cache line moved between the
//! cores once per record, and it hands out records one by one (the reader
//! copied each out before using it). Here the records of a drain are
//! handed out in place and the consumer position is published once per
//! drain (and every eighth of the ring within a long one, so the programs
//! see the room as it frees up). The reader waits as before: `poll` on the
//! map returns at once while records wait, else when the programs wake it
//! (the fill threshold) or the timer expires. [`Ring::pause`] lets records
//! gather after a small drain, and ends early when the programs wake the
//! reader.
use anyhow::{Context, Result};
use aya::maps::MapData;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

const BUSY_BIT: u32 = 1 << 31;
const DISCARD_BIT: u32 = 1 << 30;
const HDR: usize = 8;

/// A BPF ring buffer map, mapped for reading.
pub struct Ring {
    _map: MapData,
    consumer: *mut u8,
    producer: *mut u8,
    page: usize,
    size: usize,
    pos: usize,
    /// The map registered edge-triggered: reports the programs' wakeups only.
    wakeups: OwnedFd,
}

// SAFETY: the mappings belong to this value alone; the kernel side is
// synchronized through the atomics.
unsafe impl Send for Ring {}

impl Ring {
    /// Maps the ring buffer `map` of `size` bytes (a power of two multiple of the page size).
    pub fn new(map: MapData, size: usize) -> Result<Ring> {
        let fd = map.fd().as_fd().as_raw_fd();
        let wakeups = edge_triggered(fd).context("epoll for the ring buffer's wakeups")?;
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        // SAFETY: mapping the ring-buffer map as the kernel documents it: the
        // consumer page read-write at offset 0; the producer page and the data
        // (mapped twice in a row, so a record never wraps) read-only after it.
        let consumer = unsafe { libc::mmap(std::ptr::null_mut(), page, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0) };
        if consumer == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context("mapping the ring buffer's consumer page");
        }
        // SAFETY: as above.
        let producer =
            unsafe { libc::mmap(std::ptr::null_mut(), page + 2 * size, libc::PROT_READ, libc::MAP_SHARED, fd, page as libc::off_t) };
        if producer == libc::MAP_FAILED {
            let e = std::io::Error::last_os_error();
            // SAFETY: unmapping what was mapped above.
            unsafe { libc::munmap(consumer, page) };
            return Err(e).context("mapping the ring buffer's data pages");
        }
        let mut r = Ring { _map: map, consumer: consumer.cast(), producer: producer.cast(), page, size, pos: 0, wakeups };
        r.pos = r.consumer_pos().load(Ordering::Acquire);
        Ok(r)
    }

    fn consumer_pos(&self) -> &AtomicUsize {
        // SAFETY: the consumer page starts with the consumer position (an aligned word).
        unsafe { &*(self.consumer as *const AtomicUsize) }
    }

    fn producer_pos(&self) -> &AtomicUsize {
        // SAFETY: the producer page starts with the producer position.
        unsafe { &*(self.producer as *const AtomicUsize) }
    }

    /// Waits `d` or until the programs wake the reader (the ring passed its
    /// fill threshold), whichever comes first, whether or not records wait.
    pub fn pause(&self, d: Duration) {
        let mut ev = libc::epoll_event { events: 0, u64: 0 };
        let t = libc::timespec { tv_sec: d.as_secs() as libc::time_t, tv_nsec: d.subsec_nanos() as libc::c_long };
        // SAFETY: one valid event buffer for one event, a valid timeout, no signal mask.
        unsafe { libc::epoll_pwait2(self.wakeups.as_raw_fd(), &mut ev, 1, &t, std::ptr::null()) };
    }

    /// Returns at once while records wait; else waits until the programs
    /// wake the reader (the fill threshold) or `timeout` passes.
    pub fn wait(&self, timeout: Duration) {
        let mut pfd = libc::pollfd { fd: self._map.fd().as_fd().as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, timeout.as_millis().min(i32::MAX as u128) as i32) };
    }

    /// Hands every committed record to `f` in place (`f` returns false to
    /// stop early); returns the bytes consumed.
    pub fn drain(&mut self, mut f: impl FnMut(&[u8]) -> bool) -> usize {
        let mask = self.size - 1;
        let start = self.pos;
        let mut published = self.pos;
        let publish_every = (self.size / 8).max(HDR);
        // SAFETY: the data pages follow the producer page.
        let data = unsafe { self.producer.add(self.page) };
        let mut prod = self.producer_pos().load(Ordering::Acquire);
        loop {
            if self.pos == prod {
                prod = self.producer_pos().load(Ordering::Acquire);
                if self.pos == prod {
                    break;
                }
            }
            let off = self.pos & mask;
            // SAFETY: every record starts with an 8-byte header at an 8-byte aligned offset in the data pages.
            let hdr = unsafe { &*(data.add(off) as *const AtomicU32) }.load(Ordering::Acquire);
            if hdr & BUSY_BIT != 0 {
                break; // reserved, not yet committed
            }
            let len = (hdr & !(BUSY_BIT | DISCARD_BIT)) as usize;
            let mut go = true;
            if hdr & DISCARD_BIT == 0 {
                // SAFETY: the data is mapped twice, so the record is contiguous even when it wraps.
                let rec = unsafe { std::slice::from_raw_parts(data.add(off + HDR), len.min(self.size)) };
                go = f(rec);
            }
            self.pos += (len + HDR).next_multiple_of(8);
            if self.pos - published >= publish_every {
                self.consumer_pos().store(self.pos, Ordering::Release);
                published = self.pos;
            }
            if !go {
                break;
            }
        }
        if published != self.pos {
            self.consumer_pos().store(self.pos, Ordering::Release);
        }
        self.pos - start
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: unmapping the two mappings made in `new`.
        unsafe {
            libc::munmap(self.consumer.cast(), self.page);
            libc::munmap(self.producer.cast(), self.page + 2 * self.size);
        }
    }
}

/// An epoll instance watching `fd` edge-triggered: ready again only after a
/// wakeup of its wait queue, not while records merely wait.
fn edge_triggered(fd: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: epoll_create1 has no memory preconditions.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: ep is a new descriptor owned by nobody else.
    let ep = unsafe { OwnedFd::from_raw_fd(ep) };
    let mut ev = libc::epoll_event { events: (libc::EPOLLIN | libc::EPOLLET) as u32, u64: 0 };
    // SAFETY: valid descriptors and one event.
    if unsafe { libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(ep)
}
