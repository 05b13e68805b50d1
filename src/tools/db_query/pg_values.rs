//! PostgreSQL values without a native JSON form, decoded from their binary
//! wire format (what sqlx receives for a prepared statement) into the JSON
//! a client expects: RFC 3339 date and time strings, ISO 8601 durations,
//! exact decimal strings, canonical UUIDs, addresses in CIDR notation.
//! Each decoder checks the length it reads; a malformed value is `None`
//! (shown as `unsupported_type`), never a panic.

/// Days from 1970-01-01 to PostgreSQL's epoch, 2000-01-01.
const PG_EPOCH_DAYS: i64 = 10_957;
const MICROS_PER_DAY: i64 = 86_400_000_000;

fn be_i16(bytes: &[u8], at: usize) -> Option<i16> {
    Some(i16::from_be_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn be_i32(bytes: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn be_i64(bytes: &[u8], at: usize) -> Option<i64> {
    Some(i64::from_be_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn date_text(days_since_1970: i64) -> Option<String> {
    let (year, month, day) = civil(days_since_1970);
    // RFC 3339 has four-digit years only; PostgreSQL allows 4713 BC-294276 AD.
    (1..=9999)
        .contains(&year)
        .then(|| format!("{year:04}-{month:02}-{day:02}"))
}

fn time_text(micros: i64) -> String {
    let (secs, frac) = (micros / 1_000_000, micros % 1_000_000);
    let base = format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
    if frac == 0 {
        base
    } else {
        format!("{base}.{frac:06}")
            .trim_end_matches('0')
            .to_string()
    }
}

/// `date`: `YYYY-MM-DD`; `infinity` and `-infinity` as PostgreSQL spells them.
pub fn date(bytes: &[u8]) -> Option<String> {
    if bytes.len() != 4 {
        return None;
    }
    match be_i32(bytes, 0)? {
        i32::MAX => Some("infinity".into()),
        i32::MIN => Some("-infinity".into()),
        days => date_text(i64::from(days) + PG_EPOCH_DAYS),
    }
}

/// `timestamp` (`utc` false: no offset) or `timestamptz` (`Z`).
pub fn timestamp(bytes: &[u8], utc: bool) -> Option<String> {
    if bytes.len() != 8 {
        return None;
    }
    let micros = match be_i64(bytes, 0)? {
        i64::MAX => return Some("infinity".into()),
        i64::MIN => return Some("-infinity".into()),
        m => m,
    };
    let days = micros.div_euclid(MICROS_PER_DAY);
    let of_day = micros.rem_euclid(MICROS_PER_DAY);
    let date = date_text(days + PG_EPOCH_DAYS)?;
    let zone = if utc { "Z" } else { "" };
    Some(format!("{date}T{}{zone}", time_text(of_day)))
}

/// `time`: `HH:MM:SS[.ffffff]`.
pub fn time(bytes: &[u8]) -> Option<String> {
    let micros = be_i64(bytes, 0).filter(|_| bytes.len() == 8)?;
    (0..=MICROS_PER_DAY)
        .contains(&micros)
        .then(|| time_text(micros))
}

/// `interval` as an ISO 8601 duration (`P1Y2M3DT4H5M6.5S`; negative parts
/// keep their sign, as PostgreSQL's `iso_8601` interval style writes them).
pub fn interval(bytes: &[u8]) -> Option<String> {
    if bytes.len() != 16 {
        return None;
    }
    let micros = be_i64(bytes, 0)?;
    let days = be_i32(bytes, 8)?;
    let months = be_i32(bytes, 12)?;
    let mut out = String::from("P");
    let (years, months) = (months / 12, months % 12);
    for (n, unit) in [(years, 'Y'), (months, 'M'), (days, 'D')] {
        if n != 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    if micros != 0 {
        out.push('T');
        let (hours, rest) = (micros / 3_600_000_000, micros % 3_600_000_000);
        let (minutes, rest) = (rest / 60_000_000, rest % 60_000_000);
        if hours != 0 {
            out.push_str(&format!("{hours}H"));
        }
        if minutes != 0 {
            out.push_str(&format!("{minutes}M"));
        }
        if rest != 0 {
            let sign = if rest < 0 { "-" } else { "" };
            let (s, f) = (rest.abs() / 1_000_000, rest.abs() % 1_000_000);
            let secs = if f == 0 {
                format!("{sign}{s}")
            } else {
                format!("{sign}{s}.{f:06}")
                    .trim_end_matches('0')
                    .to_string()
            };
            out.push_str(&format!("{secs}S"));
        }
    }
    if out == "P" {
        out.push_str("0D");
    }
    Some(out)
}

/// `uuid`: lower-case, hyphenated.
pub fn uuid(bytes: &[u8]) -> Option<String> {
    if bytes.len() != 16 {
        return None;
    }
    let h = hex::encode(bytes);
    Some(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

/// `inet` / `cidr`: the address, with `/bits` unless an `inet` covers one
/// host (as PostgreSQL prints them).
pub fn inet(bytes: &[u8], cidr: bool) -> Option<String> {
    let (&family, rest) = bytes.split_first()?;
    let (&bits, rest) = rest.split_first()?;
    let (_is_cidr, rest) = rest.split_first()?;
    let (&len, addr) = rest.split_first()?;
    if usize::from(len) != addr.len() {
        return None;
    }
    let (text, full) = match (family, addr.len()) {
        (2, 4) => (
            std::net::Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]).to_string(),
            32,
        ),
        (3, 16) => {
            let octets: [u8; 16] = addr.try_into().ok()?;
            (std::net::Ipv6Addr::from(octets).to_string(), 128)
        }
        _ => return None,
    };
    if bits > full {
        return None;
    }
    Some(if !cidr && bits == full {
        text
    } else {
        format!("{text}/{bits}")
    })
}

/// `numeric`: the exact decimal, as a string (JSON numbers would round it);
/// `NaN`, `Infinity`, `-Infinity` as PostgreSQL spells them.
pub fn numeric(bytes: &[u8]) -> Option<String> {
    let ndigits = usize::try_from(be_i16(bytes, 0)?).ok()?;
    let weight = i64::from(be_i16(bytes, 2)?);
    let sign = u16::from_be_bytes(bytes.get(4..6)?.try_into().ok()?);
    let dscale = usize::try_from(be_i16(bytes, 6)?).ok()?;
    if bytes.len() != 8 + 2 * ndigits {
        return None;
    }
    match sign {
        0x0000 | 0x4000 => {}
        0xC000 => return Some("NaN".into()),
        0xD000 => return Some("Infinity".into()),
        0xF000 => return Some("-Infinity".into()),
        _ => return None,
    }
    let mut digits = Vec::with_capacity(ndigits);
    for i in 0..ndigits {
        let d = be_i16(bytes, 8 + 2 * i)?;
        if !(0..10_000).contains(&d) {
            return None;
        }
        digits.push(d);
    }
    // Base-10000 digit k has weight `weight - k`.
    let digit = |w: i64| -> i16 {
        usize::try_from(weight - w)
            .ok()
            .and_then(|k| digits.get(k).copied())
            .unwrap_or(0)
    };
    let mut int_part = String::new();
    for w in (0..=weight.max(0)).rev() {
        if w > weight {
            continue;
        }
        let d = digit(w);
        if int_part.is_empty() {
            if d != 0 || w == 0 {
                int_part = d.to_string();
            }
        } else {
            int_part.push_str(&format!("{d:04}"));
        }
    }
    if int_part.is_empty() {
        int_part.push('0');
    }
    let mut frac = String::new();
    let mut w = -1;
    while frac.len() < dscale {
        frac.push_str(&format!("{:04}", digit(w)));
        w -= 1;
    }
    frac.truncate(dscale);
    let negative = sign == 0x4000 && (int_part != "0" || frac.chars().any(|c| c != '0'));
    let mut out = String::new();
    if negative {
        out.push('-');
    }
    out.push_str(&int_part);
    if dscale > 0 {
        out.push('.');
        out.push_str(&frac);
    }
    Some(out)
}

/// Types whose JSON form is a string these decoders write (a PostgreSQL
/// text-format value of one of them is passed through as it is).
pub const STRING_TYPES: &[&str] = &[
    "DATE",
    "TIMESTAMP",
    "TIMESTAMPTZ",
    "TIME",
    "INTERVAL",
    "UUID",
    "INET",
    "CIDR",
    "NUMERIC",
];

/// The binary form of one value of the scalar type named `kind` (sqlx's
/// upper-case names), as JSON; `None` for a type without a decoder here.
pub fn scalar(kind: &str, bytes: &[u8], is_enum: bool) -> Option<serde_json::Value> {
    use serde_json::Value;
    let text = |bytes: &[u8]| std::str::from_utf8(bytes).ok().map(String::from);
    Some(match kind {
        "BOOL" => match bytes {
            [0] => Value::Bool(false),
            [1] => Value::Bool(true),
            _ => return None,
        },
        "INT2" if bytes.len() == 2 => Value::from(be_i16(bytes, 0)?),
        "INT4" if bytes.len() == 4 => Value::from(be_i32(bytes, 0)?),
        "INT8" if bytes.len() == 8 => Value::from(be_i64(bytes, 0)?),
        "OID" if bytes.len() == 4 => Value::from(u32::from_be_bytes(bytes.try_into().ok()?)),
        "FLOAT4" => Value::from(f64::from(f32::from_be_bytes(bytes.try_into().ok()?))),
        "FLOAT8" => Value::from(f64::from_be_bytes(bytes.try_into().ok()?)),
        "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" | "CHAR" | "CITEXT" | "UNKNOWN" => {
            Value::String(text(bytes)?)
        }
        "BYTEA" => {
            use base64::Engine;
            serde_json::json!({ "base64": base64::engine::general_purpose::STANDARD.encode(bytes) })
        }
        "JSON" => serde_json::from_slice(bytes).ok()?,
        // jsonb's binary form is a version byte, then the text.
        "JSONB" => match bytes.split_first() {
            Some((1, rest)) => serde_json::from_slice(rest).ok()?,
            _ => return None,
        },
        "DATE" => Value::String(date(bytes)?),
        "TIMESTAMP" => Value::String(timestamp(bytes, false)?),
        "TIMESTAMPTZ" => Value::String(timestamp(bytes, true)?),
        "TIME" => Value::String(time(bytes)?),
        "INTERVAL" => Value::String(interval(bytes)?),
        "UUID" => Value::String(uuid(bytes)?),
        "INET" => Value::String(inet(bytes, false)?),
        "CIDR" => Value::String(inet(bytes, true)?),
        "NUMERIC" => Value::String(numeric(bytes)?),
        // An enum's binary form is its label.
        _ if is_enum => Value::String(text(bytes)?),
        _ => return None,
    })
}

/// PostgreSQL arrays have at most this many dimensions (`MAXDIM`).
const MAX_DIMENSIONS: usize = 6;

/// An array's binary form as nested JSON arrays (one level per dimension;
/// lower bounds other than 1 are not kept), each element decoded by
/// `element` and NULL as `null`. `None` when any element has no decoder.
pub fn array(
    bytes: &[u8],
    element: impl Fn(&[u8]) -> Option<serde_json::Value>,
) -> Option<serde_json::Value> {
    use serde_json::Value;
    let dimensions = usize::try_from(be_i32(bytes, 0)?).ok()?;
    if dimensions > MAX_DIMENSIONS {
        return None;
    }
    let mut at = 12;
    let mut lengths = Vec::with_capacity(dimensions);
    for _ in 0..dimensions {
        lengths.push(usize::try_from(be_i32(bytes, at)?).ok()?);
        at += 8;
    }
    if dimensions == 0 {
        return Some(Value::Array(Vec::new()));
    }
    // Every element takes at least its 4-byte length: a count beyond what
    // the bytes can hold is a malformed value, not an allocation to make.
    let count = lengths
        .iter()
        .try_fold(1usize, |total, &n| total.checked_mul(n))?;
    if count > bytes.len().saturating_sub(at) / 4 {
        return None;
    }
    let mut flat = Vec::with_capacity(count);
    for _ in 0..count {
        let len = be_i32(bytes, at)?;
        at += 4;
        if len < 0 {
            flat.push(Value::Null);
            continue;
        }
        let len = usize::try_from(len).ok()?;
        flat.push(element(bytes.get(at..at.checked_add(len)?)?)?);
        at += len;
    }
    if at != bytes.len() {
        return None;
    }
    // Innermost dimension first: group the flat elements into rows.
    let mut level = flat;
    for &n in lengths.iter().skip(1).rev() {
        let mut grouped = Vec::with_capacity(level.len() / n.max(1));
        let mut items = level.into_iter();
        loop {
            let row: Vec<Value> = items.by_ref().take(n).collect();
            if row.is_empty() {
                break;
            }
            grouped.push(Value::Array(row));
        }
        level = grouped;
    }
    Some(Value::Array(level))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An array's wire form: dimensions, then each element with its length.
    fn wire_array(lengths: &[i32], elements: &[Option<&[u8]>]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend((lengths.len() as i32).to_be_bytes());
        out.extend(0i32.to_be_bytes());
        out.extend(23u32.to_be_bytes());
        for n in lengths {
            out.extend(n.to_be_bytes());
            out.extend(1i32.to_be_bytes());
        }
        for e in elements {
            match e {
                Some(bytes) => {
                    out.extend((bytes.len() as i32).to_be_bytes());
                    out.extend(*bytes);
                }
                None => out.extend((-1i32).to_be_bytes()),
            }
        }
        out
    }

    #[test]
    fn arrays_nest_by_dimension_and_refuse_what_their_bytes_cannot_hold() {
        let int = |b: &[u8]| scalar("INT4", b, false);
        let one = 1i32.to_be_bytes();
        let two = 2i32.to_be_bytes();
        let flat = wire_array(&[3], &[Some(&one), None, Some(&two)]);
        assert_eq!(array(&flat, int), Some(serde_json::json!([1, null, 2])));
        let grid = wire_array(&[2, 2], &[Some(&one), Some(&two), Some(&two), Some(&one)]);
        assert_eq!(array(&grid, int), Some(serde_json::json!([[1, 2], [2, 1]])));
        assert_eq!(
            array(&wire_array(&[], &[]), int),
            Some(serde_json::json!([]))
        );
        // A claimed billion elements in a few bytes, a truncated element,
        // trailing bytes, too many dimensions: malformed, no allocation.
        assert_eq!(
            array(&wire_array(&[1_000_000_000], &[Some(&one)]), int),
            None
        );
        let mut cut = flat.clone();
        cut.truncate(flat.len() - 1);
        assert_eq!(array(&cut, int), None);
        let mut long = flat.clone();
        long.push(0);
        assert_eq!(array(&long, int), None);
        assert_eq!(array(&wire_array(&[1; 7], &[Some(&one)]), int), None);
        // An element the decoder does not know makes the whole array unknown.
        assert_eq!(array(&flat, |b| scalar("POINT", b, false)), None);
    }

    #[test]
    fn dates_and_times_from_their_wire_form() {
        assert_eq!(date(&0i32.to_be_bytes()).as_deref(), Some("2000-01-01"));
        assert_eq!(date(&(-1i32).to_be_bytes()).as_deref(), Some("1999-12-31"));
        assert_eq!(date(&9830i32.to_be_bytes()).as_deref(), Some("2026-11-30"));
        assert_eq!(date(&i32::MAX.to_be_bytes()).as_deref(), Some("infinity"));
        assert_eq!(date(&[0, 0]), None);
        let at = (9830i64 * MICROS_PER_DAY + 3_723_500_000).to_be_bytes();
        assert_eq!(
            timestamp(&at, true).as_deref(),
            Some("2026-11-30T01:02:03.5Z")
        );
        assert_eq!(
            timestamp(&at, false).as_deref(),
            Some("2026-11-30T01:02:03.5")
        );
        assert_eq!(
            timestamp(&(-1i64).to_be_bytes(), true).as_deref(),
            Some("1999-12-31T23:59:59.999999Z")
        );
        assert_eq!(
            time(&3_723_000_000i64.to_be_bytes()).as_deref(),
            Some("01:02:03")
        );
        let mut iv = Vec::new();
        iv.extend(3_723_500_000i64.to_be_bytes());
        iv.extend(3i32.to_be_bytes());
        iv.extend(14i32.to_be_bytes());
        assert_eq!(interval(&iv).as_deref(), Some("P1Y2M3DT1H2M3.5S"));
        assert_eq!(interval(&[0; 16]).as_deref(), Some("P0D"));
    }

    fn numeric_bytes(weight: i16, sign: u16, dscale: i16, digits: &[i16]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend((digits.len() as i16).to_be_bytes());
        b.extend(weight.to_be_bytes());
        b.extend(sign.to_be_bytes());
        b.extend(dscale.to_be_bytes());
        for d in digits {
            b.extend(d.to_be_bytes());
        }
        b
    }

    #[test]
    fn numerics_are_exact_decimal_strings() {
        // 12345.678 = [1, 2345, 6780], weight 1, dscale 3
        assert_eq!(
            numeric(&numeric_bytes(1, 0, 3, &[1, 2345, 6780])).as_deref(),
            Some("12345.678")
        );
        assert_eq!(
            numeric(&numeric_bytes(-1, 0x4000, 2, &[5000])).as_deref(),
            Some("-0.50")
        );
        // 0.0001 = [1] at weight -1
        assert_eq!(
            numeric(&numeric_bytes(-1, 0, 4, &[1])).as_deref(),
            Some("0.0001")
        );
        // 10000000000 = [1, 0, 0] weight 2, trailing zeros not stored
        assert_eq!(
            numeric(&numeric_bytes(2, 0, 0, &[1])).as_deref(),
            Some("100000000")
        );
        assert_eq!(numeric(&numeric_bytes(0, 0, 0, &[])).as_deref(), Some("0"));
        assert_eq!(
            numeric(&numeric_bytes(0, 0xC000, 0, &[])).as_deref(),
            Some("NaN")
        );
        assert_eq!(numeric(&numeric_bytes(0, 0, 0, &[10_000])), None);
        assert_eq!(numeric(&[0, 1, 0]), None);
    }

    #[test]
    fn uuids_and_addresses() {
        assert_eq!(
            uuid(&hex::decode("a0eebc999c0b4ef8bb6d6bb9bd380a11").expect("hex")).as_deref(),
            Some("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
        );
        assert_eq!(
            inet(&[2, 32, 0, 4, 10, 0, 0, 1], false).as_deref(),
            Some("10.0.0.1")
        );
        assert_eq!(
            inet(&[2, 24, 1, 4, 10, 0, 0, 0], true).as_deref(),
            Some("10.0.0.0/24")
        );
        assert_eq!(inet(&[2, 40, 0, 4, 10, 0, 0, 1], false), None);
        assert_eq!(inet(&[2, 32, 0, 5, 10, 0, 0, 1], false), None);
    }
}
