//! Markdown tables.

use std::fmt::Write as _;

/// A markdown table: a header row, then one row per `rows` item (cells in header order).
pub(crate) fn table<R, C>(header: &[&str], rows: R) -> String
where
    R: IntoIterator<Item = C>,
    C: IntoIterator,
    C::Item: std::fmt::Display,
{
    let mut md = format!(
        "| {} |\n|{}\n",
        header.join(" | "),
        "---|".repeat(header.len())
    );
    for row in rows {
        md.push('|');
        for cell in row {
            let _ = write!(md, " {cell} |");
        }
        md.push('\n');
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_follow_the_header() {
        let md = table(&["a", "b"], [["1", "2"], ["3", "4"]]);
        assert_eq!(md, "| a | b |\n|---|---|\n| 1 | 2 |\n| 3 | 4 |\n");
    }
}
