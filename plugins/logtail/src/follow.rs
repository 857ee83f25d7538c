//! Following one path: reading new lines, noticing rotation and truncation.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use herd_plugin::PluginError;

use crate::state::Position;

/// Where to start in a file that has no saved position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StartAt {
    /// Send the whole file.
    Beginning,
    /// Skip what is already there; send only lines written from now on.
    End,
}

/// How the first open of a file picks its offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// Resume at a saved position if it is still the same file.
    Resume(Position),
    /// No saved position.
    Fresh(StartAt),
}

/// One line read from a file, without its line ending.
#[derive(Debug)]
pub(crate) struct Line<'a> {
    /// Byte offset of the line's first byte.
    pub(crate) offset: u64,
    /// The line's bytes.
    pub(crate) bytes: &'a [u8],
    /// Where reading goes on after this line: the position to save once
    /// the line was sent.
    pub(crate) next: Position,
    /// The line has no line ending: it was cut at the line length limit, or
    /// it is the unfinished last line of a rotated file.
    pub(crate) partial: bool,
}

#[derive(Debug)]
struct OpenFile {
    file: File,
    dev: u64,
    inode: u64,
    offset: u64,
}

/// Follows one path across rotation (rename + new file) and truncation.
#[derive(Debug)]
pub(crate) struct Follower {
    path: PathBuf,
    open: Option<OpenFile>,
    start: Start,
    /// The last problem logged, so a missing file is reported once, not on
    /// every poll.
    problem: Option<String>,
}

