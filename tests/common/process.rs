//! Child processes with captured output, bounded waits and a kill-on-drop guard.
//!
//! Every external command of the harness runs through [`Proc`]: its stdout and stderr are
//! collected by reader threads (so a chatty child never blocks on a full pipe), any wait
//! has a deadline, and a `Proc` that is dropped while its child still runs (a failed
//! assertion, an early `?`) kills and reaps the child.

use std::io::Read;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How often a bounded wait re-checks a child that has not exited. A poll interval, not a
/// synchronisation delay: the wait ends as soon as the child is seen to have exited.
const EXIT_POLL: Duration = Duration::from_millis(20);

/// How much of a child's output goes into error messages.
const TAIL_CHARS: usize = 4000;

/// Output collected from one pipe of a child.
#[derive(Debug, Default)]
struct Captured {
    text: Mutex<CapturedText>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct CapturedText {
    text: String,
    closed: bool,
}

impl Captured {
    fn collect(self: Arc<Self>, mut pipe: impl Read + Send + 'static, name: String) {
        let this = self.clone();
        let spawned = thread::Builder::new().name(name).spawn(move || {
            let this = this;
            let mut buf = [0u8; 8192];
            loop {
                let n = pipe.read(&mut buf).unwrap_or(0);
                let mut state = this.text.lock().unwrap_or_else(PoisonError::into_inner);
                if n == 0 {
                    state.closed = true;
                } else {
                    state.text.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
                drop(state);
                this.changed.notify_all();
                if n == 0 {
                    break;
                }
            }
        });
        if spawned.is_err() {
            // Without a reader the output is lost, but the child still runs and is still
            // waited for; mark the pipe closed so output waits end.
            let mut state = self.text.lock().unwrap_or_else(PoisonError::into_inner);
            state.closed = true;
        }
    }

    fn snapshot(&self) -> String {
        self.text
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .text
            .clone()
    }

    fn is_closed(&self) -> bool {
        self.text
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .closed
    }

    fn len(&self) -> usize {
        self.text
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .text
            .len()
    }

    /// Waits until `found` returns `Some` for the collected text, the pipe closes, or the
    /// deadline passes.
    fn wait_for<T>(
        &self,
        deadline: Instant,
        mut found: impl FnMut(&str) -> Option<T>,
    ) -> Option<T> {
        let mut state = self.text.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(t) = found(&state.text) {
                return Some(t);
            }
            let now = Instant::now();
            if state.closed || now >= deadline {
                return None;
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// The last `TAIL_CHARS` characters of `text`, on a character boundary.
pub fn tail(text: &str) -> &str {
    if text.len() <= TAIL_CHARS {
        return text;
    }
    let mut start = text.len() - TAIL_CHARS;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// A running child process. Killed and reaped on drop if still running.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
    stdout: Arc<Captured>,
    stderr: Arc<Captured>,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Starts `command` with stdin closed and stdout/stderr captured. `name` labels errors.
    pub fn spawn(name: impl Into<String>, mut command: Command) -> Result<Proc> {
        let name = name.into();
        // If the harness itself dies (a SIGKILL, a Ctrl-C of `cargo test`), no Drop runs:
        // have the kernel kill the child when the thread that spawned it ends.
        // SAFETY: the closure runs in the forked child before exec and only calls
        // prctl(2), which is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {name}: {command:?}"))?;
        let stdout = Arc::new(Captured::default());
        let stderr = Arc::new(Captured::default());
        if let Some(pipe) = child.stdout.take() {
            stdout.clone().collect(pipe, format!("{name}-stdout"));
        }
        if let Some(pipe) = child.stderr.take() {
            stderr.clone().collect(pipe, format!("{name}-stderr"));
        }
        Ok(Proc {
            name,
            child,
            stdout,
            stderr,
            status: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stdout(&self) -> String {
        self.stdout.snapshot()
    }

    pub fn stderr(&self) -> String {
        self.stderr.snapshot()
    }

    /// Length of the stdout collected so far: a mark for [`Proc::wait_stdout_after`].
    pub fn stdout_mark(&self) -> usize {
        self.stdout.len()
    }

    /// Waits until `found` matches the stderr collected so far. Fails if the deadline
    /// passes or the child closes stderr (exits) first.
    pub fn wait_stderr<T>(
        &mut self,
        timeout: Duration,
        what: &str,
        found: impl FnMut(&str) -> Option<T>,
    ) -> Result<T> {
        match self.stderr.wait_for(Instant::now() + timeout, found) {
            Some(t) => Ok(t),
            None => {
                let state = self.describe_state();
                bail!(
                    "{} did not print {what} within {timeout:?} ({state}); stderr:\n{}",
                    self.name,
                    tail(&self.stderr())
                )
            }
        }
    }

    /// The word after `marker` in stderr (an address a process logs when it has bound
    /// it), up to a space or `/`; waits up to `timeout` for it.
    pub fn logged_word(&mut self, timeout: Duration, marker: &str) -> Result<String> {
        self.wait_stderr(timeout, marker, |text| {
            let rest = &text[text.find(marker)? + marker.len()..];
            let word: String = rest
                .chars()
                .take_while(|c| !c.is_whitespace() && *c != '/')
                .collect();
            // A word cut at the end of what was read so far is not whole yet.
            (rest.len() > word.len()).then_some(word)
        })
    }

    /// Length of the stderr collected so far: a mark for [`Proc::wait_stderr_after`].
    pub fn stderr_mark(&self) -> usize {
        self.stderr.len()
    }

    /// Waits until `found` matches the stderr collected after byte `mark`. Fails if the
    /// deadline passes or the child closes stderr (exits) first.
    pub fn wait_stderr_after<T>(
        &mut self,
        mark: usize,
        timeout: Duration,
        what: &str,
        mut found: impl FnMut(&str) -> Option<T>,
    ) -> Result<T> {
        self.wait_stderr(timeout, what, |text| found(text.get(mark..).unwrap_or("")))
    }

    /// Waits until `found` matches the stdout collected after byte `mark`.
    pub fn wait_stdout_after(
        &mut self,
        mark: usize,
        timeout: Duration,
        what: &str,
        mut found: impl FnMut(&str) -> bool,
    ) -> Result<()> {
        let hit = self.stdout.wait_for(Instant::now() + timeout, |text| {
            found(text.get(mark..).unwrap_or("")).then_some(())
        });
        match hit {
            Some(()) => Ok(()),
            None => {
                let state = self.describe_state();
                bail!(
                    "{} did not print {what} within {timeout:?} ({state}); stderr:\n{}",
                    self.name,
                    tail(&self.stderr())
                )
            }
        }
    }

    fn describe_state(&mut self) -> String {
        // A child that closed its output is exiting (a start-up error): its status comes
        // a moment after its pipes close.
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.stderr.is_closed() && self.try_status().is_none() && Instant::now() < deadline {
            thread::sleep(EXIT_POLL);
        }
        match self.try_status() {
            Some(status) => format!("exited: {status}"),
            None => "still running".to_owned(),
        }
    }

    /// The exit status if the child has exited (reaps it).
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Sends `signal` (e.g. `libc::SIGINT`) to the child, unless it has already exited.
    pub fn signal(&mut self, signal: libc::c_int) -> Result<()> {
        if self.try_status().is_some() {
            return Ok(());
        }
        let pid = libc::pid_t::try_from(self.child.id()).context("pid out of range")?;
        // SAFETY: kill(2) takes plain integers; the pid is our own unreaped child (its
        // status was not collected above), so it cannot have been recycled.
        let rc = unsafe { libc::kill(pid, signal) };
        if rc != 0 {
            bail!(
                "cannot signal {}: {}",
                self.name,
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }

    /// Waits for the child to exit, up to `timeout`; on timeout kills it and fails with
    /// its stderr.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<ExitStatus> {
        self.wait_with_ticks(timeout, Duration::MAX, |_| {})
    }

    /// Like [`Proc::wait_timeout`], calling `tick(elapsed)` every `every` while waiting
    /// (progress reports).
    pub fn wait_with_ticks(
        &mut self,
        timeout: Duration,
        every: Duration,
        mut tick: impl FnMut(Duration),
    ) -> Result<ExitStatus> {
        let start = Instant::now();
        let mut next_tick = start.checked_add(every);
        loop {
            if let Some(status) = self.try_status() {
                // Let the readers drain what the child wrote last.
                let deadline = Instant::now() + Duration::from_secs(2);
                self.stdout.wait_for(deadline, |_| None::<()>);
                self.stderr.wait_for(deadline, |_| None::<()>);
                return Ok(status);
            }
            let now = Instant::now();
            if now.duration_since(start) >= timeout {
                self.kill();
                bail!(
                    "{} did not exit within {timeout:?} and was killed; stderr:\n{}",
                    self.name,
                    tail(&self.stderr())
                );
            }
            if let Some(t) = next_tick.filter(|t| now >= *t) {
                tick(now.duration_since(start));
                next_tick = t.checked_add(every);
            }
            thread::sleep(EXIT_POLL);
        }
    }

    /// Sends `signal` and waits up to `timeout` for the exit.
    pub fn stop(&mut self, signal: libc::c_int, timeout: Duration) -> Result<ExitStatus> {
        self.signal(signal)?;
        self.wait_timeout(timeout)
    }

    /// Kills (SIGKILL) and reaps the child if it still runs.
    pub fn kill(&mut self) {
        if self.try_status().is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What a finished command left behind.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `command` to completion within `timeout`, failing (with its stderr) if it times
/// out or exits unsuccessfully.
pub fn run(name: &str, command: Command, timeout: Duration) -> Result<Finished> {
    let mut proc = Proc::spawn(name, command)?;
    let status = proc.wait_timeout(timeout)?;
    let finished = Finished {
        status,
        stdout: proc.stdout(),
        stderr: proc.stderr(),
    };
    if !status.success() {
        bail!(
            "{name} failed ({status}); stderr:\n{}",
            tail(&finished.stderr)
        );
    }
    Ok(finished)
}

/// Fails with a clear message if `tool` is not on the PATH.
pub fn require_tool(tool: &str) -> Result<()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path).any(|dir| is_executable(&dir.join(tool)));
    if !found {
        bail!(
            "`{tool}` is not installed (not found on PATH). The interop tests need FFmpeg \
             (ffmpeg, ffprobe) and GStreamer (gst-launch-1.0 with plugins base, good and \
             bad): run the repository's scripts/install-deps.sh"
        );
    }
    Ok(())
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
