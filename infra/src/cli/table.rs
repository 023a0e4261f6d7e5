//! Plain-text tables for readable output: a header row, columns padded to
//! their widest cell, numbers aligned right, the last column unpadded.

/// The longest a text cell is shown; longer text is cut with "…".
const MAX_CELL: usize = 40;

pub struct Table {
    header: Vec<String>,
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles.
    pub fn new(header: &[&str]) -> Table {
        Table { header: header.iter().map(|h| h.to_string()).collect(), right: vec![false; header.len()], rows: vec![] }
    }

    /// Aligns the given columns (by index) to the right.
    pub fn right(mut self, columns: &[usize]) -> Table {
        for &c in columns {
            if let Some(r) = self.right.get_mut(c) {
                *r = true;
            }
        }
        self
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as lines of text (no trailing newline).
    pub fn render(&self) -> String {
        let columns = self.header.len();
        let rows: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| {
                (0..columns)
                    .map(|i| {
                        let cell = r.get(i).map(String::as_str).unwrap_or("");
                        // The last column may be long (errors): it is never padded, so never cut.
                        if i + 1 < columns {
                            cut(cell)
                        } else {
                            cell.replace('\n', " ")
                        }
                    })
                    .collect()
            })
            .collect();
        let mut widths: Vec<usize> = self.header.iter().map(|h| width(h)).collect();
        for r in &rows {
            for (i, cell) in r.iter().enumerate() {
                widths[i] = widths[i].max(width(cell));
            }
        }
        let line = |cells: &[String]| {
            let mut out = String::new();
            for (i, cell) in cells.iter().enumerate() {
                let last = i + 1 == columns;
                let pad = widths[i].saturating_sub(width(cell));
                if self.right[i] {
                    out.push_str(&" ".repeat(pad));
                    out.push_str(cell);
                } else {
                    out.push_str(cell);
                    if !last {
                        out.push_str(&" ".repeat(pad));
                    }
                }
                if !last {
                    out.push_str("  ");
                }
            }
            out.trim_end().to_string()
        };
        let mut lines = vec![line(&self.header)];
        lines.extend(rows.iter().map(|r| line(r)));
        lines.join("\n")
    }
}

fn width(text: &str) -> usize {
    text.chars().count()
}

fn cut(text: &str) -> String {
    shorten(text, MAX_CELL)
}

/// `text` on one line, cut to at most `max` characters with "…".
pub fn shorten(text: &str, max: usize) -> String {
    let text = text.replace('\n', " ");
    if width(&text) <= max {
        return text;
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_padded_numbers_right_aligned_and_long_text_cut() {
        let mut t = Table::new(&["NAME", "N", "NOTE"]).right(&[1]);
        t.row(vec!["a".into(), "1".into(), "first".into()]);
        t.row(vec!["x".repeat(50), "100".into(), "y".repeat(60)]);
        let text = t.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], format!("NAME{}    N  NOTE", " ".repeat(36)));
        assert_eq!(lines[1], format!("a{}    1  first", " ".repeat(39)));
        assert_eq!(lines[2], format!("{}…  100  {}", "x".repeat(39), "y".repeat(60)));
    }
}
