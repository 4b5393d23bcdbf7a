//! Configuration errors located by file, line and column, rendered the way rustc renders its own,
//! and the collector that gathers them from a file.
//!
//! Locating is linear in the file whatever it holds: the collector keeps only the first
//! [`MAX_REPORTED`] errors (by place in the file) and counts the rest, line and column come from
//! an index of the text built once, and a line shown under an error is cut to [`SHOWN_LINE`]
//! characters around the error. A mangled file of millions of errors is reported in one pass.

use std::cell::OnceCell;
use std::fmt::{self, Display};
use std::ops::Range;

/// The most errors a file's report holds; past them it says how many more there are.
pub const MAX_REPORTED: usize = 100;

/// The most characters of a line shown under an error: a generated file may be one line of
/// megabytes.
pub const SHOWN_LINE: usize = 240;

/// One problem in a configuration file: where it is and what was expected there.
///
/// `Display` renders it rustc-style: the message, `--> file:line:column`, the source line and a
/// row of carets under the offending text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", Rendered(self))]
pub struct ConfigError {
    pub file: String,
    /// 1-based; 0 when the problem is the whole file (it could not be read).
    pub line: usize,
    /// 1-based, counted in characters (not bytes); 0 when `line` is 0.
    pub column: usize,
    /// Where in the document, 0-based like `partner[2].quota.payment`; empty for a TOML syntax
    /// error or a problem with the whole file.
    pub key_path: String,
    /// What is wrong and what was expected.
    pub message: String,
    /// The text of line `line` without its line break, shown under the message: all of it, or
    /// of a line longer than [`SHOWN_LINE`] characters the part around `column`.
    pub source_line: String,
    /// The column `source_line` starts at: 1 unless the start of a long line was cut.
    pub shown_from: usize,
    /// Whether the end of a long line was cut.
    pub cut_after: bool,
    /// How many characters from `column` on to underline (at least 1).
    pub width: usize,
}

impl ConfigError {
    /// A problem with the file as a whole (it could not be read), with no line to show.
    pub fn whole_file(file: &str, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_owned(),
            line: 0,
            column: 0,
            key_path: String::new(),
            message: message.into(),
            source_line: String::new(),
            shown_from: 1,
            cut_after: false,
            width: 0,
        }
    }
}

struct Rendered<'a>(&'a ConfigError);

impl fmt::Display for Rendered<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = self.0;
        if e.key_path.is_empty() {
            writeln!(f, "error: {}", e.message)?;
        } else {
            writeln!(f, "error: {}: {}", e.key_path, e.message)?;
        }
        if e.line == 0 {
            return write!(f, " --> {}", e.file);
        }
        let number = e.line.to_string();
        let pad = " ".repeat(number.len());
        writeln!(f, "{pad}--> {}:{}:{}", e.file, e.line, e.column)?;
        writeln!(f, "{pad} |")?;
        // Control characters (a stray escape sequence) would act on the terminal; show them as
        // U+FFFD, one character each, so the carets stay aligned. A cut is marked with an
        // ellipsis, which takes one column.
        let before = if e.shown_from > 1 { "…" } else { "" };
        let after = if e.cut_after { "…" } else { "" };
        let shown: String = before
            .chars()
            .chain(e.source_line.chars().map(|c| {
                if c.is_control() && c != '\t' {
                    '\u{FFFD}'
                } else {
                    c
                }
            }))
            .collect();
        writeln!(f, "{number} | {shown}{after}")?;
        // Keep tabs under tabs so the carets line up however wide the terminal draws a tab.
        let lead: String = shown
            .chars()
            .take(e.column.saturating_sub(e.shown_from) + before.chars().count())
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        write!(f, "{pad} | {lead}{}", "^".repeat(e.width.max(1)))
    }
}

/// Problems in one configuration file: the first [`MAX_REPORTED`] in file order, and how many
/// more there are. Nothing of a file with errors is applied.
///
/// `Display` renders each error, then, when some were left out, how many, then a summary line
/// such as `error: config.toml has 3 errors; nothing was applied`. The list is public as `.0`;
/// the count of those left out, [`ConfigErrors::omitted`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", Summary(self))]
pub struct ConfigErrors(pub Vec<ConfigError>, usize);

