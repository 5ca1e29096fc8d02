//! Kubernetes quantities compared by value: the API server stores `cpu: "0.5"` as `500m`
//! and `memory: 1024Mi` as `1Gi`, so two spellings of one size must compare equal (a pod's
//! resources, a claim's storage request that may only grow).

/// The value of a quantity in nano-units (rounded up, as Kubernetes rounds values below
/// 1n), or `None` if it is not a quantity or out of range.
pub fn nanos(quantity: &str) -> Option<i128> {
    let (negative, rest) = match quantity.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, quantity.strip_prefix('+').unwrap_or(quantity)),
    };
    let number_end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(number_end);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
        return None;
    }
    let (exp10, exp2) = exponents(suffix)?;
    let digits: i128 = format!("{whole}{fraction}").parse().ok()?;
    // digits × 10^(exp10 + 9 − fraction digits) × 2^exp2 nano-units.
    let scale = exp10 + 9 - fraction.len() as i32;
    let scaled = digits.checked_mul(2i128.checked_pow(exp2)?)?;
    let value = if scale >= 0 {
        scaled.checked_mul(10i128.checked_pow(scale as u32)?)?
    } else {
        let divisor = 10i128.checked_pow(scale.unsigned_abs())?;
        (scaled + divisor - 1) / divisor
    };
    Some(if negative { -value } else { value })
}

/// The powers of ten and two a suffix stands for.
fn exponents(suffix: &str) -> Option<(i32, u32)> {
    let binary = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    if let Some(i) = binary.iter().position(|s| *s == suffix) {
        return Some((0, 10 * (i as u32 + 1)));
    }
    let decimal = [
        ("n", -9),
        ("u", -6),
        ("m", -3),
        ("", 0),
        ("k", 3),
        ("M", 6),
        ("G", 9),
        ("T", 12),
        ("P", 15),
        ("E", 18),
    ];
    if let Some((_, e)) = decimal.iter().find(|(s, _)| *s == suffix) {
        return Some((*e, 0));
    }
    let exponent = suffix.strip_prefix(['e', 'E'])?;
    let e: i32 = exponent.parse().ok()?;
    (-30..=30).contains(&e).then_some((e, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_of_one_value_are_equal() {
        for (a, b) in [
            ("0.5", "500m"),
            ("1024Mi", "1Gi"),
            ("1", "1000m"),
            ("1.5Gi", "1536Mi"),
            ("1e3", "1k"),
            ("2E-3", "2m"),
            ("0.1", "100m"),
            ("+2", "2"),
        ] {
            assert_eq!(nanos(a), nanos(b), "{a} vs {b}");
            assert!(nanos(a).is_some(), "{a}");
        }
        assert_ne!(nanos("0.75"), nanos("500m"));
        assert_eq!(nanos("1n"), Some(1));
        assert_eq!(nanos("0.1n"), Some(1), "rounded up");
        assert_eq!(nanos("-1m"), Some(-1_000_000));
        assert_eq!(nanos("8Ei"), Some(8 * (1i128 << 60) * 1_000_000_000));
        for bad in ["", "abc", "1.2.3", "1Xi", ".", "1e99", "m"] {
            assert_eq!(nanos(bad), None, "{bad}");
        }
    }
}
