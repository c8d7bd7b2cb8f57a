//! Software breakpoints and write watchpoints.
//!
//! Debug registers do not fire in every VM (not in this one), so write
//! watchpoints are checked by the session: watched bytes are compared
//! after every event and every slice of user code, and a change is
//! narrowed to the writing instruction by single-stepping (see
//! [`tracer::debug`]). Read and access watchpoints are refused.

use crate::ReplayTarget;
use gdbstub::target::ext::breakpoints::{Breakpoints, HwWatchpoint, HwWatchpointOps, SwBreakpoint, SwBreakpointOps, WatchKind};
use gdbstub::target::TargetResult;

impl Breakpoints for ReplayTarget {
    fn support_sw_breakpoint(&mut self) -> Option<SwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_watchpoint(&mut self) -> Option<HwWatchpointOps<'_, Self>> {
        Some(self)
    }
}

impl SwBreakpoint for ReplayTarget {
    fn add_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        // Also kept for processes and libraries mapped later (re-inserted on every replay).
        self.s.add_breakpoint(addr);
        Ok(true)
    }

    fn remove_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        self.s.remove_breakpoint(addr);
        Ok(true)
    }
}

impl HwWatchpoint for ReplayTarget {
    fn add_hw_watchpoint(&mut self, addr: u64, len: u64, kind: WatchKind) -> TargetResult<bool, Self> {
        if kind != WatchKind::Write || len == 0 || len > 64 {
            return Ok(false);
        }
        self.s.add_watch(addr, len as usize);
        Ok(true)
    }

    fn remove_hw_watchpoint(&mut self, addr: u64, len: u64, kind: WatchKind) -> TargetResult<bool, Self> {
        if kind != WatchKind::Write {
            return Ok(false);
        }
        Ok(self.s.remove_watch(addr, len as usize))
    }
}