impl ConfigErrors {
    /// One error: the file could not be read, or its text is not TOML.
    pub fn one(error: ConfigError) -> Self {
        ConfigErrors(vec![error], 0)
    }

    /// The errors, in the order they appear in the file.
    pub fn errors(&self) -> &[ConfigError] {
        &self.0
    }

    /// Errors found past the [`MAX_REPORTED`] held.
    pub fn omitted(&self) -> usize {
        self.1
    }

    /// Every error found, held or not.
    pub fn total(&self) -> usize {
        self.0.len() + self.1
    }
}

struct Summary<'a>(&'a ConfigErrors);

impl fmt::Display for Summary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let errors = &self.0 .0;
        for error in errors {
            writeln!(f, "{error}")?;
            writeln!(f)?;
        }
        let file = errors
            .first()
            .map_or("the configuration", |e| e.file.as_str());
        let omitted = self.0.omitted();
        if omitted > 0 {
            let plural = if omitted == 1 { "" } else { "s" };
            writeln!(
                f,
                "error: … and {omitted} more error{plural} after these {} (fix these first)",
                errors.len()
            )?;
            writeln!(f)?;
        }
        let total = self.0.total();
        let plural = if total == 1 { "" } else { "s" };
        write!(
            f,
            "error: {file} has {total} error{plural}; nothing was applied"
        )
    }
}

/// Where each line of a text starts, and how many characters come before each 64-byte block:
/// line and column of any offset in logarithmic time plus at most 63 bytes counted.
#[derive(Debug)]
struct LineIndex {
    starts: Vec<usize>,
    chars_before_block: Vec<usize>,
}

const BLOCK: usize = 64;

impl LineIndex {
    fn new(text: &str) -> Self {
        let bytes = text.as_bytes();
        let mut starts = vec![0];
        starts.extend(
            bytes
                .iter()
                .enumerate()
                .filter(|(_, b)| **b == b'\n')
                .map(|(i, _)| i + 1),
        );
        let mut chars_before_block = Vec::with_capacity(bytes.len() / BLOCK + 2);
        let mut chars = 0;
        for block in bytes.chunks(BLOCK) {
            chars_before_block.push(chars);
            chars += char_starts(block);
        }
        chars_before_block.push(chars);
        LineIndex {
            starts,
            chars_before_block,
        }
    }

    /// The 0-based line holding `offset`.
    fn line(&self, offset: usize) -> usize {
        self.starts
            .partition_point(|&start| start <= offset)
            .saturating_sub(1)
    }

    /// Characters in `text[..offset]`; `offset` is a character boundary.
    fn chars_before(&self, text: &str, offset: usize) -> usize {
        let block = offset / BLOCK;
        let counted = self.chars_before_block.get(block).copied().unwrap_or(0);
        counted
            + text
                .as_bytes()
                .get(block * BLOCK..offset)
                .map_or(0, char_starts)
    }
}

/// The characters starting in `bytes` (every byte but UTF-8 continuation bytes).
fn char_starts(bytes: &[u8]) -> usize {
    bytes.iter().filter(|b| (**b & 0xC0) != 0x80).count()
}

/// The text of one configuration file, turning byte spans into located errors.
#[derive(Debug)]
pub(crate) struct Source<'a> {
    pub file: &'a str,
    pub text: &'a str,
    /// Built at the first error located.
    index: OnceCell<LineIndex>,
}

impl<'a> Source<'a> {
    pub fn new(file: &'a str, text: &'a str) -> Self {
        Source {
            file,
            text,
            index: OnceCell::new(),
        }
    }

    fn index(&self) -> &LineIndex {
        self.index.get_or_init(|| LineIndex::new(self.text))
    }

