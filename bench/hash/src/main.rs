//! One pass over files the way ttv's stat cache reads an input it cannot vouch for
//! (src/filehash.rs): the whole file read, then `blake3::hash`. With `--decode`, also what
//! `hash_image` (src/build.rs) does to those bytes: `image::load_from_memory`.
//! bench/run.sh times it as the baseline of "every reference touched".

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut decode = false;
    let mut files = Vec::new();
    for arg in std::env::args().skip(1) {
        if arg == "--decode" {
            decode = true;
        } else {
            files.push(arg);
        }
    }
    if files.is_empty() {
        eprintln!("usage: ttv-bench-hash [--decode] FILE...");
        return ExitCode::from(2);
    }
    for f in &files {
        let bytes = match std::fs::read(f) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("{f}: {e}");
                return ExitCode::FAILURE;
            }
        };
        if decode && let Err(e) = image::load_from_memory(&bytes) {
            eprintln!("{f}: {e}");
            return ExitCode::FAILURE;
        }
        println!("{}  {f}", blake3::hash(&bytes).to_hex());
    }
    ExitCode::SUCCESS
}
