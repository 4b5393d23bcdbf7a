//! Finds request heads that carry both `Content-Length` and `Transfer-Encoding`.
//!
//! hyper reads such a request by its `Transfer-Encoding`, drops the `Content-Length` before
//! the handler sees the head, and closes the connection after answering: safe, but a partner
//! sending both is trying to make two parsers disagree, and RFC 9112 §6.1 lets a server refuse
//! it, as nginx does. The handler can only refuse what it can see, so the connection's raw bytes
//! are scanned here as hyper reads them.
//!
//! The scan knows lines, not messages: a head is the lines between two empty lines, and a body
//! is scanned as lines too. A body is the partner's own bytes, so a line in it that names both
//! fields can only mark that partner's own connection; the handler acts on the mark only for a
//! request that hyper read with `Transfer-Encoding`, the one case where a `Content-Length` was
//! dropped.

const CONTENT_LENGTH: &[u8] = b"content-length:";
const TRANSFER_ENCODING: &[u8] = b"transfer-encoding:";
/// The longest prefix a line is classified by.
const PREFIX: usize = TRANSFER_ENCODING.len();

/// The scan of one connection's bytes, fed in the order they were read.
#[derive(Default)]
pub struct LengthScan {
    /// The current line's first bytes, as many as [`PREFIX`].
    line: [u8; PREFIX],
    /// How many bytes the current line has had (saturating at `PREFIX + 1`).
    len: usize,
    content_length: bool,
    transfer_encoding: bool,
    both: bool,
}

impl LengthScan {
    /// Scans `bytes`, the next ones read. Returns whether some head so far has named both
    /// fields.
    pub fn feed(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            let end = memchr::memchr(b'\n', bytes);
            let line = &bytes[..end.unwrap_or(bytes.len())];
            let room = PREFIX.saturating_sub(self.len).min(line.len());
            if room > 0 {
                self.line[self.len..self.len + room].copy_from_slice(&line[..room]);
            }
            self.len = (self.len + line.len()).min(PREFIX + 1);
            match end {
                Some(end) => {
                    self.end_line();
                    bytes = &bytes[end + 1..];
                }
                None => break,
            }
        }
        self.both
    }

    fn end_line(&mut self) {
        let line = &self.line[..self.len.min(PREFIX)];
        if self.len == 0 || line == b"\r" {
            // The end of a head: the next one starts afresh.
            self.content_length = false;
            self.transfer_encoding = false;
        } else if starts_with(line, CONTENT_LENGTH) {
            self.content_length = true;
        } else if starts_with(line, TRANSFER_ENCODING) {
            self.transfer_encoding = true;
        }
        self.both |= self.content_length && self.transfer_encoding;
        self.len = 0;
    }
}

fn starts_with(line: &[u8], name: &[u8]) -> bool {
    line.len() >= name.len() && line[..name.len()].eq_ignore_ascii_case(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(chunks: &[&[u8]]) -> bool {
        let mut scan = LengthScan::default();
        chunks.iter().fold(false, |_, chunk| scan.feed(chunk))
    }

    #[test]
    fn a_head_with_both_fields_is_found_in_either_order_and_any_case() {
        assert!(scan(&[
            b"POST /v1/payments HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        ]));
        assert!(scan(&[
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\nCONTENT-LENGTH: 5\r\n\r\n"
        ]));
        assert!(scan(&[
            b"POST / HTTP/1.1\ntransfer-encoding: chunked\ncontent-length:5\n\n"
        ]));
    }

    #[test]
    fn a_head_split_anywhere_across_reads_is_found() {
        let head: &[u8] =
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        for cut in 0..=head.len() {
            for second in cut..=head.len() {
                assert!(
                    scan(&[&head[..cut], &head[cut..second], &head[second..]]),
                    "cut at {cut} and {second}"
                );
            }
        }
    }

    #[test]
    fn one_field_per_head_is_not_found_even_on_one_connection() {
        assert!(!scan(&[
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        ]));
    }

    #[test]
    fn names_that_only_begin_alike_are_not_the_fields() {
        assert!(!scan(&[
            b"POST / HTTP/1.1\r\nContent-Length-X: 5\r\nTransfer-Encodings: chunked\r\n\r\n"
        ]));
        assert!(!scan(&[
            b"POST / HTTP/1.1\r\nX-Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        ]));
    }

    #[test]
    fn the_mark_stays_once_found() {
        let mut scan = LengthScan::default();
        assert!(scan
            .feed(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"));
        assert!(scan.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
    }
}
