//! Configuration errors located by file, line and column, rendered the way rustc renders its own,
//! and the collector that gathers every one of them from a file.

use std::fmt::{self, Display};
use std::ops::Range;

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
    /// The text of line `line` without its line break, shown under the message.
    pub source_line: String,
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
        // U+FFFD, one character each, so the carets stay aligned.
        let shown: String = e
            .source_line
            .chars()
            .map(|c| {
                if c.is_control() && c != '\t' {
                    '\u{FFFD}'
                } else {
                    c
                }
            })
            .collect();
        writeln!(f, "{number} | {shown}")?;
        // Keep tabs under tabs so the carets line up however wide the terminal draws a tab.
        let lead: String = shown
            .chars()
            .take(e.column.saturating_sub(1))
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        write!(f, "{pad} | {lead}{}", "^".repeat(e.width.max(1)))
    }
}

/// Every problem found in one configuration file. Nothing of a file with errors is applied.
///
/// `Display` renders each error, then a summary line such as
/// `error: config.toml has 3 errors; nothing was applied`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", Summary(self))]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// The errors, in the order they appear in the file.
    pub fn errors(&self) -> &[ConfigError] {
        &self.0
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
        let plural = if errors.len() == 1 { "" } else { "s" };
        write!(
            f,
            "error: {file} has {} error{plural}; nothing was applied",
            errors.len()
        )
    }
}

/// The text of one configuration file, turning byte spans into located errors.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Source<'a> {
    pub file: &'a str,
    pub text: &'a str,
}

impl<'a> Source<'a> {
    pub fn new(file: &'a str, text: &'a str) -> Self {
        Source { file, text }
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
        let width = self.text.get(start..end).map_or(0, |s| s.chars().count());
        let source_line = self.text.get(line_range).unwrap_or_default();
        ConfigError {
            file: self.file.to_owned(),
            line,
            column,
            key_path: key_path.to_owned(),
            message: message.into(),
            source_line: source_line
                .trim_start_matches('\u{feff}')
                .trim_end_matches('\r')
                .to_owned(),
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
        let before = self.text.get(..offset).unwrap_or_default();
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let line = before.bytes().filter(|b| *b == b'\n').count() + 1;
        // A byte-order mark opening the file is invisible in an editor: it takes no column.
        let column = before
            .get(line_start..)
            .map_or(0, |s| s.trim_start_matches('\u{feff}').chars().count())
            + 1;
        let rest = self.text.get(offset..).unwrap_or_default();
        let line_end = rest.find('\n').map_or(self.text.len(), |i| offset + i);
        (line, column, line_start..line_end)
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

/// The errors found so far in one file.
pub(crate) struct Errors<'a> {
    pub source: Source<'a>,
    pub list: Vec<ConfigError>,
}

impl<'a> Errors<'a> {
    pub fn new(source: Source<'a>) -> Self {
        Errors {
            source,
            list: Vec::new(),
        }
    }

    pub fn push(&mut self, span: Range<usize>, key_path: &str, message: impl Into<String>) {
        self.list.push(self.source.error(span, key_path, message));
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
        let all = ConfigErrors(vec![e.clone(), e]).to_string();
        assert!(all.ends_with("\n\nerror: config.toml has 2 errors; nothing was applied"));
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
