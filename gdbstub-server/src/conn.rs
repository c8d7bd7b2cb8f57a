//! A buffered TCP connection. gdbstub's own `TcpStream` connection writes
//! and reads one byte per system call (and switches the socket between
//! blocking and non-blocking on every read): with `TCP_NODELAY` a reply
//! leaves as dozens of segments. Here a reply is one `write` at flush and
//! a request is read in one `read`.

use gdbstub::conn::{Connection, ConnectionExt};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

/// The interrupt watcher of a connection (see [`BufConn::watcher`]).
pub struct Watcher {
    running: Mutex<bool>,
    cv: Condvar,
    closed: AtomicBool,
}

impl Watcher {
    /// Turns watching on while the replay runs, off when it stopped.
    pub fn running(&self, on: bool) {
        *self.running.lock().unwrap() = on;
        self.cv.notify_all();
    }
}

/// A TCP connection with whole-packet writes and buffered reads.
pub struct BufConn {
    stream: TcpStream,
    watcher: Option<Arc<Watcher>>,
    out: Vec<u8>,
    inbuf: Box<[u8; 16384]>,
    start: usize,
    end: usize,
}

impl BufConn {
    /// Wraps a connected stream.
    pub fn new(stream: TcpStream) -> BufConn {
        let _ = stream.set_nodelay(true);
        BufConn { stream, watcher: None, out: Vec::with_capacity(4096), inbuf: Box::new([0; 16384]), start: 0, end: 0 }
    }

    fn fill(&mut self, block: bool) -> std::io::Result<bool> {
        if self.start < self.end {
            return Ok(true);
        }
        if !block {
            self.stream.set_nonblocking(true)?;
        }
        let r = Read::read(&mut self.stream, &mut self.inbuf[..]);
        if !block {
            self.stream.set_nonblocking(false)?;
        }
        match r {
            Ok(0) => Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the debugger closed the connection")),
            Ok(n) => {
                self.start = 0;
                self.end = n;
                Ok(true)
            }
            Err(e) if !block && e.kind() == std::io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e),
        }
    }
}

impl BufConn {
    /// Starts watching the connection for the debugger's interrupt (Ctrl-C,
    /// byte 0x03) while the replay runs: `flag` is set when it arrives,
    /// without consuming it. One thread per connection; it polls only
    /// while [`Watcher::running`] is on.
    pub fn watcher(&mut self, flag: Arc<AtomicBool>) -> Option<Arc<Watcher>> {
        if let Some(w) = &self.watcher {
            return Some(w.clone());
        }
        let s = self.stream.try_clone().ok()?;
        let w = Arc::new(Watcher { running: Mutex::new(false), cv: Condvar::new(), closed: AtomicBool::new(false) });
        let w2 = w.clone();
        std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            let fd = s.as_raw_fd();
            while !w2.closed.load(Ordering::Relaxed) {
                {
                    let mut r = w2.running.lock().unwrap();
                    while !*r && !w2.closed.load(Ordering::Relaxed) {
                        r = w2.cv.wait(r).unwrap();
                    }
                }
                let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
                // SAFETY: one valid pollfd, for the duration of the call.
                if unsafe { libc::poll(&mut p, 1, 50) } <= 0 {
                    continue;
                }
                let mut b = [0u8; 1];
                match s.peek(&mut b) {
                    Ok(1) if b[0] == 0x03 && *w2.running.lock().unwrap() => {
                        flag.store(true, Ordering::Relaxed);
                        // Once per run: wait for the stop before looking again.
                        let mut r = w2.running.lock().unwrap();
                        while *r && !w2.closed.load(Ordering::Relaxed) {
                            r = w2.cv.wait(r).unwrap();
                        }
                    }
                    Ok(0) | Err(_) => return,
                    _ => std::thread::sleep(std::time::Duration::from_millis(10)),
                }
            }
        });
        self.watcher = Some(w.clone());
        Some(w)
    }

    /// Consumes a pending interrupt byte, if that is what comes next.
    pub fn take_interrupt(&mut self) -> bool {
        if matches!(self.peek(), Ok(Some(0x03))) {
            self.start += 1;
            return true;
        }
        false
    }
}

impl Drop for BufConn {
    fn drop(&mut self) {
        if let Some(w) = &self.watcher {
            w.closed.store(true, Ordering::Relaxed);
            w.cv.notify_all();
        }
    }
}

impl Connection for BufConn {
    type Error = std::io::Error;

    fn write(&mut self, byte: u8) -> Result<(), Self::Error> {
        self.out.push(byte);
        Ok(())
    }

    fn write_all(&mut self, buf: &[u8]) -> Result<(), Self::Error> {
        self.out.extend_from_slice(buf);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Self::Error> {
        if !self.out.is_empty() {
            Write::write_all(&mut self.stream, &self.out)?;
            self.out.clear();
        }
        Write::flush(&mut self.stream)
    }
}

impl ConnectionExt for BufConn {
    fn read(&mut self) -> Result<u8, Self::Error> {
        // A read means the stub waits for the debugger: what it wrote must be out.
        self.flush()?;
        self.fill(true)?;
        let b = self.inbuf[self.start];
        self.start += 1;
        Ok(b)
    }

    fn peek(&mut self) -> Result<Option<u8>, Self::Error> {
        self.flush()?;
        Ok(if self.fill(false)? { Some(self.inbuf[self.start]) } else { None })
    }
}
