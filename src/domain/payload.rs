//! What PostgreSQL `jsonb` can store. Valid JSON can still be refused by `jsonb`, or fail only later, in a
//! worker's insert: a NUL character, a lone UTF-16 surrogate escape, a number outside `numeric`'s range, or
//! nesting deeper than the server's stack allows. [`check`] finds these in one pass, without recursion, so the
//! API refuses such a payload with a 400 and the consumer dead-letters it on its first attempt.

/// Why `jsonb` cannot store a payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unstorable {
    #[error("the payload is nested deeper than {max} levels of arrays and objects")]
    TooDeep { max: usize },
    #[error("strings in a payload cannot contain the NUL character (\\u0000)")]
    Nul,
    #[error("a string in the payload holds a lone UTF-16 surrogate (\\u{unit:04x})")]
    LoneSurrogate { unit: u16 },
    #[error(
        "a number in the payload is out of PostgreSQL's numeric range (at most 131072 digits before the \
         decimal point and 16383 after it)"
    )]
    NumberOutOfRange,
}

/// What a message's body must keep to, over AMQP as through the API: its JSON text at most `max_bytes` long
/// (`max_payload_bytes`), its arrays and objects nested at most `max_depth` deep (`max_payload_depth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayloadLimits {
    pub max_bytes: usize,
    pub max_depth: usize,
}

/// `numeric` holds at most this many digits before the decimal point (its weight is an `int16` in base 10000).
const MAX_INTEGER_DIGITS: i64 = 131_072;
/// … and at most this many after it (`NUMERIC_DSCALE_MAX`).
const MAX_FRACTION_DIGITS: i64 = 16_383;
/// PostgreSQL refuses a longer exponent outright (`PG_INT32_MAX / 2`).
const MAX_EXPONENT: i64 = 1_073_741_823;

/// Checks JSON text (already known to be valid JSON) against what `jsonb` stores, with arrays and objects
/// nested at most `max_depth` deep.
pub fn check(json: &str, max_depth: usize) -> Result<(), Unstorable> {
    let bytes = json.as_bytes();
    let mut depth = 0_usize;
    let mut at = 0;
    while let Some(&byte) = bytes.get(at) {
        at = match byte {
            b'[' | b'{' => {
                depth += 1;
                if depth > max_depth {
                    return Err(Unstorable::TooDeep { max: max_depth });
                }
                at + 1
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                at + 1
            }
            b'"' => string_end(bytes, at + 1)?,
            b'-' | b'0'..=b'9' => {
                let end = at + bytes[at..].iter().position(|b| !is_number_byte(*b)).unwrap_or(bytes.len() - at);
                check_number(&bytes[at..end])?;
                end
            }
            _ => at + 1,
        };
    }
    Ok(())
}

