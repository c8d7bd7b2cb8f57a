//! A GDB remote serial protocol server on a kprobe replay, built on the
//! [`gdbstub`] crate: gdb and lldb attach to a deterministic replay of a
//! recorded process and run it forwards and backwards.
//!
//! One module per protocol extension, as in gdbstub:
//! [`arch`] (target description), `base` (threads, registers, memory),
//! `resume` (continue, step, range step, reverse-continue, reverse-step),
//! `breakpoints` (software breakpoints, write watchpoints), `catch`
//! (catching syscalls), `files` (exec file, auxv, shared libraries),
//! `hostio` (the program's files as recorded, for `target:` sysroots),
//! `extended` (`run` restarts the replay), `monitor` (`when`, `goto`,
//! `events`, `cause`).
//!
//! Positions, reverse execution and watchpoints come from
//! [`tracer::debug::Session`]; see there for how a position inside user
//! code is named and reached again without a performance counter.
//!
//! ```no_run
//! let session = tracer::debug::Session::new("incident.kpl".into())?;
//! let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
//! println!("listening on {}", listener.local_addr()?);
//! let (conn, _) = listener.accept()?;
//! gdbserver::serve(session, conn, gdbserver::Options::default())?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

pub mod arch;
mod base;
mod breakpoints;
mod catch;
pub mod conn;
mod extended;
mod files;
mod hostio;
mod monitor;
mod resume;

use gdbstub::common::Signal;
use gdbstub::stub::run_blocking::{BlockingEventLoop, Event, WaitForStopReasonError};
use gdbstub::stub::{DisconnectReason, GdbStub, MultiThreadStopReason};
use gdbstub::target::ext::base::BaseOps;
use gdbstub::target::Target;
use std::net::TcpStream;
use tracer::debug::Session;

/// What `monitor cause` shows, and where the cause struck.
#[derive(Clone, Debug, Default)]
pub struct Cause {
    /// The causal chain, as `kprobe why` prints it.
    pub text: String,
    /// The event where the root cause struck (`monitor cause` goes there).
    pub seq: Option<u64>,
}

/// Server options.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The causal chain for `monitor cause` (from the log's cause index).
    pub cause: Option<Cause>,
}

/// Errors of the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The replay failed (divergence, bad log, ptrace).
    #[error(transparent)]
    Replay(#[from] tracer::Error),
    /// The connection to the debugger failed.
    #[error("connection to the debugger: {0}")]
    Connection(String),
    /// A protocol error.
    #[error("GDB protocol: {0}")]
    Protocol(String),
}

/// How a debugging session ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The debugger detached or disconnected.
    Disconnected,
    /// The debugger killed the replay.
    Killed,
    /// The replay reached the end (recorded exit code).
    Exited(u8),
}

/// What to do on the next resume (set by the resume packets).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    Cont,
    Step(u32),
    Range { tid: u32, start: u64, end: u64 },
    ReverseCont,
    ReverseStep(u32),
}

/// The gdbstub target: a debugging session over a replay.
pub struct ReplayTarget {
    pub(crate) s: Session,
    pub(crate) action: Action,
    pub(crate) cause: Option<Cause>,
    pub(crate) exited: Option<i32>,
    /// Files open through Host I/O (their bytes, read at open).
    pub(crate) files: std::collections::HashMap<u32, Vec<u8>>,
    /// The debugger asked for extended mode (`target extended-remote`).
    pub(crate) extended: bool,
}

impl ReplayTarget {
    /// A target on a session.
    pub fn new(s: Session, opts: Options) -> ReplayTarget {
        ReplayTarget { s, action: Action::Cont, cause: opts.cause, exited: None, files: Default::default(), extended: false }
    }

    /// The session.
    pub fn session(&mut self) -> &mut Session {
        &mut self.s
    }
}

pub(crate) fn tid_of(t: gdbstub::common::Tid) -> u32 {
    t.get() as u32
}

pub(crate) fn gdb_tid(t: u32) -> gdbstub::common::Tid {
    gdbstub::common::Tid::new(t.max(1) as usize).unwrap()
}

impl Target for ReplayTarget {
    type Arch = arch::X86_64Linux;
    type Error = Error;

