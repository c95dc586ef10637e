//! Reads every record file of an agent under a path and prints entries, malformed lines, bytes and MB/s: the
//! readers' own throughput, without the store (`cargo run --release -p kimi-ledgers --example read -- claude-code DIR`).

use std::path::PathBuf;
use std::time::Instant;

use kimi_ledgers::{Agent, Cursor, read_file, record_files};

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(agent), Some(path)) = (args.next(), args.next()) else {
        eprintln!("usage: read AGENT PATH");
        std::process::exit(2);
    };
    let Some(agent) = Agent::from_name(&agent) else {
        eprintln!("unknown agent {agent}");
        std::process::exit(2);
    };
    let start = Instant::now();
    let (mut entries, mut malformed, mut bytes, mut tokens) = (0u64, 0u64, 0u64, 0u64);
    for file in record_files(agent, &[PathBuf::from(path)]) {
        match read_file(agent, &file, &Cursor::default(), &mut |e| {
            tokens += e.total_tokens()
        }) {
            Ok(r) => {
                entries += r.entries;
                malformed += r.malformed;
                bytes += r.bytes;
            }
            Err(e) => eprintln!("{}: {e}", file.display()),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{entries} entries, {malformed} malformed, {:.1} MB in {secs:.2} s: {:.1} MB/s ({tokens} tokens)",
        bytes as f64 / 1e6,
        bytes as f64 / 1e6 / secs
    );
}
