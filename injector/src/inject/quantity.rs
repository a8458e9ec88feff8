//! Kubernetes resource quantities in their canonical form.
//!
//! The API server stores `1000m` as `1` and `0.5` as `500m`; Istio's injector writes quantities
//! through the same Go type, so its output (and its goldens) carry canonical text. Writing the
//! canonical form ourselves keeps injected pods byte-stable across re-injection and lets users
//! diff `kube-inject` output against Istio's.

/// The canonical text of `text`, or `None` if it is not a quantity.
pub fn canonical(text: &str) -> Option<String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    if number.is_empty() || number.starts_with('-') {
        return None;
    }
    let number = number.trim_start_matches('+');
    let binary = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    let decimal = ["n", "u", "m", "", "k", "M", "G", "T", "P", "E"];
    let (int, frac) = match number.split_once('.') {
        Some((i, f)) => (i, f),
        None => (number, ""),
    };
    if !int.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if binary.contains(&suffix) {
        // Binary suffixes are kept as written unless a fraction forces a rescale; Istio's
        // inputs use integers here.
        if !frac.is_empty() {
            return None;
        }
        return Some(format!("{}{suffix}", strip_zeros(int)));
    }
    let exponent = match suffix {
        "n" => -9,
        "u" => -6,
        "m" => -3,
        "" => 0,
        "k" => 3,
        "M" => 6,
        "G" => 9,
        "T" => 12,
        "P" => 15,
        "E" => 18,
        _ => return None,
    };
    debug_assert!(decimal.contains(&suffix));
    // value = digits × 10^(exponent − frac.len())
    let digits = format!("{int}{frac}");
    let mut digits = strip_zeros(&digits).to_string();
    let mut exp = exponent - frac.len() as i32;
    if digits == "0" {
        return Some("0".into());
    }
    while digits.ends_with('0') {
        digits.pop();
        exp += 1;
    }
    // Choose the largest decimal suffix (a multiple of 3) that keeps the mantissa an integer.
    let mut suffix_exp = exp.div_euclid(3) * 3;
    suffix_exp = suffix_exp.clamp(-9, 18);
    let zeros = exp - suffix_exp;
    if zeros < 0 {
        return None; // finer than nano: not representable
    }
    let mantissa = format!("{digits}{}", "0".repeat(zeros as usize));
    let suffix = match suffix_exp {
        -9 => "n",
        -6 => "u",
        -3 => "m",
        0 => "",
        3 => "k",
        6 => "M",
        9 => "G",
        12 => "T",
        15 => "P",
        _ => "E",
    };
    Some(format!("{mantissa}{suffix}"))
}

fn strip_zeros(s: &str) -> &str {
    let t = s.trim_start_matches('0');
    if t.is_empty() { "0" } else { t }
}

/// Millicores of a CPU quantity, rounded up (for the proxy's worker count).
pub fn millicores(text: &str) -> Option<u64> {
    let c = canonical(text)?;
    if let Some(m) = c.strip_suffix('m') {
        return m.parse().ok();
    }
    if let Some(k) = c.strip_suffix('k') {
        return k.parse::<u64>().ok().map(|n| n * 1_000_000);
    }
    if c.ends_with(['n', 'u']) {
        return Some(1);
    }
    c.parse::<u64>().ok().map(|n| n * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_forms() {
        for (input, want) in [
            ("1000m", "1"),
            ("4000m", "4"),
            ("100m", "100m"),
            ("0.5", "500m"),
            ("2", "2"),
            ("1Gi", "1Gi"),
            ("128Mi", "128Mi"),
            ("1500m", "1500m"),
            ("1.5", "1500m"),
            ("2000", "2k"),
            ("0", "0"),
        ] {
            assert_eq!(canonical(input).as_deref(), Some(want), "{input}");
        }
        for bad in ["", "abc", "-1", "1Xi", "1.5.5"] {
            assert_eq!(canonical(bad), None, "{bad}");
        }
        assert_eq!(millicores("4000m"), Some(4000));
        assert_eq!(millicores("2"), Some(2000));
    }
}
