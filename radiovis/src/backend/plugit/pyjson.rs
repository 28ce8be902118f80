//! JSON text as Python's `json.dumps` writes it with its defaults (`, ` and `: `
//! separators, every character outside printable ASCII escaped as `\uXXXX`), for the
//! `add_log` `headers` parameter: PlugIt stores that text as it is and shows it on its
//! log page, so radiovis's entries look exactly like the original's
//! (docs/protocol.md#directory).

use std::io::{self, Write};

use serde::Serialize;
use serde_json::ser::{Formatter, Serializer};

/// serde_json's compact output, with Python's separators and ASCII-only strings.
struct PythonFormatter;

impl Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + Write>(&mut self, writer: &mut W) -> io::Result<()> {
        writer.write_all(b": ")
    }

    /// The parts of a string serde_json leaves unescaped: Python (`ensure_ascii`)
    /// escapes everything outside ` `..`~` there, as UTF-16 code units.
    fn write_string_fragment<W: ?Sized + Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            if (' '..='~').contains(&c) {
                continue;
            }
            writer.write_all(&fragment.as_bytes()[start..i])?;
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                write!(writer, "\\u{u:04x}")?;
            }
            start = i + c.len_utf8();
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }
}

/// `value` as the text Python's `json.dumps(value)` gives.
pub fn dumps<T: Serialize + ?Sized>(value: &T) -> String {
    let mut out = Vec::with_capacity(64);
    let mut ser = Serializer::with_formatter(&mut out, PythonFormatter);
    // Strings and lists of them always serialise; the output is ASCII.
    if value.serialize(&mut ser).is_err() {
        return String::new();
    }
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_python_json_dumps() {
        // json.dumps([["link", "http://x/?a=1&b=2"], ["text", u"h\xe9 \U0001f600\n\x7f\"\\"]])
        let v = vec![("link", "http://x/?a=1&b=2"), ("text", "hé 😀\n\u{7f}\"\\")];
        assert_eq!(
            dumps(&v),
            r#"[["link", "http://x/?a=1&b=2"], ["text", "h\u00e9 \ud83d\ude00\n\u007f\"\\"]]"#
        );
        assert_eq!(dumps(&Vec::<(String, String)>::new()), "[]");
        let mut m = serde_json::Map::new();
        m.insert("a".into(), "b".into());
        m.insert("c".into(), 1.into());
        assert_eq!(dumps(&m), r#"{"a": "b", "c": 1}"#);
    }
}
