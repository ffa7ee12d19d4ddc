//! Unpacking with the decompression on a thread of its own, feeding the unpacker
//! through a bounded channel of 64 KiB chunks.

use std::io::{self, BufReader, Read};
use std::path::Path;

use super::decompress::{COPY_BUF, Decompressor};
use super::layer::{Unpacked, unpack_layer, unpack_tar};
use crate::error::Result;

/// Unpacks like [`unpack_layer`], with the decompression on a thread of its own that
/// feeds the unpacker: inflating and writing the files overlap on two cores instead of
/// taking turns on one. Once the compressed stream has ended, or the unpacker has
/// stopped, that thread reads `reader` to its end and runs `finish` with it and what
/// that last read gave, while the unpacker may still be writing.
pub fn unpack_layer_overlapped<R, T, F>(reader: R, dest: &Path, finish: F) -> (Result<Unpacked>, T)
where
    R: Read + Send,
    T: Send,
    F: FnOnce(R, io::Result<u64>) -> T + Send,
{
    // The reader and `finish` reach the thread through a channel, so that they stay
    // here if no thread can be started (then all of it runs on this one).
    let (work_tx, work_rx) = std::sync::mpsc::sync_channel(1);
    let (tx, rx) = std::sync::mpsc::sync_channel::<Chunk>(CHUNKS_IN_FLIGHT);
    let (spent_tx, spent_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::scope(|s| {
        let inflater = std::thread::Builder::new()
            .name("crust-inflate".into())
            .spawn_scoped(s, move || {
                let (reader, finish) = work_rx.recv().ok()?;
                let mut buffered = BufReader::with_capacity(COPY_BUF, reader);
                match Decompressor::new(&mut buffered) {
                    Ok(mut d) => loop {
                        let mut buf = spent_rx.try_recv().unwrap_or_default();
                        buf.resize(CHUNK, 0);
                        let chunk = match d.read(&mut buf) {
                            Ok(0) => Chunk::End,
                            Ok(n) => {
                                buf.truncate(n);
                                Chunk::Data(buf)
                            }
                            Err(e) => Chunk::Failed(e),
                        };
                        let last = !matches!(chunk, Chunk::Data(_));
                        // A send fails when the unpacker has stopped: it has its error.
                        if tx.send(chunk).is_err() || last {
                            break;
                        }
                    },
                    Err(e) => {
                        let _ = tx.send(Chunk::Failed(e));
                    }
                }
                drop(tx);
                let drained = io::copy(&mut buffered, &mut io::sink());
                let finish: F = finish;
                Some(finish(buffered.into_inner(), drained))
            });
        let inflater = match inflater {
            Ok(h) => h,
            Err(e) => {
                tracing::debug!("no decompression thread ({e}): unpacking on one");
                let mut reader = reader;
                let unpacked = unpack_layer(&mut reader, dest);
                let drained = io::copy(&mut reader, &mut io::sink());
                return (unpacked, finish(reader, drained));
            }
        };
        // The thread is waiting for exactly this.
        let _ = work_tx.send((reader, finish));
        let unpacked = unpack_tar(
            ChunkReader {
                rx,
                spent: spent_tx,
                cur: Vec::new(),
                pos: 0,
                ended: false,
            },
            dest,
        );
        match inflater.join() {
            Ok(Some(t)) => (unpacked, t),
            Ok(None) => unreachable!("the decompression thread always gets its work"),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Decompressed bytes handed from the decompression thread to the unpacker.
pub(super) const CHUNK: usize = 64 * 1024;
/// Chunks between the two threads: enough to keep both busy, little memory.
const CHUNKS_IN_FLIGHT: usize = 8;

enum Chunk {
    Data(Vec<u8>),
    End,
    Failed(io::Error),
}

/// The unpacker's end of the channel from the decompression thread. Spent buffers go
/// back to be filled again.
struct ChunkReader {
    rx: std::sync::mpsc::Receiver<Chunk>,
    spent: std::sync::mpsc::Sender<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
    ended: bool,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Chunk::Data(next)) => {
                    let spent = std::mem::replace(&mut self.cur, next);
                    self.pos = 0;
                    if spent.capacity() > 0 {
                        let _ = self.spent.send(spent);
                    }
                }
                Ok(Chunk::End) => self.ended = true,
                Ok(Chunk::Failed(e)) => return Err(e),
                // Gone without saying it is done: never taken for the end of the layer.
                Err(_) => return Err(io::Error::other("decompression stopped")),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
