//! File modes: a journal holds secret names and error texts, so the files SQLite writes
//! for it (the database, its `-wal` and its `-shm`) are readable by their owner only.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use rekey_journal::SqliteJournal;

use crate::common::{block_on, fill, manual_clock, open_sqlite, scratch};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// The `-wal` and `-shm` files beside the journal at `path`.
fn sidecars(path: &Path) -> [std::path::PathBuf; 2] {
    ["-wal", "-shm"].map(|suffix| {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        name.into()
    })
}

#[test]
fn a_new_journal_and_its_wal_and_shm_are_owner_only() {
    let (_dir, path) = scratch();
    let j = open_sqlite(&path, &manual_clock());
    block_on(fill(&j, "s", 3));
    // While the journal is open its WAL and shared-memory files exist beside it.
    for file in std::iter::once(path.clone()).chain(sidecars(&path)) {
        assert_eq!(mode(&file), 0o600, "{} must be 0600", file.display());
    }
}

#[test]
fn an_existing_journal_keeps_its_mode() {
    let (_dir, path) = scratch();
    drop(open_sqlite(&path, &manual_clock()));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let j = SqliteJournal::open(&path).unwrap();
    block_on(fill(&j, "s", 1));
    assert_eq!(
        mode(&path),
        0o640,
        "an operator's choice of mode is left alone"
    );
}
