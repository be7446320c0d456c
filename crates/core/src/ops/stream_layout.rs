//! The layout of a file that can only be read once, front to back (a `backup --from-tar`
//! entry): its head is read into memory as far as the format's parser asks, and what was read
//! is handed back to be stored before the rest of the stream.
//!
//! Safetensors and GGUF headers come first, so their tensors are found from a prefix of at
//! most [`LIMIT`] bytes. A PyTorch zip has its central directory at its end: an entry of at
//! most [`LIMIT`] bytes is read whole for it, a larger one is stored without tensor regions
//! (chunked by content, like an unknown file). Memory stays bounded by [`LIMIT`] whatever the
//! entry's size.

use std::cell::RefCell;
use std::io::{self, Read};

use crate::format::{self, Layout, Source};

/// The most of one stream held in memory to find its layout: the largest header a parser
/// reads, with the 8-byte length before a safetensors header.
pub(crate) const LIMIT: u64 = format::MAX_HEADER + 8;

/// Bytes read ahead at least when a parser asks for more than is held (fewer calls for the
/// many small reads of a header walk).
const READ_AHEAD: u64 = 256 * 1024;

/// A stream of a known length as a [`Source`]: reads pull the stream into `head` as far as
/// they need (up to [`LIMIT`]).
struct Head<'r, R: Read> {
    len: u64,
    state: RefCell<HeadState<'r, R>>,
}

struct HeadState<'r, R> {
    reader: &'r mut R,
    head: Vec<u8>,
    /// A read past [`LIMIT`] was refused: the format needs more than is held.
    beyond_limit: bool,
    /// The stream failed or ended before `len`.
    failed: Option<io::Error>,
}

impl<R: Read> HeadState<'_, R> {
    /// Reads the stream until `head` holds `end` bytes (more, up to `limit`, to read ahead).
    fn fill(&mut self, end: u64, len: u64) -> io::Result<()> {
        let want = end
            .max(self.head.len() as u64 + READ_AHEAD)
            .min(len)
            .min(LIMIT) as usize;
        let mut at = self.head.len();
        self.head.resize(want, 0);
        while at < want {
            match self.reader.read(&mut self.head[at..]) {
                Ok(0) => {
                    self.head.truncate(at);
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("the content ended after {at} of its {len} bytes"),
                    ));
                }
                Ok(n) => at += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.head.truncate(at);
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}

impl<R: Read> Source for Head<'_, R> {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.len)
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        let mut s = self.state.borrow_mut();
        if end > s.head.len() as u64 {
            if s.failed.is_some() {
                return Err(io::Error::other("the stream failed"));
            }
            if end > LIMIT {
                s.beyond_limit = true;
                return Err(io::Error::other("past what is held in memory"));
            }
            if let Err(e) = s.fill(end, self.len) {
                let msg = e.to_string();
                s.failed = Some(e);
                return Err(io::Error::other(msg));
            }
        }
        buf.copy_from_slice(&s.head[offset as usize..end as usize]);
        Ok(())
    }
}

/// The layout of the `len`-byte stream `reader` and the bytes read from it to find it (to be
/// stored before the rest). `Err` when the stream fails or ends early. A format whose parse
/// needed more than [`LIMIT`] bytes is plain, without a warning.
pub(crate) fn layout_of_stream<R: Read>(reader: &mut R, len: u64) -> io::Result<(Layout, Vec<u8>)> {
    let src = Head {
        len,
        state: RefCell::new(HeadState {
            reader,
            head: Vec::new(),
            beyond_limit: false,
            failed: None,
        }),
    };
    let layout = format::layout(&src);
    let state = src.state.into_inner();
    if let Some(e) = state.failed {
        return Err(e);
    }
    let layout = if state.beyond_limit {
        Layout::plain(len)
    } else {
        layout
    };
    Ok((layout, state.head))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn safetensors(payload: usize) -> Vec<u8> {
        let h = format!(
            r#"{{"w":{{"dtype":"BF16","shape":[{}],"data_offsets":[0,{payload}]}}}}"#,
            payload / 2
        );
        let mut f = (h.len() as u64).to_le_bytes().to_vec();
        f.extend_from_slice(h.as_bytes());
        f.extend((0..payload).map(|i| i as u8));
        f
    }

    #[test]
    fn a_safetensors_header_is_found_from_the_head_and_the_rest_stays_unread() {
        let file = safetensors(4 << 20);
        let mut reader = &file[..];
        let (layout, head) = layout_of_stream(&mut reader, file.len() as u64).unwrap();
        assert_eq!(layout, format::layout(&file));
        assert_eq!(layout.format, "safetensors");
        assert!(head.len() < 1 << 20, "read {} bytes ahead", head.len());
        // The head and the unread rest are the whole stream.
        let mut all = head;
        reader.read_to_end(&mut all).unwrap();
        assert!(all == file);
    }

    #[test]
    fn a_gguf_header_is_found_from_the_head() {
        let file = crate::format::gguf::tests::build(
            &[
                ("token_embd.weight", 30, vec![1024, 2048]),
                ("output_norm.weight", 0, vec![1024]),
            ],
            32,
        );
        let mut reader = &file[..];
        let (layout, head) = layout_of_stream(&mut reader, file.len() as u64).unwrap();
        assert_eq!((layout.format, &layout.warning), ("gguf", &None));
        assert_eq!(layout, format::layout(&file));
        assert!(
            head.len() < file.len() / 2,
            "read {} bytes ahead",
            head.len()
        );
    }

    #[test]
    fn a_stream_shorter_than_its_length_is_an_error() {
        let file = safetensors(1 << 16);
        let err = layout_of_stream(&mut &file[..100], file.len() as u64).unwrap_err();
        assert!(err.to_string().contains("ended after"), "{err}");
    }

    #[test]
    fn a_format_needing_its_end_past_the_limit_is_plain_without_a_warning() {
        // A zip longer than the limit: its directory, at its end, cannot be reached.
        let len = LIMIT * 2;
        let mut stream = (&b"PK\x03\x04"[..]).chain(std::io::repeat(0).take(len - 4));
        let (layout, head) = layout_of_stream(&mut stream, len).unwrap();
        assert_eq!(layout, Layout::plain(len));
        assert!((head.len() as u64) < LIMIT, "held {} bytes", head.len());
    }
}
