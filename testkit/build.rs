//! Fingerprints the migrations' sources (file names and contents), so that a changed migration set gets a
//! template database of its own instead of cloning one migrated by another version.

use std::{fs, path::Path};

fn main() {
    let sources = Path::new(env!("CARGO_MANIFEST_DIR")).join("../migration/src");
    println!("cargo::rerun-if-changed={}", sources.display());
    let mut files: Vec<_> = fs::read_dir(&sources)
        .expect("migration/src is readable")
        .map(|entry| entry.expect("a directory entry of migration/src").path())
        .collect();
    files.sort();
    // FNV-1a, 64 bits: the same on every toolchain (std's hasher may change between Rust releases).
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for file in files {
        let name = file.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
        let content = fs::read(&file).expect("a migration source is readable");
        for byte in name.bytes().chain(content) {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    println!("cargo::rustc-env=MIGRATIONS_FINGERPRINT={hash:016x}");
}