fn is_number_byte(byte: u8) -> bool {
    matches!(byte, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
}

/// Checks the string whose content starts at `at`; returns where it ends (after the closing quote).
fn string_end(bytes: &[u8], mut at: usize) -> Result<usize, Unstorable> {
    loop {
        let rest = bytes.get(at..).unwrap_or_default();
        let Some(offset) = rest.iter().position(|b| *b == b'"' || *b == b'\\') else { return Ok(bytes.len()) };
        at += offset;
        if bytes[at] == b'"' {
            return Ok(at + 1);
        }
        if bytes.get(at + 1) != Some(&b'u') {
            at += 2;
            continue;
        }
        let unit = hex_unit(bytes, at + 2);
        at += 6;
        match unit {
            0 => return Err(Unstorable::Nul),
            0xD800..=0xDBFF => {
                let low = (bytes.get(at..at + 2) == Some(b"\\u")).then(|| hex_unit(bytes, at + 2));
                if !low.is_some_and(|low| (0xDC00..=0xDFFF).contains(&low)) {
                    return Err(Unstorable::LoneSurrogate { unit });
                }
                at += 6;
            }
            0xDC00..=0xDFFF => return Err(Unstorable::LoneSurrogate { unit }),
            _ => {}
        }
    }
}

/// The four hex digits at `at` (valid JSON always has them after `\u`).
fn hex_unit(bytes: &[u8], at: usize) -> u16 {
    let digits = bytes.get(at..at + 4).and_then(|d| std::str::from_utf8(d).ok());
    digits.and_then(|d| u16::from_str_radix(d, 16).ok()).unwrap_or_default()
}

/// The rules of PostgreSQL's `numeric_in`: the exponent moves the decimal point; the first significant digit
/// may sit at most 131071 places before it, and the digits after it (the display scale, never below zero)
/// may number at most 16383.
fn check_number(number: &[u8]) -> Result<(), Unstorable> {
    let number = number.strip_prefix(b"-").unwrap_or(number);
    let (mantissa, exponent) = match number.iter().position(|b| matches!(b, b'e' | b'E')) {
        Some(e) => (&number[..e], &number[e + 1..]),
        None => (number, &b""[..]),
    };
    let exponent = parse_exponent(exponent).ok_or(Unstorable::NumberOutOfRange)?;
    let (integer, fraction) = match mantissa.iter().position(|b| *b == b'.') {
        Some(dot) => (&mantissa[..dot], &mantissa[dot + 1..]),
        None => (mantissa, &b""[..]),
    };
    let count = |digits: &[u8]| i64::try_from(digits.len()).unwrap_or(i64::MAX);
    let scale = count(fraction).saturating_sub(exponent).max(0);
    if scale > MAX_FRACTION_DIGITS {
        return Err(Unstorable::NumberOutOfRange);
    }
    let first_significant = integer.iter().chain(fraction).position(|b| *b != b'0');
    // Zero has no weight, whatever its exponent.
    if let Some(first) = first_significant {
        // Where the first significant digit sits: 0 for the units, negative after the decimal point.
        let weight = count(integer) - 1 - i64::try_from(first).unwrap_or(i64::MAX) + exponent;
        if weight >= MAX_INTEGER_DIGITS {
            return Err(Unstorable::NumberOutOfRange);
        }
    }
    Ok(())
}

/// The exponent's value, or `None` beyond what PostgreSQL accepts.
fn parse_exponent(exponent: &[u8]) -> Option<i64> {
    let (negative, digits) = match exponent.first() {
        Some(b'-') => (true, &exponent[1..]),
        Some(b'+') => (false, &exponent[1..]),
        _ => (false, exponent),
    };
    let mut value = 0_i64;
    for digit in digits {
        value = value * 10 + i64::from(digit.checked_sub(b'0').filter(|d| *d < 10)?);
        if value > MAX_EXPONENT {
            return None;
        }
    }
    Some(if negative { -value } else { value })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn nested(depth: usize) -> String {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn nesting_is_limited() {
        assert_eq!(check(&nested(64), 64), Ok(()));
        assert_eq!(check(&nested(65), 64), Err(Unstorable::TooDeep { max: 64 }));
        assert_eq!(check(r#"{"a": [{"b": [1]}]}"#, 4), Ok(()));
        assert_eq!(check(r#"{"a": [{"b": [1]}]}"#, 3), Err(Unstorable::TooDeep { max: 3 }));
        // Brackets inside strings are text.
        assert_eq!(check(r#"["[[[[", "]]]]{{{{"]"#, 1), Ok(()));
        assert_eq!(check(&nested(1_000_000), 64), Err(Unstorable::TooDeep { max: 64 }));
    }

    #[test]
    fn nul_and_lone_surrogates_are_refused_and_pairs_pass() {
        assert_eq!(check(r#"{"a\u0000": 1}"#, 64), Err(Unstorable::Nul));
        assert_eq!(check(r#"["x\u0000y"]"#, 64), Err(Unstorable::Nul));
        assert_eq!(check(r#""\ud800""#, 64), Err(Unstorable::LoneSurrogate { unit: 0xd800 }));
        assert_eq!(check(r#""\uDBFF\n""#, 64), Err(Unstorable::LoneSurrogate { unit: 0xdbff }));
        assert_eq!(check(r#""\udc00""#, 64), Err(Unstorable::LoneSurrogate { unit: 0xdc00 }));
        assert_eq!(check(r#""\ud800\ud800""#, 64), Err(Unstorable::LoneSurrogate { unit: 0xd800 }));
        assert_eq!(check(r#""\ud83d\ude00 \\u0000 \"\u0001\"""#, 64), Ok(()));
    }

    #[test]
    fn numbers_follow_postgresql_numeric_limits() {
        // Each verdict was checked against PostgreSQL (`SELECT '<n>'::jsonb`).
        for fits in [
            "0",
            "-0",
            "1e400",
            "1e131071",
            "123.456e131069",
            "1e-16383",
            "1.5e-16382",
            "0e1000000",
            "1E+2",
            "12345678901234567890123",
            "1.0000000000000000001",
            "-0.000001e-16377",
        ] {
            assert_eq!(check(fits, 64), Ok(()), "{fits}");
        }
        for overflows in [
            "1e131072",
            "123.456e131070",
            "1e-16384",
            "1.5e-16383",
            "0.000e-99999",
            "1e1000000",
            "1e2147483648",
            "0e2000000000",
            "-1e131072",
        ] {
            assert_eq!(check(&format!("[{overflows}]"), 64), Err(Unstorable::NumberOutOfRange), "{overflows}");
        }
        let long_fraction = format!("0.{}", "1".repeat(16_384));
        assert_eq!(check(&long_fraction, 64), Err(Unstorable::NumberOutOfRange));
        let long_integer = "9".repeat(131_073);
        assert_eq!(check(&long_integer, 64), Err(Unstorable::NumberOutOfRange));
        assert_eq!(check(&"9".repeat(131_072), 64), Ok(()));
    }

    proptest! {
        #[test]
        fn checking_arbitrary_json_never_panics(value in any::<String>().prop_map(|s| serde_json::json!({ "s": s, "n": [1.5e300, -7] }))) {
            let _ = check(&value.to_string(), 64);
        }

        #[test]
        fn checking_arbitrary_text_never_panics(text in ".{0,200}") {
            let _ = check(&text, 8);
        }
    }
}
