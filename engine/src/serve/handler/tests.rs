//! Tests of `handler`.

use super::*;

#[test]
fn dates() {
    assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
    assert_eq!(iso8601(951_782_400), "2000-02-29T00:00:00.000Z");
    assert_eq!(iso8601(1_714_564_800), "2024-05-01T12:00:00.000Z");
}
