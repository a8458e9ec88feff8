//! Reading Prometheus text expositions (a sidecar's `/stats/prometheus`, mastd's
//! `/metrics`) the way the tests need: a metric's samples summed over the label sets that
//! match, so a test can ask "how many requests did the destination report" without caring
//! about the other labels.

/// Sum of `metric`'s samples whose labels include every `want` pair (`name`, `value`).
pub fn sum_samples(exposition: &str, metric: &str, want: &[(&str, &str)]) -> f64 {
    let prefix = format!("{metric}{{");
    exposition
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .filter(|l| {
            want.iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_only_the_matching_label_sets_of_the_metric() {
        let text = "\
# TYPE istio_requests_total counter
istio_requests_total{reporter=\"source\",response_code=\"200\"} 3
istio_requests_total{reporter=\"destination\",response_code=\"200\"} 4
istio_requests_total{reporter=\"destination\",response_code=\"503\"} 1
istio_requests_total_other{reporter=\"destination\"} 100
";
        let dest = [("reporter", "destination")];
        assert_eq!(sum_samples(text, "istio_requests_total", &dest), 5.0);
        assert_eq!(sum_samples(text, "istio_requests_total", &[]), 8.0);
        let ok = [("reporter", "destination"), ("response_code", "200")];
        assert_eq!(sum_samples(text, "istio_requests_total", &ok), 4.0);
        assert_eq!(sum_samples(text, "missing", &[]), 0.0);
    }
}
