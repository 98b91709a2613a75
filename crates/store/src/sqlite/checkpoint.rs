//! WAL checkpoints off the write path.
//!
//! By default SQLite checkpoints inside the commit that makes the WAL pass 1000 pages: the writer
//! then copies those pages into the database file and fsyncs it before it can start the next
//! batch, which was about half of a large batch's commit time. Here the writer only nudges a
//! thread of its own that runs passive checkpoints (which never block the writer) on a separate
//! connection. Should that thread fall far behind, the writer checkpoints itself, which bounds
//! the WAL: a full checkpoint lets the next write transaction start the WAL over.

use std::os::raw::c_int;
use std::path::Path;
use std::sync::mpsc;

use rusqlite::Connection;
use rusqlite::hooks::Wal;

use super::db_error;
use crate::StoreResult;

/// WAL pages after which a background checkpoint is asked for (SQLite's own default threshold).
const NUDGE_PAGES: c_int = 1000;

/// WAL pages after which the writer checkpoints itself (128 MiB of 4 KiB pages).
const WRITER_PAGES: c_int = 32_768;

/// Moves checkpoints of `writer`'s database to a background thread, which ends when `writer`
/// is dropped.
pub(crate) fn offload(writer: &mut Connection, dir: &Path) -> StoreResult<()> {
    let checkpointer = super::schema::open_checkpointer(dir)?;
    // A one-slot channel: a nudge already waiting covers any number of later commits.
    let (nudge, nudges) = mpsc::sync_channel::<()>(1);
    std::thread::Builder::new()
        .name("coffer-checkpoint".into())
        .spawn(move || run(checkpointer, nudges))
        .map_err(|e| crate::StoreError::unavailable(format!("cannot start the checkpointer: {e}")))?;
    let hook = move |wal: &mut Wal, pages: c_int| {
        if pages >= WRITER_PAGES {
            // Busy only if the background checkpoint is running right now; it then does the work.
            let _ = wal.checkpoint();
        } else if pages >= NUDGE_PAGES {
            let _ = nudge.try_send(());
        }
        Ok(())
    };
    // Replaces the automatic checkpoint, which is SQLite's own WAL hook.
    writer.wal_hook(Some(hook)).map_err(db_error)
}

fn run(conn: Connection, nudges: mpsc::Receiver<()>) {
    while nudges.recv().is_ok() {
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "background checkpoint failed");
        }
    }
}
