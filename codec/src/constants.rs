//! Protocol constants and name validation.

use crate::error::NameError;

/// The protocol version this crate speaks; sent in `Hello.protocol_version`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Default maximum length of one frame body, in bytes (4 MiB). A frame that
/// announces more is a protocol error.
pub const DEFAULT_MAX_FRAME_LENGTH: usize = 4 * 1024 * 1024;

/// Length of the big-endian length header in front of every frame.
pub const FRAME_HEADER_LEN: usize = 4;

/// Maximum length of an agent id or plugin name, in characters.
pub const MAX_AGENT_ID_LEN: usize = 128;

/// Reserved `Record.data_type` / `Task.data_type` values.
///
/// 1000..2000 belongs to the framework; plugins use [`PLUGIN_MIN`](crate::data_type::PLUGIN_MIN) and up.
pub mod data_type {
    use std::ops::Range;

    /// Agent heartbeat record: host and agent-process stats.
    pub const AGENT_HEARTBEAT: u32 = 1000;
    /// Plugin heartbeat record: one plugin's process stats and state.
    pub const PLUGIN_HEARTBEAT: u32 = 1001;
    /// Task asking the agent to shut down.
    pub const SHUTDOWN: u32 = 1060;
    /// Data types reserved for the framework.
    pub const FRAMEWORK_RANGE: Range<u32> = 1000..2000;
    /// The first data type available to plugins.
    pub const PLUGIN_MIN: u32 = 2000;

    /// Whether `data_type` is reserved for the framework.
    ///
    /// ```
    /// use herd_codec::data_type;
    /// assert!(data_type::is_reserved(data_type::AGENT_HEARTBEAT));
    /// assert!(!data_type::is_reserved(data_type::PLUGIN_MIN));
    /// ```
    pub fn is_reserved(data_type: u32) -> bool {
        FRAMEWORK_RANGE.contains(&data_type)
    }
}

/// Checks a name that becomes a NATS subject token or a record `source`:
/// agent ids and plugin names. 1 to [`MAX_AGENT_ID_LEN`] characters from
/// `[A-Za-z0-9_-]`.
///
/// ```
/// use herd_codec::{validate_name, NameError};
/// assert!(validate_name("web-01_eu").is_ok());
/// assert_eq!(
///     validate_name("web.01"),
///     Err(NameError::InvalidChar { character: '.', position: 3 })
/// );
/// ```
pub fn validate_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty {
            max: MAX_AGENT_ID_LEN,
        });
    }
    // Checked before the characters so a huge input is refused without a scan.
    if name.len() > MAX_AGENT_ID_LEN {
        return Err(NameError::TooLong {
            length: name.len(),
            max: MAX_AGENT_ID_LEN,
        });
    }
    if let Some((position, character)) = name
        .chars()
        .enumerate()
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(NameError::InvalidChar {
            character,
            position,
        });
    }
    Ok(())
}

/// Checks an agent id (see [`validate_name`] for the rules).
///
/// ```
/// assert!(herd_codec::validate_agent_id("host-42").is_ok());
/// let err = herd_codec::validate_agent_id("").unwrap_err();
/// assert_eq!(err.to_string(), "name is empty; it needs 1 to 128 characters from [A-Za-z0-9_-]");
/// ```
pub fn validate_agent_id(agent_id: &str) -> Result<(), NameError> {
    validate_name(agent_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_every_allowed_character_and_the_full_length() {
        let all = "ABCXYZabcxyz0189_-";
        assert_eq!(validate_agent_id(all), Ok(()));
        assert_eq!(validate_name(&"a".repeat(MAX_AGENT_ID_LEN)), Ok(()));
        assert_eq!(validate_name("-"), Ok(()));
    }

    #[test]
    fn refuses_empty() {
        let err = validate_agent_id("").unwrap_err();
        assert_eq!(err, NameError::Empty { max: 128 });
    }

    #[test]
    fn refuses_one_over_the_maximum_with_both_lengths() {
        let err = validate_name(&"a".repeat(MAX_AGENT_ID_LEN + 1)).unwrap_err();
        assert_eq!(
            err,
            NameError::TooLong {
                length: 129,
                max: 128
            }
        );
        assert_eq!(
            err.to_string(),
            "name is 129 bytes long; at most 128 are allowed"
        );
    }

    #[test]
    fn names_the_first_bad_character_and_its_position() {
        for (name, character, position) in [
            ("a.b", '.', 1),
            ("host 1", ' ', 4),
            ("*", '*', 0),
            ("ab>", '>', 2),
            ("é1", 'é', 0),
            ("x\u{0}", '\u{0}', 1),
            ("a/b.c", '/', 1),
        ] {
            assert_eq!(
                validate_name(name),
                Err(NameError::InvalidChar {
                    character,
                    position
                }),
                "{name:?}"
            );
        }
        assert_eq!(
            validate_name("web.01").unwrap_err().to_string(),
            "invalid character '.' at position 3; only [A-Za-z0-9_-] is allowed"
        );
    }

    #[test]
    fn reserved_range_covers_the_framework_data_types_only() {
        for reserved in [
            data_type::AGENT_HEARTBEAT,
            data_type::PLUGIN_HEARTBEAT,
            data_type::SHUTDOWN,
            1999,
        ] {
            assert!(data_type::is_reserved(reserved), "{reserved}");
        }
        for free in [0, 999, data_type::PLUGIN_MIN, u32::MAX] {
            assert!(!data_type::is_reserved(free), "{free}");
        }
    }
}
