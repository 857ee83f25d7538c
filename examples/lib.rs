//! Examples of using herd as a library and as a platform: embedding the hub
//! framework with an actor of your own, subscribing to records on NATS, sending
//! tasks and configuration from a program, and a plugin written in Python.
//!
//! Each example is a Cargo example of this package (`cargo run -p
//! herd-examples --example NAME -- --help`); this library holds what they
//! share, such as turning an [`Envelope`] into one readable line.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use herd_codec::proto::Envelope;

/// Body bytes shown before a body is summarised by its length.
const BODY_PREVIEW: usize = 64;

/// One human-readable line for a record published by the hub, fields in key
/// order:
///
/// ```
/// use herd_codec::proto::{Envelope, Record};
///
/// let envelope = Envelope {
///     agent_id: "web-1".into(),
///     received_at_ms: 0,
///     seq: 7,
///     index: 2,
///     record: Some(Record {
///         data_type: 2005,
///         source: "sysmetrics".into(),
///         fields: [("load1".to_string(), "0.42".to_string())].into(),
///         ..Default::default()
///     }),
///     ..Default::default()
/// };
/// assert_eq!(
///     herd_examples::describe_envelope(&envelope),
///     "1970-01-01T00:00:00.000Z web-1 #7.2 type=2005 source=sysmetrics load1=0.42"
/// );
/// ```
pub fn describe_envelope(envelope: &Envelope) -> String {
    let received = SystemTime::UNIX_EPOCH
        + Duration::from_millis(u64::try_from(envelope.received_at_ms).unwrap_or(0));
    let mut line = format!(
        "{} {} #{}.{}",
        humantime::format_rfc3339_millis(received),
        envelope.agent_id,
        envelope.seq,
        envelope.index
    );
    let Some(record) = &envelope.record else {
        line.push_str(" (no record)");
        return line;
    };
    // Writing to a String cannot fail.
    let _ = write!(line, " type={} source={}", record.data_type, record.source);
    let mut fields: Vec<_> = record.fields.iter().collect();
    fields.sort();
    for (key, value) in fields {
        let _ = write!(line, " {key}={}", quote_if_needed(value));
    }
    if !record.body.is_empty() {
        match std::str::from_utf8(&record.body) {
            Ok(text) if text.len() <= BODY_PREVIEW => {
                let _ = write!(line, " body={}", quote_if_needed(text));
            }
            _ => {
                let _ = write!(line, " body=<{} bytes>", record.body.len());
            }
        }
    }
    line
}

/// Keeps `key=value` output splittable on spaces: values that are empty or
/// contain spaces, quotes or control characters are shown Rust-quoted.
fn quote_if_needed(value: &str) -> String {
    let plain = !value.is_empty()
        && !value
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '"');
    if plain {
        value.to_owned()
    } else {
        format!("{value:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_codec::proto::Record;

    #[test]
    fn quotes_values_that_would_break_the_line() {
        let envelope = Envelope {
            agent_id: "a".into(),
            record: Some(Record {
                data_type: 2100,
                source: "logtail".into(),
                fields: [
                    ("line".to_string(), "two words".to_string()),
                    ("empty".to_string(), String::new()),
                ]
                .into(),
                body: vec![0xff; 3].into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let line = describe_envelope(&envelope);
        assert!(
            line.ends_with(r#"empty="" line="two words" body=<3 bytes>"#),
            "{line}"
        );
    }

    #[test]
    fn says_when_the_record_is_missing() {
        assert!(describe_envelope(&Envelope::default()).ends_with("(no record)"));
    }
}
