//! The serial console on the host side: raw terminal mode, the input pump with its escape
//! sequence, and a watcher of output lines that keeps the guest's panic message.
//!
//! Escape sequence (interactive terminals): Ctrl-A then `x` ends the VM; Ctrl-A Ctrl-A sends one
//! Ctrl-A to the guest.

use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use devices::legacy::Serial;
use vmm_sys_util::eventfd::EventFd;

use crate::exit::{ExitReason, ExitSignal};
use crate::vm::wait_readable;
use crate::Error;

/// The escape key (Ctrl-A).
pub const ESCAPE: u8 = 0x01;
const MAX_LINE: usize = 512;

/// Remembers the first console line that says the guest kernel panicked.
#[derive(Clone, Default)]
pub struct PanicCatcher {
    line: Arc<Mutex<Option<String>>>,
}

impl PanicCatcher {
    /// The panic line, if one was seen.
    pub fn line(&self) -> Option<String> {
        self.line.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Wraps a console writer so that the lines passing through are watched.
    pub fn wrap(&self, inner: Box<dyn Write + Send>) -> WatchedWriter {
        WatchedWriter {
            inner,
            current: Vec::new(),
            catcher: self.clone(),
        }
    }
}

/// A console writer that forwards every byte and watches for "Kernel panic".
pub struct WatchedWriter {
    inner: Box<dyn Write + Send>,
    current: Vec<u8>,
    catcher: PanicCatcher,
}

impl WatchedWriter {
    fn end_line(&mut self) {
        let text = String::from_utf8_lossy(&self.current);
        if let Some(pos) = text.find("Kernel panic") {
            let mut slot = self.catcher.line.lock().unwrap_or_else(|p| p.into_inner());
            if slot.is_none() {
                *slot = Some(text[pos..].trim_end().to_string());
            }
        }
        self.current.clear();
    }
}

impl Write for WatchedWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        for &b in &buf[..n] {
            match b {
                b'\n' => self.end_line(),
                b'\r' => {}
                _ if self.current.len() < MAX_LINE => self.current.push(b),
                _ => {}
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Puts a terminal in raw mode and restores it when dropped.
pub struct RawTerminal {
    fd: RawFd,
    saved: libc::termios,
}

impl RawTerminal {
    /// Raw mode on `fd` if it is a terminal; `None` for pipes and files.
    pub fn enable(fd: RawFd) -> Result<Option<Self>, Error> {
        // SAFETY: isatty only inspects the descriptor.
        if unsafe { libc::isatty(fd) } != 1 {
            return Ok(None);
        }
        // SAFETY: zeroed termios is a valid value to be overwritten by tcgetattr.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: fd is a terminal and `saved` is a valid termios to fill.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return Err(Error::Console(io::Error::last_os_error()));
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw edits the struct we own.
        unsafe { libc::cfmakeraw(&mut raw) };
        // Keep output post-processing so the host terminal's own newlines stay sane.
        raw.c_oflag = saved.c_oflag;
        // SAFETY: fd is a terminal and `raw` a valid termios.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return Err(Error::Console(io::Error::last_os_error()));
        }
        Ok(Some(RawTerminal { fd, saved }))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: restores the attributes read from the same terminal.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}

/// Splits input at the escape sequence. Returns the bytes for the guest and whether the user
/// asked to quit. `pending_escape` carries a Ctrl-A seen at the end of the previous chunk.
pub fn filter_escape(input: &[u8], pending_escape: &mut bool) -> (Vec<u8>, bool) {
    let mut out = Vec::with_capacity(input.len());
    for &b in input {
        if *pending_escape {
            *pending_escape = false;
            match b {
                b'x' | b'X' => return (out, true),
                ESCAPE => out.push(ESCAPE),
                other => {
                    out.push(ESCAPE);
                    out.push(other);
                }
            }
        } else if b == ESCAPE {
            *pending_escape = true;
        } else {
            out.push(b);
        }
    }
    (out, false)
}

/// The thread that copies host input into the guest's serial port.
pub struct ConsoleInput {
    stop: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
}

impl ConsoleInput {
    /// Starts pumping `input` (a descriptor, usually stdin) into `serial`. With `escape`, Ctrl-A x
    /// ends the VM through `exit`.
    pub fn start(
        input: RawFd,
        serial: Arc<Mutex<Serial>>,
        exit: Arc<ExitSignal>,
        escape: bool,
    ) -> Result<Self, Error> {
        let stop = Arc::new(EventFd::new(libc::EFD_NONBLOCK).map_err(Error::Console)?);
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("console-in".into())
            .spawn(move || pump(input, &serial, &exit, &stop2, escape))
            .map_err(Error::Thread)?;
        Ok(ConsoleInput {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for ConsoleInput {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn pump(fd: RawFd, serial: &Mutex<Serial>, exit: &ExitSignal, stop: &EventFd, escape: bool) {
    let mut pending_escape = false;
    let mut buf = [0u8; 256];
    loop {
        let mut fds = [
            libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        if fds[1].revents != 0 {
            return;
        }
        // SAFETY: reading into a buffer we own, of its length.
        let got = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if got <= 0 {
            // End of input (a closed pipe): the guest keeps running without a keyboard.
            return;
        }
        let chunk = &buf[..got as usize];
        let (bytes, quit) = if escape {
            filter_escape(chunk, &mut pending_escape)
        } else {
            (chunk.to_vec(), false)
        };
        if !feed(serial, &bytes, stop) {
            return;
        }
        if quit {
            exit.set(ExitReason::Stopped);
            return;
        }
    }
}

/// Feeds all of `bytes`, waiting while the UART's receive FIFO is full. False if told to stop.
fn feed(serial: &Mutex<Serial>, mut bytes: &[u8], stop: &EventFd) -> bool {
    while !bytes.is_empty() {
        let taken = serial
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .enqueue_input(bytes);
        bytes = &bytes[taken..];
        if !bytes.is_empty() && wait_readable(stop, Some(5)) {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_x_quits_and_keeps_prior_bytes() {
        let mut p = false;
        let (out, quit) = filter_escape(b"ls\x01x", &mut p);
        assert_eq!(out, b"ls");
        assert!(quit);
    }

    #[test]
    fn double_escape_sends_one_and_split_chunks_work() {
        let mut p = false;
        let (out, quit) = filter_escape(b"a\x01", &mut p);
        assert_eq!((out.as_slice(), quit, p), (&b"a"[..], false, true));
        let (out, quit) = filter_escape(b"\x01b", &mut p);
        assert_eq!((out.as_slice(), quit), (&b"\x01b"[..], false));
        let (out, _) = filter_escape(b"\x01q", &mut p);
        assert_eq!(out, b"\x01q");
    }

    #[test]
    fn panic_line_is_caught_once() {
        let c = PanicCatcher::default();
        let mut w = c.wrap(Box::new(Vec::new()));
        w.write_all(b"[ 1.0] ok\r\n[ 2.0] Kernel panic - not syncing: sysrq triggered crash\r\n")
            .unwrap();
        w.write_all(b"Kernel panic - second\n").unwrap();
        assert_eq!(
            c.line().as_deref(),
            Some("Kernel panic - not syncing: sysrq triggered crash")
        );
    }
}
