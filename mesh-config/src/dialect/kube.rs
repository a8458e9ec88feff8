//! Placeholder while the kube dialect is written; owns no kinds yet.

use super::{Document, ParseResult};

pub fn parse(_doc: &Document<'_>) -> ParseResult {
    None
}
