//! Catching syscalls (`catch syscall` in gdb): the replay stops at the
//! entry and at the exit of the chosen syscalls, served from the log.

use crate::ReplayTarget;
use gdbstub::target::ext::catch_syscalls::{CatchSyscalls, SyscallNumbers};
use gdbstub::target::TargetResult;

impl CatchSyscalls for ReplayTarget {
    fn enable_catch_syscalls(&mut self, filter: Option<SyscallNumbers<'_, u64>>) -> TargetResult<(), Self> {
        let list = filter.map(|f| f.map(|n| n as u32).collect::<Vec<_>>()).unwrap_or_default();
        self.s.set_catch(Some(list));
        Ok(())
    }

    fn disable_catch_syscalls(&mut self) -> TargetResult<(), Self> {
        self.s.set_catch(None);
        Ok(())
    }
}
