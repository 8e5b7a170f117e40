//! What the judge's two kinds of child process (the GPU worker and the
//! bounded compile) share: each leads its own process group, so a candidate
//! that made it start helpers, or hang, is killed whole.

use std::process::{Child, ExitStatus};

/// Sends SIGKILL to the child's process group (it leads its own group:
/// `process_group(0)` at spawn).
pub(crate) fn kill_group(child: &Child) {
    #[cfg(unix)]
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) has no memory-safety preconditions. The child leads
        // its own process group and is not yet reaped, so -pid names only its
        // processes.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
    #[cfg(not(unix))]
    let _ = child;
}

/// Kills the child and its group, then reaps it.
pub(crate) fn kill_and_reap(child: &mut Child) -> Option<ExitStatus> {
    kill_group(child);
    let _ = child.kill();
    child.wait().ok()
}

/// An exit status for messages.
pub(crate) fn describe_status(status: &Option<ExitStatus>) -> String {
    match status {
        Some(s) => s.to_string(),
        None => "exit status unknown".to_string(),
    }
}
