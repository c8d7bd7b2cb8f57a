//! `monitor` commands: `when`, `goto EVENT`, `events [N]`, `cause`, `help`.

use crate::ReplayTarget;
use gdbstub::target::ext::monitor_cmd::{outputln, ConsoleOutput, MonitorCmd};

const HELP: &str = "kprobe replay monitor commands:
  when          the current event number and its time
  goto EVENT    go to event EVENT (then `maint flush register-cache` in gdb)
  events [N]    the N events before and after the current one (default 5)
  cause         the causal chain of the incident and where its root cause struck
  help          this text";

impl ReplayTarget {
    /// Runs a monitor command and returns its output.
    pub fn monitor(&mut self, cmd: &str) -> String {
        let mut words = cmd.split_whitespace();
        let verb = words.next().unwrap_or("help");
        let arg = words.next();
        match verb {
            "when" => self.s.when(),
            "goto" => match arg.and_then(|a| a.parse::<u64>().ok()) {
                None => "usage: monitor goto EVENT (an event number, see `monitor events`)".into(),
                Some(n) => match self.s.goto_event(n) {
                    Ok(_) => {
                        self.exited = None;
                        format!("{}\n(gdb caches registers: run `maint flush register-cache` to see the new position)", self.s.when())
                    }
                    Err(e) => format!("cannot go to event {n}: {e}"),
                },
            },
            "events" => {
                let n = arg.and_then(|a| a.parse().ok()).unwrap_or(5);
                self.s.events(n)
            }
            "cause" => match &self.cause {
                None => "no cause for this replay: start it with `kprobe replay FILE --break-at-cause TXN` (the log needs a cause index: `kprobe why --save-index`)".into(),
                Some(c) => {
                    let mut t = c.text.trim_end().to_owned();
                    if let Some(seq) = c.seq {
                        t.push_str(&format!("\nthe root cause struck at event {seq} (`monitor goto {seq}` goes there)"));
                    }
                    t
                }
            },
            "help" => HELP.into(),
            other => format!("unknown monitor command {other:?}\n{HELP}"),
        }
    }
}

impl MonitorCmd for ReplayTarget {
    fn handle_monitor_cmd(&mut self, cmd: &[u8], mut out: ConsoleOutput<'_>) -> Result<(), Self::Error> {
        let text = self.monitor(&String::from_utf8_lossy(cmd));
        for line in text.lines() {
            outputln!(out, "{line}");
        }
        Ok(())
    }
}
