//! Process and thread knobs that drivers, harnesses and the load generator set: the
//! descriptor limit (one UDP socket per simulated participant), timer slack (paced
//! senders), child lifetime (no forwarder left behind), network namespaces. Every
//! `unsafe` block here is one plain system call.

use std::io;
use std::os::fd::AsRawFd;

/// Raises the soft RLIMIT_NOFILE to `want` (capped at the hard limit; root may raise the
/// hard limit too). Returns the soft limit in force.
pub fn raise_nofile(want: u64) -> io::Result<u64> {
    // SAFETY: rlimit is a plain C struct; the kernel fills it.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: `lim` is valid for writes.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur >= want {
        return Ok(lim.rlim_cur);
    }
    let mut new = lim;
    new.rlim_cur = want;
    new.rlim_max = lim.rlim_max.max(want);
    // SAFETY: `new` is a valid rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } != 0 {
        new.rlim_cur = lim.rlim_max.min(want);
        new.rlim_max = lim.rlim_max;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(new.rlim_cur)
}

/// Makes short sleeps of the calling thread precise (the default timer slack is 50 µs),
/// so a paced sender wakes when it asked to.
pub fn precise_sleeps() {
    // SAFETY: PR_SET_TIMERSLACK takes an integer and affects only the calling thread.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong) };
}

/// Arranges for `command`'s child to get SIGTERM if this thread dies (even by SIGKILL),
/// so a forwarder is never left behind.
pub fn terminate_child_with_parent(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only calls prctl, which
    // is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
}

/// Sends `signal` to process `pid`.
pub fn kill(pid: u32, signal: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: plain system call on a child process this harness started.
        unsafe { libc::kill(pid, signal) };
    }
}

/// Move the calling thread into the network namespace `file` refers to (/var/run/netns/X).
pub fn enter_network_namespace(file: &std::fs::File) -> io::Result<()> {
    // SAFETY: the descriptor is open for the duration of the call (borrowed from `file`).
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A CPU set of `cpus` (those at or beyond CPU_SETSIZE are left out).
pub fn cpu_set(cpus: &[usize]) -> libc::cpu_set_t {
    // SAFETY: all-zero is an empty cpu_set_t.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus.iter().filter(|&&c| c < libc::CPU_SETSIZE as usize) {
        // SAFETY: `cpu` < CPU_SETSIZE, the number of CPUs a cpu_set_t holds.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    set
}

/// Restricts the calling process (or, in a `pre_exec` hook, the child about to exec) to
/// `set`: a forwarder then pins its shards within it. One system call, async-signal-safe.
pub fn set_process_affinity(set: &libc::cpu_set_t) -> io::Result<()> {
    // SAFETY: `set` is a valid cpu_set_t for the duration of the call.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(set), set) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
