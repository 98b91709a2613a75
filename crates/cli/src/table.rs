//! Listings for people: a table with a header row, columns as wide as their widest cell.
//! `--json` gives machines the server's own JSON instead.

/// Prints `rows` under `header`, two spaces between columns, the last column left ragged.
pub fn print(header: &[&str], rows: &[Vec<String>]) {
    print!("{}", render(header, rows));
}

fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, cell)| if i == last { (*cell).to_owned() } else { format!("{cell:<0$}", widths[i]) })
            .collect();
        padded.join("  ").trim_end().to_owned() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out += &line(row.iter().map(String::as_str).collect());
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn columns_line_up_under_their_header() {
        let rows = vec![vec!["a-long-id".to_owned(), "x".to_owned()], vec!["b".to_owned(), "y".to_owned()]];
        assert_eq!(super::render(&["ID", "NAME"], &rows), "ID         NAME\na-long-id  x\nb          y\n");
    }
}