    /// An error about the text at `span` (byte offsets, as toml reports them).
    pub fn error(
        &self,
        span: Range<usize>,
        key_path: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        let start = self.floor(span.start);
        let (line, column, line_range) = self.line_column(start);
        let end = self.floor(span.end).min(line_range.end);
        let line_end = match self.text.get(line_range.clone()) {
            Some(text) if text.ends_with('\r') => line_range.end - 1,
            _ => line_range.end,
        };
        let line_from = line_range.start
            + self.leading_boms(line_range.start..line_end) * '\u{feff}'.len_utf8();
        let index = self.index();
        let line_chars =
            index.chars_before(self.text, line_end) - index.chars_before(self.text, line_from);
        // The whole line when short; else SHOWN_LINE characters from a little before the error.
        let (shown_start, shown_from) = if line_chars <= SHOWN_LINE {
            (line_from, 1)
        } else {
            let before = self.text.get(line_from..start).unwrap_or_default();
            let back = before
                .char_indices()
                .rev()
                .take(SHOWN_LINE / 4)
                .last()
                .map_or(start, |(i, _)| line_from + i);
            let walked = self.text.get(back..start).map_or(0, |s| s.chars().count());
            (back, column - walked)
        };
        let tail = self.text.get(shown_start..line_end).unwrap_or_default();
        let shown: String = tail.chars().take(SHOWN_LINE).collect();
        let cut_after = shown.len() < tail.len();
        let shown_end = shown_start + shown.len();
        let width = self
            .text
            .get(start..end.min(shown_end).max(start))
            .map_or(0, |s| s.chars().count());
        ConfigError {
            file: self.file.to_owned(),
            line,
            column,
            key_path: key_path.to_owned(),
            message: message.into(),
            source_line: shown,
            shown_from,
            cut_after,
            width: width.max(1),
        }
    }

    /// `file:line:column` of a byte offset, to name another place in a message.
    pub fn location(&self, offset: usize) -> String {
        let (line, column, _) = self.line_column(self.floor(offset));
        format!("{}:{line}:{column}", self.file)
    }

    /// 1-based line, 1-based column in characters, and the byte range of the line's text.
    fn line_column(&self, offset: usize) -> (usize, usize, Range<usize>) {
        let index = self.index();
        let line = index.line(offset);
        let line_start = index.starts.get(line).copied().unwrap_or(0);
        let line_end = index
            .starts
            .get(line + 1)
            .map_or(self.text.len(), |next| next - 1);
        // A byte-order mark opening a line is invisible in an editor: it takes no column.
        let boms = self.leading_boms(line_start..offset);
        let column = index.chars_before(self.text, offset)
            - index.chars_before(self.text, line_start)
            - boms
            + 1;
        (line + 1, column, line_start..line_end)
    }

    /// Byte-order marks opening `range` of the text.
    fn leading_boms(&self, range: Range<usize>) -> usize {
        let text = self.text.get(range).unwrap_or_default();
        (text.len() - text.trim_start_matches('\u{feff}').len()) / '\u{feff}'.len_utf8()
    }

    /// The offset clamped to the text and moved back to the start of its character.
    fn floor(&self, offset: usize) -> usize {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        offset
    }
}

/// An error found, not yet located: locating waits until it is known to be among the first
/// [`MAX_REPORTED`].
struct Pending {
    at: usize,
    seq: usize,
    span: Range<usize>,
    key_path: String,
    message: String,
}

/// The errors found so far in one file: the first [`MAX_REPORTED`] by place in the file (and
/// up to as many again awaiting a cut), and how many in all.
pub(crate) struct Errors<'a> {
    pub source: Source<'a>,
    kept: Vec<Pending>,
    found: usize,
    /// Warnings found on the way, in the order found (few: one per route at most).
    pub warnings: Vec<super::check::Warning>,
}

impl<'a> Errors<'a> {
    pub fn new(source: Source<'a>) -> Self {
        Errors {
            source,
            kept: Vec::new(),
            found: 0,
            warnings: Vec::new(),
        }
    }

