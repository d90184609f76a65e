//! Who holds a lease or runs a run: `host/pid:start/uuid`, so that a run on the same host can
//! tell that the holder's process has stopped (its pid is gone, or now belongs to another
//! process) and take over at once instead of waiting for the lease to expire.

use std::fmt;

/// This process on this host, and one run of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub host: String,
    pub pid: u32,
    /// When the process started, in clock ticks since boot (/proc/PID/stat field 22): a pid
    /// the kernel reused for another process does not look alive.
    pub start: u64,
    pub run: String,
}

impl Holder {
    /// A new run of this process.
    pub fn this_process() -> Holder {
        let pid = std::process::id();
        Holder {
            host: host_name(),
            pid,
            start: process_start(pid).unwrap_or(0),
            run: uuid::Uuid::new_v4().simple().to_string(),
        }
    }

    pub fn parse(s: &str) -> Option<Holder> {
        let mut parts = s.splitn(3, '/');
        let host = parts.next()?.to_string();
        let (pid, start) = parts.next()?.split_once(':')?;
        let run = parts.next()?.to_string();
        Some(Holder {
            host,
            pid: pid.parse().ok()?,
            start: start.parse().ok()?,
            run,
        })
    }

    /// Whether this holder is certainly gone: it ran on this host and its process has stopped.
    /// A holder on another host (or one written by an older version) is never "certainly
    /// gone": only its lease's expiry tells.
    pub fn is_gone(&self) -> bool {
        if self.host != host_name() || self.start == 0 {
            return false;
        }
        process_start(self.pid) != Some(self.start)
    }
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}:{}/{}", self.host, self.pid, self.start, self.run)
    }
}

/// Whether the holder written as `s` is certainly gone (see [`Holder::is_gone`]).
pub fn is_gone(s: &str) -> bool {
    Holder::parse(s).is_some_and(|h| h.is_gone())
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().replace('/', "_"))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// A process's start time (clock ticks since boot), None when there is no such process.
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_holder_round_trips_and_this_process_is_alive() {
        let me = Holder::this_process();
        assert!(me.start > 0, "{me:?}");
        let parsed = Holder::parse(&me.to_string()).unwrap();
        assert_eq!(parsed, me);
        assert!(!me.is_gone());
        assert!(!is_gone(&me.to_string()));
    }

    #[test]
    fn a_stopped_process_on_this_host_is_gone_and_other_hosts_never_are() {
        let me = Holder::this_process();
        let stopped = Holder {
            start: me.start + 1,
            ..me.clone()
        };
        assert!(stopped.is_gone(), "a reused pid does not look alive");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let dead = Holder {
            pid,
            start: 1,
            ..me.clone()
        };
        assert!(dead.is_gone());
        let elsewhere = Holder {
            host: "another-host".into(),
            ..stopped
        };
        assert!(!elsewhere.is_gone());
        // A holder an older version wrote (a bare uuid) is never taken for gone.
        assert!(!is_gone("0b9f6c52-7a51-4f38-9d6b-6f1f6b1a2c3d"));
    }
}
