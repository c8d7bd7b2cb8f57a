//! Extended mode (`target extended-remote`): `run` and `R` restart the
//! replay from its beginning, as `rr` does, and `run EVENT` goes to event
//! EVENT (like `monitor goto`, but gdb then reads the new state itself);
//! attaching elsewhere is refused. Also names the debugged process by its
//! recorded pid.

use crate::ReplayTarget;
use gdbstub::common::Pid;
use gdbstub::target::ext::extended_mode::{Args, AttachKind, CurrentActivePid, CurrentActivePidOps, ExtendedMode, ShouldTerminate};
use gdbstub::target::{TargetError, TargetResult};

impl ExtendedMode for ReplayTarget {
    fn run(&mut self, _filename: Option<&[u8]>, mut args: Args<'_, '_>) -> TargetResult<Pid, Self> {
        let event = args.next().map(|a| String::from_utf8_lossy(a).trim().to_owned());
        match event.as_deref().map(str::parse::<u64>) {
            None => self.s.goto_start().map(|_| ()),
            Some(Ok(n)) => self.s.goto_event(n).map(|_| ()),
            Some(Err(_)) => {
                eprintln!("kprobe: `run` takes an event number (see `monitor events`), not {:?}", event.unwrap_or_default());
                return Err(TargetError::NonFatal);
            }
        }
        .map_err(|e| TargetError::Fatal(e.into()))?;
        self.exited = None;
        Ok(Pid::new(self.s.pid().max(1) as usize).unwrap())
    }

    fn attach(&mut self, _pid: Pid) -> TargetResult<(), Self> {
        Err(TargetError::NonFatal)
    }

    fn query_if_attached(&mut self, _pid: Pid) -> TargetResult<AttachKind, Self> {
        // Quitting the debugger detaches (ends the session) rather than killing.
        Ok(AttachKind::Attach)
    }

    fn kill(&mut self, _pid: Option<Pid>) -> TargetResult<ShouldTerminate, Self> {
        // In extended mode gdb's `run` kills the running process first: the
        // replay stays, to be started again by the `run` that follows
        // (quitting detaches, which ends it). Otherwise a kill ends the session.
        Ok(if self.extended { ShouldTerminate::No } else { ShouldTerminate::Yes })
    }

    fn on_start(&mut self) -> Result<(), Self::Error> {
        self.extended = true;
        Ok(())
    }

    fn restart(&mut self) -> Result<(), Self::Error> {
        self.s.goto_start()?;
        self.exited = None;
        Ok(())
    }

    fn support_current_active_pid(&mut self) -> Option<CurrentActivePidOps<'_, Self>> {
        Some(self)
    }
}

impl CurrentActivePid for ReplayTarget {
    fn current_active_pid(&mut self) -> Result<Pid, Self::Error> {
        Ok(Pid::new(self.s.pid().max(1) as usize).unwrap())
    }
}
