//! Reading a JSONL file from an offset up to its last complete line, in bounded memory.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use crate::{Cursor, FileRead, LineReader, UsageEntry, file_identity};

const CHUNK: usize = 1 << 20;

/// Whether the cursor still applies to the file: same identity and not shorter than the offset. Otherwise the
/// file was rotated (replaced) or truncated and is read from the start.
pub(crate) fn resume_offset(cursor: &Cursor, meta: &std::fs::Metadata) -> (u64, bool) {
    let identity = file_identity(meta);
    let same = match (cursor.identity, identity) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    };
    if same && meta.len() >= cursor.offset {
        (cursor.offset, false)
    } else {
        (0, cursor.offset > 0 || cursor.identity.is_some())
    }
}

pub(crate) fn read(
    path: &Path,
    cursor: &Cursor,
    reader: &mut dyn LineReader,
    sink: &mut dyn FnMut(UsageEntry),
) -> io::Result<FileRead> {
    let mut file = File::open(path)?;
    let meta = file.metadata()?;
    let (start, restarted) = resume_offset(cursor, &meta);
    file.seek(SeekFrom::Start(start))?;
    let mut out = FileRead {
        restarted,
        ..FileRead::default()
    };
    let mut buf: Vec<u8> = Vec::with_capacity(CHUNK);
    // Offset in the file of buf[0].
    let mut base = start;
    let mut eof = false;
    while !eof {
        let filled = buf.len();
        buf.resize(filled + CHUNK, 0);
        let n = read_some(&mut file, &mut buf[filled..])?;
        buf.truncate(filled + n);
        if n == 0 {
            eof = true;
        }
        let mut pos = 0;
        while let Some(nl) = memchr::memchr(b'\n', &buf[pos..]) {
            let line = &buf[pos..pos + nl];
            let line_offset = base + pos as u64;
            pos += nl + 1;
            let line = trim(line);
            if line.is_empty() {
                continue;
            }
            match reader.line(line, line_offset) {
                Ok(Some(entry)) => {
                    out.entries += 1;
                    sink(entry);
                }
                Ok(None) => {}
                Err(()) => out.malformed += 1,
            }
        }
        buf.drain(..pos);
        base += pos as u64;
    }
    out.pending_bytes = buf.len() as u64;
    out.bytes = base - start;
    out.cursor = Cursor {
        offset: base,
        identity: file_identity(&meta),
        state: reader.state(),
        stamp: None,
    };
    Ok(out)
}

fn read_some(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match file.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

fn trim(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    line.trim_ascii()
}