impl Follower {
    pub(crate) fn new(path: PathBuf, start: Start) -> Self {
        Self {
            path,
            open: None,
            start,
            problem: None,
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Where the next unsent line starts, once the file has been opened.
    pub(crate) fn position(&self) -> Option<Position> {
        self.open.as_ref().map(|open| Position {
            dev: open.dev,
            inode: open.inode,
            offset: open.offset,
        })
    }

    /// Sends up to `budget` lines through `sink`, advancing the offset past
    /// a line only after `sink` accepted it. Returns how many were sent; fewer
    /// than `budget` means the file has nothing more for now.
    pub(crate) fn poll(
        &mut self,
        budget: usize,
        max_line_bytes: usize,
        sink: &mut dyn FnMut(Line<'_>) -> Result<(), PluginError>,
    ) -> Result<usize, PluginError> {
        let mut sent = 0;
        loop {
            if self.open.is_none() && !self.open_file() {
                return Ok(sent);
            }
            let Some(open) = self.open.as_mut() else {
                return Ok(sent);
            };
            let Ok(length) = open
                .file
                .metadata()
                .map(|metadata| metadata.len())
                .map_err(|error| report(&mut self.problem, &self.path, "cannot stat", &error))
            else {
                return Ok(sent);
            };
            if length < open.offset {
                eprintln!(
                    "logtail: {} was truncated to {length} bytes (was read up to {}); reading from 0",
                    self.path.display(),
                    open.offset
                );
                open.offset = 0;
            }
            sent += read_lines(open, budget - sent, max_line_bytes, false, sink)?;
            if sent == budget {
                return Ok(sent);
            }
            match std::fs::metadata(&self.path) {
                // Renamed away and not recreated yet: keep reading the old file.
                Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(sent),
                Err(error) => {
                    report(&mut self.problem, &self.path, "cannot stat", &error);
                    return Ok(sent);
                }
                Ok(metadata) if (metadata.dev(), metadata.ino()) != (open.dev, open.inode) => {
                    // Rotated: finish the old file, including an unfinished
                    // last line (nobody will complete it), then start over
                    // with the new file from its first byte.
                    sent += read_lines(open, budget - sent, max_line_bytes, true, sink)?;
                    if sent == budget {
                        return Ok(sent);
                    }
                    eprintln!(
                        "logtail: {} was rotated; following the new file from 0",
                        self.path.display()
                    );
                    self.open = None;
                    self.start = Start::Fresh(StartAt::Beginning);
                }
                Ok(_) => return Ok(sent),
            }
        }
    }

    /// Opens the path and picks the starting offset; false if it cannot be
    /// opened (yet).
    fn open_file(&mut self) -> bool {
        let opened = File::open(&self.path).and_then(|file| {
            let metadata = file.metadata()?;
            Ok((file, metadata))
        });
        let (file, metadata) = match opened {
            Ok(opened) => opened,
            Err(error) => {
                report(&mut self.problem, &self.path, "cannot open", &error);
                return false;
            }
        };
        let (dev, inode, length) = (metadata.dev(), metadata.ino(), metadata.len());
        let offset = match self.start {
            Start::Resume(saved) if (saved.dev, saved.inode) == (dev, inode) => {
                if saved.offset <= length {
                    saved.offset
                } else {
                    eprintln!(
                        "logtail: {} shrank to {length} bytes while logtail was stopped (saved offset {}); reading from 0",
                        self.path.display(),
                        saved.offset
                    );
                    0
                }
            }
            Start::Resume(_) => {
                eprintln!(
                    "logtail: {} is a different file than before the restart (rotated); reading from 0",
                    self.path.display()
                );
                0
            }
            Start::Fresh(StartAt::Beginning) => 0,
            Start::Fresh(StartAt::End) => length,
        };
        if self.problem.take().is_some() {
            eprintln!("logtail: {} is readable again", self.path.display());
        }
        self.open = Some(OpenFile {
            file,
            dev,
            inode,
            offset,
        });
        true
    }
}

/// Logs a problem with `path` unless it is the one logged last.
fn report(last: &mut Option<String>, path: &Path, what: &str, error: &io::Error) {
    let problem = format!("{what}: {error}");
    if last.as_deref() != Some(problem.as_str()) {
        eprintln!("logtail: {}: {problem}", path.display());
        *last = Some(problem);
    }
}

/// Reads up to `budget` lines from the open file's offset. An unfinished last
/// line is left for later unless `to_end` is set (the file will not grow).
fn read_lines(
    open: &mut OpenFile,
    budget: usize,
    max_line_bytes: usize,
    to_end: bool,
    sink: &mut dyn FnMut(Line<'_>) -> Result<(), PluginError>,
) -> Result<usize, PluginError> {
    let mut reader = BufReader::new(&open.file);
    if let Err(error) = reader.seek(SeekFrom::Start(open.offset)) {
        eprintln!("logtail: cannot seek to {}: {error}", open.offset);
        return Ok(0);
    }
    let mut buffer = Vec::new();
    let mut sent = 0;
    while sent < budget {
        buffer.clear();
        let read =
            match Read::take(&mut reader, max_line_bytes as u64).read_until(b'\n', &mut buffer) {
                Ok(0) => break,
                Ok(read) => read,
                Err(error) => {
                    eprintln!("logtail: read error at offset {}: {error}", open.offset);
                    break;
                }
            };
        let complete = buffer.last() == Some(&b'\n');
        if !complete && buffer.len() < max_line_bytes && !to_end {
            break;
        }
        sink(Line {
            offset: open.offset,
            bytes: trim_line_ending(&buffer),
            next: Position {
                dev: open.dev,
                inode: open.inode,
                offset: open.offset + read as u64,
            },
            partial: !complete,
        })?;
        open.offset += read as u64;
        sent += 1;
    }
    Ok(sent)
}

fn trim_line_ending(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_endings_are_trimmed_once() {
        assert_eq!(trim_line_ending(b"a\r\n"), b"a");
        assert_eq!(trim_line_ending(b"a\n"), b"a");
        assert_eq!(trim_line_ending(b"a\n\n"), b"a\n");
        assert_eq!(trim_line_ending(b"a"), b"a");
    }

    #[test]
    fn long_lines_are_split_and_unfinished_lines_wait() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("a.log");
        std::fs::write(&path, b"0123456789\nshort\nunfinished")?;
        let mut follower = Follower::new(path, Start::Fresh(StartAt::Beginning));
        let mut lines = Vec::new();
        let sent = follower.poll(100, 4, &mut |line| {
            lines.push((line.offset, line.bytes.to_vec(), line.partial));
            Ok(())
        })?;
        let expected: Vec<(u64, Vec<u8>, bool)> = vec![
            (0, b"0123".to_vec(), true),
            (4, b"4567".to_vec(), true),
            (8, b"89".to_vec(), false),
            (11, b"shor".to_vec(), true),
            (15, b"t".to_vec(), false),
            (17, b"unfi".to_vec(), true),
            (21, b"nish".to_vec(), true),
        ];
        assert_eq!(lines, expected);
        assert_eq!(sent, 7);
        // "ed" is shorter than the limit and has no newline yet: it waits.
        assert_eq!(follower.position().map(|p| p.offset), Some(25));
        Ok(())
    }
}