    pub fn push(&mut self, span: Range<usize>, key_path: &str, message: impl Into<String>) {
        let at = self.source.floor(span.start);
        let seq = self.found;
        self.found += 1;
        self.kept.push(Pending {
            at,
            seq,
            span,
            key_path: key_path.to_owned(),
            message: message.into(),
        });
        if self.kept.len() >= 2 * MAX_REPORTED {
            self.cut();
        }
    }

    /// Keeps the first [`MAX_REPORTED`]: a sort of a bounded list every [`MAX_REPORTED`]
    /// errors, so linear in all.
    fn cut(&mut self) {
        self.kept.sort_by_key(|p| (p.at, p.seq));
        self.kept.truncate(MAX_REPORTED);
    }

    /// How many errors were found.
    pub fn count(&self) -> usize {
        self.found
    }

    /// The errors as pushed, located, without sorting or cutting: for tests of what one reader
    /// reports (fewer than [`MAX_REPORTED`] errors).
    #[cfg(test)]
    pub fn pushed(self) -> Vec<ConfigError> {
        let source = &self.source;
        let mut kept = self.kept;
        kept.sort_by_key(|p| p.seq);
        kept.iter()
            .map(|p| source.error(p.span.clone(), &p.key_path, p.message.as_str()))
            .collect()
    }

    /// The report: the first errors in file order, located, and how many more.
    pub fn finish(mut self) -> ConfigErrors {
        self.cut();
        let list: Vec<ConfigError> = self
            .kept
            .iter()
            .map(|p| {
                self.source
                    .error(p.span.clone(), &p.key_path, p.message.as_str())
            })
            .collect();
        let omitted = self.found - list.len();
        ConfigErrors(list, omitted)
    }

    /// Runs a value parser whose error completes "expected …", reporting its failure at `at`.
    pub fn parse<T, E: Display>(
        &mut self,
        at: &At<&str>,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> Option<T> {
        match parse(at.value) {
            Ok(value) => Some(value),
            Err(why) => {
                self.push(at.span.clone(), &at.path, format!("expected {why}"));
                None
            }
        }
    }
}

/// A value read from the document, with where it was written.
#[derive(Debug, Clone)]
pub(crate) struct At<T> {
    pub value: T,
    pub span: Range<usize>,
    pub path: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_become_one_based_lines_and_columns() {
        let src = Source::new("c.toml", "a = 1\nbb = \"x\"\n");
        let e = src.error(11..14, "bb", "nope");
        assert_eq!((e.line, e.column, e.width), (2, 6, 3));
        assert_eq!(e.source_line, "bb = \"x\"");
        let e = src.error(0..0, "", "start");
        assert_eq!((e.line, e.column, e.width), (1, 1, 1));
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        // "é" is two bytes and "水" three; the value starts after them.
        let text = "# é\nname = \"水\" # x\nk = \"v\"";
        let src = Source::new("c.toml", text);
        let at = text.find("# x").unwrap_or_default();
        let e = src.error(at..at + 3, "k", "m");
        assert_eq!((e.line, e.column, e.width), (2, 12, 3));
        let quote = text.find('"').unwrap_or_default();
        let e = src.error(quote..quote + 5, "name", "m");
        assert_eq!((e.line, e.column, e.width), (2, 8, 3));
    }

    #[test]
    fn a_byte_order_mark_takes_no_column() {
        let text = "\u{feff}k = 1\nj = 2";
        let e = Source::new("c.toml", text).error(7..8, "k", "m");
        assert_eq!((e.line, e.column, e.source_line.as_str()), (1, 5, "k = 1"));
        let e = Source::new("c.toml", text).error(13..14, "j", "m");
        assert_eq!((e.line, e.column), (2, 5));
    }

    #[test]
    fn out_of_range_and_mid_character_spans_do_not_panic() {
        let text = "k = \"水\"\r\n";
        let src = Source::new("c.toml", text);
        let e = src.error(6..7, "k", "m"); // inside the three bytes of 水
        assert_eq!((e.line, e.column), (1, 6));
        assert_eq!(e.source_line, "k = \"水\"");
        let e = src.error(500..900, "k", "m");
        assert_eq!((e.line, e.column, e.width), (2, 1, 1));
        let (start, end) = (3, 1);
        let e = Source::new("c.toml", "").error(start..end, "", "m");
        assert_eq!((e.line, e.column, e.width), (1, 1, 1));
    }

