//! Reading small context files ahead: a layer of many small files spends
//! most of its time opening, stat'ing and closing them, one after another,
//! on the thread that writes the tar stream. A helper thread reads the
//! small ones (at most [`MAX_FILE`] bytes) in entry order, with the same
//! checks as a direct read, and hands each over whole through a bounded
//! queue; the writer takes them in the same order. Larger files are read
//! by the writer itself.

use super::{stream_file, StreamError, Streamed};
use crate::fsx::ContextDir;
use crate::plan::{EntryKind, FileSource, LayerNode};
use std::sync::mpsc::{sync_channel, Receiver};

/// Files up to this size are read ahead.
pub(super) const MAX_FILE: u64 = 64 * 1024;
/// Files read ahead and not yet taken, at most (with [`MAX_FILE`]: 16 MiB).
const QUEUE: usize = 256;
/// Layers with fewer small files are not worth a thread.
const MIN_FILES: usize = 64;

/// A file read ahead: its bytes and what the read saw, or why it failed.
pub(super) type Prefetched = (Vec<u8>, Result<Streamed, StreamError>);

/// The small context files of `node`, in entry order: (rel, id, size).
fn small_files(node: &LayerNode) -> impl Iterator<Item = (&str, (u64, u64), u64)> {
    node.entries.iter().filter_map(|e| match &e.kind {
        EntryKind::File {
            source: FileSource::Context { rel, id, .. },
            size,
        } if *size <= MAX_FILE => Some((rel.as_str(), *id, *size)),
        _ => None,
    })
}

/// Starts the reader on `scope` when `node` has enough small files and
/// there is a core for it; the receiver yields one [`Prefetched`] per small
/// file, in entry order. Dropping it stops the reader.
pub(super) fn start<'s, 'e: 's>(
    scope: &'s std::thread::Scope<'s, 'e>,
    node: &'e LayerNode,
    context: &'e ContextDir,
    threads: usize,
) -> Option<Receiver<Prefetched>> {
    if threads < 2 || small_files(node).nth(MIN_FILES - 1).is_none() {
        return None;
    }
    let (tx, rx) = sync_channel::<Prefetched>(QUEUE);
    scope.spawn(move || {
        let mut buf = vec![0u8; MAX_FILE as usize];
        for (rel, id, size) in small_files(node) {
            let mut data = Vec::with_capacity(size as usize);
            let streamed = stream_file(context, rel, id, size, &mut buf, &mut |b| {
                data.extend_from_slice(b);
                Ok(())
            });
            // The writer stopped (an error, or the end): so does the reader.
            if tx.send((data, streamed)).is_err() {
                return;
            }
        }
    });
    Some(rx)
}
