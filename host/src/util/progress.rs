//! Progress bars for the long loops (training steps, PPO iterations, prompts generated), all in
//! one style: `stage [=====>    ] 120/400 3.2/s eta 1m loss 2.41`.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar for `len` items labelled `prefix`, starting at `position` (non-zero after a resume).
pub fn bar(prefix: &str, len: u64, position: u64) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_position(position);
    let style = ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {rate} eta {eta} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .with_key("rate", |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{}", rate(state.per_sec()));
        })
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(prefix.to_string());
    bar
}

/// Items per second with as many digits as say something: `2265/s`, `3.2/s`, `0.41/s`.
pub fn rate(per_second: f64) -> String {
    match per_second {
        r if !r.is_finite() => "-/s".to_string(),
        r if r >= 100.0 => format!("{r:.0}/s"),
        r if r >= 1.0 => format!("{r:.1}/s"),
        r => format!("{r:.2}/s"),
    }
}

#[cfg(test)]
mod tests {
    use super::rate;

    #[test]
    fn rates_carry_no_more_digits_than_they_need() {
        assert_eq!(rate(2264.8639), "2265/s");
        assert_eq!(rate(3.2149), "3.2/s");
        assert_eq!(rate(0.4128), "0.41/s");
        assert_eq!(rate(f64::NAN), "-/s");
    }
}
