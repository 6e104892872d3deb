//! A recording image file and crash images built from its log: everything up to the last
//! completed sync, plus any subset of the writes after it (what a power cut may leave).

use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::file::ImageFile;

/// One recorded operation on the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Data written at an offset.
    Write(u64, Vec<u8>),
    /// A completed sync: every earlier event is durable.
    Sync,
    /// The file length was set.
    SetLen(u64),
}

/// The shared log of a [`RecordingFile`].
#[derive(Debug, Clone, Default)]
pub struct Log(Arc<Mutex<Vec<Event>>>);

impl Log {
    fn lock(&self) -> MutexGuard<'_, Vec<Event>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Events so far.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy of the events.
    pub fn events(&self) -> Vec<Event> {
        self.lock().clone()
    }
}

/// An [`ImageFile`] that forwards to another and records every write, length change and sync.
pub struct RecordingFile {
    inner: Box<dyn ImageFile>,
    log: Log,
}

impl RecordingFile {
    /// Wraps `inner`; the returned [`Log`] sees every later event.
    pub fn new(inner: Box<dyn ImageFile>) -> (Self, Log) {
        let log = Log::default();
        (
            RecordingFile {
                inner,
                log: log.clone(),
            },
            log,
        )
    }
}

impl ImageFile for RecordingFile {
    fn path(&self) -> &Path {
        self.inner.path()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.inner.read_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.inner.write_all_at(buf, offset)?;
        self.log.lock().push(Event::Write(offset, buf.to_vec()));
        Ok(())
    }
    fn sync(&self) -> io::Result<()> {
        self.inner.sync()?;
        self.log.lock().push(Event::Sync);
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)?;
        self.log.lock().push(Event::SetLen(len));
        Ok(())
    }
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.punch_hole(offset, len)?;
        let zeros = vec![0u8; usize::try_from(len).map_err(io::Error::other)?];
        self.log.lock().push(Event::Write(offset, zeros));
        Ok(())
    }
    fn allocated_bytes(&self) -> io::Result<u64> {
        self.inner.allocated_bytes()
    }
}

fn apply(img: &mut Vec<u8>, e: &Event) {
    match e {
        Event::Write(off, data) => {
            let end = *off as usize + data.len();
            if img.len() < end {
                img.resize(end, 0);
            }
            img[*off as usize..end].copy_from_slice(data);
        }
        Event::SetLen(len) => img.resize(*len as usize, 0),
        Event::Sync => {}
    }
}

/// The image a crash just before event `at` may leave: `base` with every event before the
/// last sync preceding `at`, then the later writes for which `keep(i)` says yes.
pub fn crash_image(
    base: &[u8],
    events: &[Event],
    at: usize,
    keep: &mut dyn FnMut(usize) -> bool,
) -> Vec<u8> {
    let at = at.min(events.len());
    let durable = events[..at]
        .iter()
        .rposition(|e| *e == Event::Sync)
        .map_or(0, |i| i + 1);
    let mut img = base.to_vec();
    for e in &events[..durable] {
        apply(&mut img, e);
    }
    for (i, e) in events.iter().enumerate().take(at).skip(durable) {
        // Length changes are metadata of the host file system: kept in order, like a
        // journaling file system would.
        if matches!(e, Event::SetLen(_)) || keep(i) {
            apply(&mut img, e);
        }
    }
    img
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::file::MemFile;

    #[test]
    fn crash_images_keep_synced_writes_only_for_sure() {
        let (f, log) = RecordingFile::new(Box::new(MemFile::new(vec![0; 4], "t")));
        f.write_all_at(&[1], 0).unwrap();
        f.sync().unwrap();
        f.write_all_at(&[2], 1).unwrap();
        f.write_all_at(&[3], 2).unwrap();
        let ev = log.events();
        assert_eq!(ev.len(), 4);
        assert_eq!(
            crash_image(&[0; 4], &ev, 4, &mut |_| false),
            vec![1, 0, 0, 0]
        );
        assert_eq!(
            crash_image(&[0; 4], &ev, 4, &mut |i| i == 3),
            vec![1, 0, 3, 0]
        );
        assert_eq!(crash_image(&[0; 4], &ev, 1, &mut |_| false), vec![0; 4]);
        assert_eq!(
            crash_image(&[0; 4], &ev, 2, &mut |_| true),
            vec![1, 0, 0, 0]
        );
    }
}
