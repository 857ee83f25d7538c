//! Turning a script's stdout into record fields.

use std::collections::BTreeMap;

use serde_json::Value;

/// Fields parsed from a script's stdout, and what could not be parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parsed {
    /// The fields found.
    pub fields: BTreeMap<String, String>,
    /// Why the output (or part of it) was not understood.
    pub problem: Option<String>,
}

/// Parses stdout as one flat JSON object when it starts with `{`, else as
/// `key=value` lines.
///
/// JSON: string values are taken as they are, `null` becomes an empty
/// string, numbers and booleans their JSON text, and nested arrays or
/// objects their compact JSON text. Lines: blank lines and lines starting
/// with `#` are skipped, key and value are trimmed, the first `=` splits
/// them, and lines without one are counted in the problem.
///
/// ```
/// use herd_plugin_exec::parse_output;
///
/// let lines = parse_output(b"queue=12\n# comment\nstate = ok\n");
/// assert_eq!(lines.fields["queue"], "12");
/// assert_eq!(lines.fields["state"], "ok");
/// assert_eq!(lines.problem, None);
///
/// let json = parse_output(br#"{"queue": 12, "up": true, "name": "db"}"#);
/// assert_eq!(json.fields["queue"], "12");
/// assert_eq!(json.fields["up"], "true");
/// assert_eq!(json.fields["name"], "db");
/// ```
pub fn parse_output(stdout: &[u8]) -> Parsed {
    let text = String::from_utf8_lossy(stdout);
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') {
        parse_json(trimmed)
    } else {
        parse_lines(&text)
    }
}

fn parse_json(text: &str) -> Parsed {
    match serde_json::from_str::<serde_json::Map<String, Value>>(text) {
        Ok(object) => Parsed {
            fields: object
                .into_iter()
                .map(|(key, value)| {
                    let value = match value {
                        Value::String(text) => text,
                        Value::Null => String::new(),
                        other => other.to_string(),
                    };
                    (key, value)
                })
                .collect(),
            problem: None,
        },
        Err(error) => Parsed {
            fields: BTreeMap::new(),
            problem: Some(format!(
                "stdout starts with `{{` but is not one JSON object: {error}"
            )),
        },
    }
}

fn parse_lines(text: &str) -> Parsed {
    let mut parsed = Parsed::default();
    let mut ignored = 0_usize;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => {
                parsed
                    .fields
                    .insert(key.trim().to_owned(), value.trim().to_owned());
            }
            _ => ignored += 1,
        }
    }
    if ignored > 0 {
        parsed.problem = Some(format!(
            "{ignored} line(s) of stdout are not `key=value` and were ignored"
        ));
    }
    parsed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_without_a_key_are_reported() {
        let parsed = parse_output(b"a=1\nnoise\n=no key\nb=x=y\n");
        assert_eq!(parsed.fields.len(), 2);
        assert_eq!(parsed.fields["b"], "x=y");
        assert_eq!(
            parsed.problem.as_deref(),
            Some("2 line(s) of stdout are not `key=value` and were ignored")
        );
    }

    #[test]
    fn json_values_of_every_kind_become_text() {
        let parsed = parse_output(br#" {"n": null, "f": 1.5, "a": [1, 2], "o": {"k": "v"}}"#);
        assert_eq!(parsed.fields["n"], "");
        assert_eq!(parsed.fields["f"], "1.5");
        assert_eq!(parsed.fields["a"], "[1,2]");
        assert_eq!(parsed.fields["o"], r#"{"k":"v"}"#);
        assert_eq!(parsed.problem, None);
    }

    #[test]
    fn broken_json_is_a_problem_not_a_panic() {
        let parsed = parse_output(b"{\"a\": ");
        assert!(parsed.fields.is_empty());
        let problem = parsed.problem.unwrap_or_default();
        assert!(problem.contains("not one JSON object"), "{problem}");
    }
}
