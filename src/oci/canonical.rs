//! Canonical JSON: object keys sorted by their bytes, no insignificant
//! whitespace, strings escaped the way serde_json escapes them. Every JSON
//! document imgc writes goes through here exactly once, and the bytes written
//! are the bytes pushed (DETERMINISM.md rules 11 and 12).

use serde::Serialize;
use serde_json::Value;

/// Serializes `value` to canonical JSON bytes.
///
/// ```
/// let v = serde_json::json!({"b": 1, "a": [true, null, "x"]});
/// assert_eq!(imgc::oci::to_canonical_json(&v).unwrap(), br#"{"a":[true,null,"x"],"b":1}"#);
/// ```
pub fn to_canonical_json<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    let value = serde_json::to_value(value)?;
    let mut out = Vec::with_capacity(512);
    write_value(&value, &mut out)?;
    Ok(out)
}

fn write_value(value: &Value, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    match value {
        Value::Object(map) => {
            // Sort explicitly: never rely on the map's iteration order, which a
            // dependency enabling serde_json's `preserve_order` would change.
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            out.push(b'{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, key)?;
                out.push(b':');
                write_value(&map[key], out)?;
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(item, out)?;
            }
            out.push(b']');
        }
        other => serde_json::to_writer(&mut *out, other)?,
    }
    Ok(())
}
