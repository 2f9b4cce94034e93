//! The pure domain: value types, commands, events and the rules between them. No I/O here.

pub mod audit;
pub mod message_id;
pub mod payload;
pub mod tenant;

/// Control characters, line and paragraph separators, zero-width characters, and the marks that override or
/// isolate the text's direction: text with them reads otherwise than it is (in a log line, a listing, an
/// auditor's report), or two different names read the same.
pub fn garbles_text(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}
