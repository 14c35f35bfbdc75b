//! Bounded text for error lines, shared by the user-space crates: a value the user
//! pasted, or a list of what exists, never makes an error line run to kilobytes.

use std::{fmt, string::String, string::ToString, vec::Vec};

/// At most `max` items joined by ", ", then "and N more": a list in an error line
/// stays short however many items there are.
pub fn list_some(items: impl IntoIterator<Item = impl fmt::Display>, max: usize) -> String {
    let mut shown = Vec::new();
    let mut more = 0usize;
    for item in items {
        if shown.len() < max {
            shown.push(item.to_string());
        } else {
            more += 1;
        }
    }
    if more > 0 {
        shown.push(std::format!("and {more} more"));
    }
    shown.join(", ")
}

/// `text` cut to at most `max` characters (with an ellipsis), so that a pasted blob
/// cannot make an error line of megabytes.
pub fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        String::from(text)
    } else {
        let mut cut: String = text.chars().take(max).collect();
        cut.push_str("...");
        cut
    }
}
