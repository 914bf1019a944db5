//! Markdown for drafts: escaping interpolated values, and the plain-text version.
//!
//! [`escape`] is the escape function of the draft templates: every `{{ value }}` goes
//! through it, so a hostile display name cannot add links, images, HTML, headings, lists,
//! tables or emphasis to what counsel reads. It uses CommonMark backslash escapes, and only
//! where a character could start markup, so that the raw Markdown (which counsel also
//! sees) stays readable: `j_doe@example.com` and `203.0.113.7` come out unchanged. Newlines
//! in values become spaces (a value cannot start a new block), and leading and trailing
//! white space is dropped (it could start an indented code block).
//!
//! [`to_text`] renders the Markdown as plain text (what email sends): headings underlined,
//! lists kept, tables aligned in columns, links as `text (url)`, escapes resolved.

use pulldown_cmark::{Alignment, Event, HeadingLevel, Options, Parser, Tag, TagEnd};

/// Escape one interpolated value for Markdown (see the module documentation).
pub fn escape(value: &str) -> String {
    // One line: newlines and other control characters become spaces.
    let line: String = value
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let text = line.trim();
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len() + 8);
    for (i, &c) in chars.iter().enumerate() {
        let prev = i.checked_sub(1).and_then(|p| chars.get(p)).copied();
        let next = chars.get(i + 1).copied();
        let escape = match c {
            // Always special: escapes, code spans, emphasis, links and images, HTML and
            // autolinks, table cells, strikethrough and fences.
            '\\' | '`' | '*' | '[' | ']' | '<' | '|' | '~' => true,
            // Emphasis only at a word's edge: `j_doe` stays as it is.
            '_' => {
                !(prev.is_some_and(char::is_alphanumeric)
                    && next.is_some_and(char::is_alphanumeric))
            }
            // An entity or character reference (`&lt;`, `&#60;`) would be decoded.
            '&' => starts_entity(&chars[i + 1..]),
            // At the start of the value, which may be the start of a line: headings, block
            // quotes, list items, setext underlines and thematic breaks.
            '#' | '>' if i == 0 => true,
            '-' | '+' | '=' if i == 0 => next.is_none_or(|n| n.is_whitespace() || n == c),
            // An ordered-list marker: `1.` or `1)` followed by a space, at the start.
            '.' | ')' => {
                i > 0
                    && chars[..i].iter().all(char::is_ascii_digit)
                    && next.is_none_or(char::is_whitespace)
            }
            _ => false,
        };
        if escape {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `&name;`, `&#123;` or `&#x1F;` starts here (after the `&`).
fn starts_entity(rest: &[char]) -> bool {
    let body: String = rest.iter().take(33).take_while(|c| **c != ';').collect();
    if body.is_empty() || rest.get(body.chars().count()) != Some(&';') {
        return false;
    }
    if let Some(num) = body.strip_prefix('#') {
        return match num.strip_prefix(['x', 'X']) {
            Some(hex) => !hex.is_empty() && hex.chars().all(|c| c.is_ascii_hexdigit()),
            None => !num.is_empty() && num.chars().all(|c| c.is_ascii_digit()),
        };
    }
    body.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && body.chars().all(|c| c.is_ascii_alphanumeric())
}

/// One-line text for a subject: control characters become spaces, runs of spaces one.
pub fn one_line(value: &str) -> String {
    value
        .split(|c: char| c.is_control() || c.is_whitespace())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The Markdown document as plain text.
pub fn to_text(markdown: &str) -> String {
    let mut options = Options::empty();
    options.insert(Options::ENABLE_TABLES);
    options.insert(Options::ENABLE_STRIKETHROUGH);
    let mut w = TextWriter::default();
    for event in Parser::new_ext(markdown, options) {
        w.event(event);
    }
    w.finish()
}

#[derive(Default)]
struct Table {
    alignments: Vec<Alignment>,
    rows: Vec<Vec<String>>,
    header_rows: usize,
    in_head: bool,
}

#[derive(Default)]
struct TextWriter {
    out: String,
    /// Ordered lists' next numbers (None: bullet list), innermost last.
    lists: Vec<Option<u64>>,
    /// True right after an item's marker was written.
    item_fresh: bool,
    heading: Option<(HeadingLevel, String)>,
    table: Option<Table>,
    cell: Option<String>,
    links: Vec<String>,
    in_code_block: bool,
}

impl TextWriter {
    fn push(&mut self, s: &str) {
        if let Some(cell) = &mut self.cell {
            cell.push_str(s);
        } else if let Some((_, h)) = &mut self.heading {
            h.push_str(s);
        } else {
            self.out.push_str(s);
        }
        if !s.is_empty() {
            self.item_fresh = false;
        }
    }

    fn ensure_newline(&mut self) {
        if !self.out.is_empty() && !self.out.ends_with('\n') {
            self.out.push('\n');
        }
    }

    fn ensure_blank_line(&mut self) {
        if self.out.is_empty() {
            return;
        }
        while !self.out.ends_with("\n\n") {
            self.out.push('\n');
        }
    }

    /// Indentation of text continuing inside the innermost list item.
    fn item_indent(&self) -> String {
        " ".repeat(self.lists.len() * 3)
    }

    fn event(&mut self, event: Event<'_>) {
        match event {
            Event::Start(tag) => self.start(tag),
            Event::End(tag) => self.end(tag),
            Event::Text(t) => {
                if self.in_code_block {
                    for line in t.lines() {
                        self.out.push_str("    ");
                        self.out.push_str(line);
                        self.out.push('\n');
                    }
                } else {
                    self.push(&t);
                }
            }
            Event::Code(t) | Event::InlineMath(t) | Event::DisplayMath(t) => self.push(&t),
            Event::Html(t) | Event::InlineHtml(t) => self.push(&t),
            Event::FootnoteReference(t) => self.push(&format!("[{t}]")),
            Event::SoftBreak | Event::HardBreak => {
                if self.cell.is_some() || self.heading.is_some() {
                    self.push(" ");
                } else {
                    self.out.push('\n');
                    if !self.lists.is_empty() {
                        let indent = self.item_indent();
                        self.out.push_str(&indent);
                    }
                }
            }
            Event::Rule => {
                self.ensure_blank_line();
                self.out.push_str(&"-".repeat(72));
                self.out.push_str("\n\n");
            }
            Event::TaskListMarker(done) => self.push(if done { "[x] " } else { "[ ] " }),
        }
    }

    fn start(&mut self, tag: Tag<'_>) {
        match tag {
            Tag::Paragraph => {
                if self.lists.is_empty() {
                    self.ensure_blank_line();
                } else if !self.item_fresh {
                    self.ensure_newline();
                    let indent = self.item_indent();
                    self.out.push_str(&indent);
                }
            }
            Tag::Heading { level, .. } => {
                self.ensure_blank_line();
                self.heading = Some((level, String::new()));
            }
            Tag::BlockQuote(_) | Tag::HtmlBlock => self.ensure_blank_line(),
            Tag::CodeBlock(_) => {
                self.ensure_blank_line();
                self.in_code_block = true;
            }
            Tag::List(first) => {
                if self.lists.is_empty() {
                    self.ensure_blank_line();
                } else {
                    self.ensure_newline();
                }
                self.lists.push(first);
            }
            Tag::Item => {
                self.ensure_newline();
                let depth = self.lists.len().saturating_sub(1);
                let marker = match self.lists.last_mut() {
                    Some(Some(n)) => {
                        let m = format!("{n}. ");
                        *n += 1;
                        m
                    }
                    _ => "- ".to_string(),
                };
                self.out.push_str(&" ".repeat(depth * 3));
                self.out.push_str(&marker);
                self.item_fresh = true;
            }
            Tag::Table(alignments) => {
                self.ensure_blank_line();
                self.table = Some(Table {
                    alignments,
                    ..Table::default()
                });
            }
            Tag::TableHead => {
                if let Some(t) = &mut self.table {
                    t.in_head = true;
                    t.rows.push(Vec::new());
                }
            }
            Tag::TableRow => {
                if let Some(t) = &mut self.table {
                    t.rows.push(Vec::new());
                }
            }
            Tag::TableCell => self.cell = Some(String::new()),
            Tag::Link { dest_url, .. } | Tag::Image { dest_url, .. } => {
                self.links.push(dest_url.to_string())
            }
            _ => {}
        }
    }

    fn end(&mut self, tag: TagEnd) {
        match tag {
            TagEnd::Paragraph => {
                if self.lists.is_empty() {
                    self.out.push_str("\n\n");
                } else {
                    self.out.push('\n');
                }
            }
            TagEnd::Heading(_) => {
                if let Some((level, text)) = self.heading.take() {
                    let text = text.trim().to_string();
                    let width = text.chars().count();
                    match level {
                        HeadingLevel::H1 => {
                            let upper = text.to_uppercase();
                            self.out.push_str(&upper);
                            self.out.push('\n');
                            self.out.push_str(&"=".repeat(upper.chars().count()));
                        }
                        HeadingLevel::H2 => {
                            self.out.push_str(&text);
                            self.out.push('\n');
                            self.out.push_str(&"-".repeat(width));
                        }
                        _ => self.out.push_str(&text),
                    }
                    self.out.push_str("\n\n");
                }
            }
            TagEnd::CodeBlock => {
                self.in_code_block = false;
                self.out.push('\n');
            }
            TagEnd::List(_) => {
                self.lists.pop();
                self.ensure_newline();
                if self.lists.is_empty() {
                    self.out.push('\n');
                }
            }
            TagEnd::Item => self.ensure_newline(),
            TagEnd::TableCell => {
                if let (Some(cell), Some(t)) = (self.cell.take(), &mut self.table) {
                    if let Some(row) = t.rows.last_mut() {
                        row.push(cell.trim().to_string());
                    }
                }
            }
            TagEnd::TableHead => {
                if let Some(t) = &mut self.table {
                    t.in_head = false;
                    t.header_rows = t.rows.len();
                }
            }
            TagEnd::Table => {
                if let Some(t) = self.table.take() {
                    self.out.push_str(&format_table(&t));
                    self.out.push('\n');
                }
            }
            TagEnd::Link | TagEnd::Image => {
                if let Some(url) = self.links.pop() {
                    if !url.is_empty() {
                        self.push(&format!(" ({url})"));
                    }
                }
            }
            _ => {}
        }
    }

    fn finish(self) -> String {
        let mut lines: Vec<&str> = self.out.lines().map(str::trim_end).collect();
        while lines.last().is_some_and(|l| l.is_empty()) {
            lines.pop();
        }
        let mut out = String::with_capacity(self.out.len());
        let mut blank = 0;
        for l in lines {
            if l.is_empty() {
                blank += 1;
                if blank > 1 {
                    continue;
                }
            } else {
                blank = 0;
            }
            out.push_str(l);
            out.push('\n');
        }
        out
    }
}

/// Columns padded to their widest cell, a rule under the header.
fn format_table(t: &Table) -> String {
    let cols = t.rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0usize; cols];
    for row in &t.rows {
        for (i, c) in row.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    for (r, row) in t.rows.iter().enumerate() {
        let cells: Vec<String> = (0..cols)
            .map(|i| {
                let c = row.get(i).map(String::as_str).unwrap_or("");
                let pad = widths[i].saturating_sub(c.chars().count());
                match t.alignments.get(i) {
                    Some(Alignment::Right) => format!("{}{c}", " ".repeat(pad)),
                    _ => format!("{c}{}", " ".repeat(pad)),
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
        if r + 1 == t.header_rows {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            out.push_str(&rule.join("  "));
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Render Markdown to HTML-free events and collect what is not plain text.
    fn markup(md: &str) -> Vec<String> {
        let mut options = Options::empty();
        options.insert(Options::ENABLE_TABLES);
        options.insert(Options::ENABLE_STRIKETHROUGH);
        Parser::new_ext(md, options)
            .filter_map(|e| match e {
                Event::Start(Tag::Paragraph) | Event::End(TagEnd::Paragraph) => None,
                Event::Text(_) => None,
                other => Some(format!("{other:?}")),
            })
            .collect()
    }

    #[test]
    fn readable_values_stay_as_they_are() {
        for v in [
            "j_doe@example.com",
            "203.0.113.7",
            "2026-11-25T23:57:58.123Z",
            "AT&T Wireless",
            "C02DEMO0001",
            "Mallory O'Brien (contractor)",
            "USD 12,500.00",
            "sha256 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            "10.0.0.1",
            "-5",
            "co-operative",
            "A+B=C",
        ] {
            assert_eq!(escape(v), v, "{v}");
        }
    }

    #[test]
    fn hostile_values_are_plain_text() {
        let hostile = [
            "[click here](https://evil.example/x)",
            "![img](https://evil.example/p.png)",
            "<https://evil.example>",
            "<script>alert(1)</script>",
            "<img src=x onerror=alert(1)>",
            "# Heading",
            "Name\n# Injected heading\n\n- list",
            "> quoted",
            "**bold** and *it* and __u__ and _e_",
            "`code` and ```fence```",
            "| a | b |",
            "~~gone~~",
            "&lt;b&gt; &#60; &#x3C;",
            "1. first",
            "- item",
            "+ item",
            "===",
            "    indented code",
            "trailing backslash \\",
            "[ref]: https://evil.example",
        ];
        for h in hostile {
            let e = escape(h);
            assert!(!e.contains('\n'), "{e}");
            for md in [
                e.clone(),
                format!("{e}\n"),
                format!("Name: {e}\n"),
                format!("| {e} |\n| --- |\n"),
            ] {
                let events = markup(&md);
                let bad: Vec<&String> = events
                    .iter()
                    .filter(|e| !e.contains("Table") && !e.contains("SoftBreak"))
                    .collect();
                assert!(
                    bad.is_empty(),
                    "{h:?} escaped as {e:?} still makes {bad:?} in {md:?}"
                );
            }
            // Nothing of the value is lost: the plain text shows it, newlines as spaces.
            let shown = to_text(&e);
            let want = h.split_whitespace().collect::<Vec<_>>().join(" ");
            assert_eq!(
                shown.split_whitespace().collect::<Vec<_>>().join(" "),
                want,
                "{e}"
            );
        }
    }

    #[test]
    fn one_line_subjects() {
        assert_eq!(one_line("IC3:\n  case\tA-1\r\n"), "IC3: case A-1");
    }

    #[test]
    fn plain_text_keeps_structure() {
        let md = "# Complaint\n\nIntro *with* emphasis and a [link](https://ic3.gov).\n\n## Devices\n\n- one\n- two\n\n1. first\n2. second\n\n| IP | Events |\n| --- | ---: |\n| 203.0.113.7 | 12 |\n| 198.51.100.22 | 3 |\n\nEnd \\[escaped\\].\n";
        let t = to_text(md);
        assert_eq!(
            t,
            "COMPLAINT\n=========\n\nIntro with emphasis and a link (https://ic3.gov).\n\nDevices\n-------\n\n- one\n- two\n\n1. first\n2. second\n\nIP             Events\n-------------  ------\n203.0.113.7        12\n198.51.100.22       3\n\nEnd [escaped].\n"
        );
    }
}