    fn base_ops(&mut self) -> BaseOps<'_, Self::Arch, Self::Error> {
        BaseOps::MultiThread(self)
    }

    fn guard_rail_implicit_sw_breakpoints(&self) -> bool {
        true
    }

    fn support_breakpoints(&mut self) -> Option<gdbstub::target::ext::breakpoints::BreakpointsOps<'_, Self>> {
        Some(self)
    }

    fn support_monitor_cmd(&mut self) -> Option<gdbstub::target::ext::monitor_cmd::MonitorCmdOps<'_, Self>> {
        Some(self)
    }

    fn support_catch_syscalls(&mut self) -> Option<gdbstub::target::ext::catch_syscalls::CatchSyscallsOps<'_, Self>> {
        Some(self)
    }

    fn support_exec_file(&mut self) -> Option<gdbstub::target::ext::exec_file::ExecFileOps<'_, Self>> {
        Some(self)
    }

    fn support_auxv(&mut self) -> Option<gdbstub::target::ext::auxv::AuxvOps<'_, Self>> {
        Some(self)
    }

    fn support_host_io(&mut self) -> Option<gdbstub::target::ext::host_io::HostIoOps<'_, Self>> {
        Some(self)
    }

    fn support_extended_mode(&mut self) -> Option<gdbstub::target::ext::extended_mode::ExtendedModeOps<'_, Self>> {
        Some(self)
    }

    fn support_libraries_svr4(&mut self) -> Option<gdbstub::target::ext::libraries::LibrariesSvr4Ops<'_, Self>> {
        Some(self)
    }
}

struct Loop;

impl BlockingEventLoop for Loop {
    type Target = ReplayTarget;
    type Connection = conn::BufConn;
    type StopReason = MultiThreadStopReason<u64>;

    fn wait_for_stop_reason(
        target: &mut ReplayTarget,
        conn: &mut conn::BufConn,
    ) -> Result<Event<Self::StopReason>, WaitForStopReasonError<Error, std::io::Error>> {
        // The replay runs to its next stop on this thread (ptrace ties it
        // here); a watcher thread turns the debugger's Ctrl-C into a stop
        // between two events of a forward continue.
        let watcher = conn.watcher(target.s.interrupt_flag());
        if let Some(w) = &watcher {
            w.running(true);
        }
        let stop = target.run();
        if let Some(w) = &watcher {
            w.running(false);
        }
        let stop = stop.map_err(WaitForStopReasonError::Target)?;
        // The interrupt byte was only peeked at: it is answered by this stop.
        if matches!(stop, MultiThreadStopReason::SignalWithThread { signal: Signal::SIGINT, .. }) {
            conn.take_interrupt();
        }
        Ok(Event::TargetStopped(stop))
    }

    fn on_interrupt(_target: &mut ReplayTarget) -> Result<Option<Self::StopReason>, Error> {
        Ok(Some(MultiThreadStopReason::Signal(Signal::SIGINT)))
    }
}

/// Serves one debugger connection until it detaches, kills the replay, or
/// the replay ends.
pub fn serve(session: Session, conn: TcpStream, opts: Options) -> Result<Outcome, Error> {
    let _ = conn.set_nodelay(true);
    let mut target = ReplayTarget::new(session, opts);
    serve_target(&mut target, conn)
}

/// Like [`serve`], on a target the caller keeps (to inspect it afterwards).
pub fn serve_target(target: &mut ReplayTarget, conn: TcpStream) -> Result<Outcome, Error> {
    let stub = GdbStub::new(conn::BufConn::new(conn));
    match stub.run_blocking::<Loop>(target) {
        Ok(DisconnectReason::Disconnect) => Ok(Outcome::Disconnected),
        Ok(DisconnectReason::Kill) => Ok(Outcome::Killed),
        Ok(DisconnectReason::TargetExited(c)) => Ok(Outcome::Exited(c)),
        Ok(DisconnectReason::TargetTerminated(_)) => Ok(Outcome::Killed),
        Err(e) => {
            if e.is_target_error() {
                match e.into_target_error() {
                    Some(err) => Err(err),
                    None => Err(Error::Protocol("target error".into())),
                }
            } else if e.is_connection_error() {
                Err(Error::Connection(format!("{e:?}")))
            } else {
                Err(Error::Protocol(format!("{e:?}")))
            }
        }
    }
}