    #[test]
    fn renders_like_rustc() {
        let text = "\n".repeat(30) + "quota = { inquiry_user = \"50/x\" }\n";
        let src = Source::new("config.toml", &text);
        let at = text.find("\"50/x\"").unwrap_or_default();
        let e = src.error(
            at..at + 6,
            "partner[1].quota.inquiry_user",
            "expected a rate",
        );
        let shown = e.to_string();
        let expected = "error: partner[1].quota.inquiry_user: expected a rate\n  --> config.toml:31:26\n   |\n31 | quota = { inquiry_user = \"50/x\" }\n   |                          ^^^^^^";
        assert_eq!(shown, expected);
        let all = ConfigErrors(vec![e.clone(), e], 0).to_string();
        assert!(all.ends_with("\n\nerror: config.toml has 2 errors; nothing was applied"));
    }

    #[test]
    fn long_lines_are_shown_around_the_error() {
        // One line of 10 000 values, the bad one near the end, after a tab and a "水".
        let mut text = "k = [\t\"水\", ".to_owned();
        for _ in 0..10_000 {
            text.push_str("1, ");
        }
        let at = text.len();
        text.push_str("\"bad\", 2]\n");
        let e = Source::new("c.toml", &text).error(at..at + 5, "k[10001]", "m");
        assert_eq!((e.line, e.column, e.width), (1, 30_012, 5));
        assert_eq!(e.shown_from, 30_012 - SHOWN_LINE / 4);
        assert_eq!(e.source_line, format!("{}\"bad\", 2]", "1, ".repeat(20)));
        assert!(!e.cut_after);
        let shown = e.to_string();
        let expected = format!(
            "1 | …{}\"bad\", 2]\n  | {}^^^^^",
            "1, ".repeat(20),
            " ".repeat(61)
        );
        assert!(shown.ends_with(&expected), "{shown}");

        // Near the start: the tab and the "水" are shown, the rest cut.
        let e = Source::new("c.toml", &text).error(7..12, "k[0]", "m");
        assert_eq!((e.column, e.shown_from, e.width), (8, 1, 3));
        assert!(e.cut_after);
        assert_eq!(e.source_line.chars().count(), SHOWN_LINE);
        assert!(e.to_string().ends_with("1…\n  |      \t ^^^"), "{e}");
    }

    #[test]
    fn only_the_first_errors_are_kept_and_the_rest_counted() {
        let text = "x\n".repeat(1000);
        let mut errors = Errors::new(Source::new("c.toml", &text));
        for line in (0..1000).rev() {
            errors.push(2 * line..2 * line + 1, "x", format!("line {}", line + 1));
        }
        assert_eq!(errors.count(), 1000);
        let report = errors.finish();
        assert_eq!(
            (report.0.len(), report.omitted(), report.total()),
            (100, 900, 1000)
        );
        let lines: Vec<usize> = report.0.iter().map(|e| e.line).collect();
        assert_eq!(lines, (1..=100).collect::<Vec<_>>());
        assert!(report.to_string().ends_with("error: … and 900 more errors after these 100 (fix these first)\n\nerror: c.toml has 1000 errors; nothing was applied"));
    }

    #[test]
    fn renders_whole_file_errors_and_hides_control_characters() {
        let e = ConfigError::whole_file("gone.toml", "cannot read the file: not found");
        assert_eq!(
            e.to_string(),
            "error: cannot read the file: not found\n --> gone.toml"
        );
        let e = Source::new("c.toml", "\tk = \u{1b}[31m").error(5..6, "k", "m");
        assert!(e
            .to_string()
            .ends_with("1 | \tk = \u{FFFD}[31m\n  | \t    ^"));
    }
}
