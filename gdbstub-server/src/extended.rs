//! Extended mode (`target extended-remote`): `run` and `R` restart the
//! replay from its beginning, as `rr` does; attaching elsewhere is refused.
//! Also names the debugged process by its recorded pid.

use crate::ReplayTarget;
use gdbstub::common::Pid;
use gdbstub::target::ext::extended_mode::{Args, AttachKind, CurrentActivePid, CurrentActivePidOps, ExtendedMode, ShouldTerminate};
use gdbstub::target::{TargetError, TargetResult};

impl ExtendedMode for ReplayTarget {
    fn run(&mut self, _filename: Option<&[u8]>, _args: Args<'_, '_>) -> TargetResult<Pid, Self> {
        self.s.goto_start().map_err(|e| TargetError::Fatal(e.into()))?;
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
        Ok(ShouldTerminate::Yes)
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
