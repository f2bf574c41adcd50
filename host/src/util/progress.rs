//! Progress bars for the long loops (training steps, PPO iterations, prompts generated), all in
//! one style: `stage [=====>    ] 120/400 3.2/s eta 1m loss 2.41`.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar for `len` items labelled `prefix`, starting at `position` (non-zero after a resume).
pub fn bar(prefix: &str, len: u64, position: u64) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_position(position);
    let style = ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {per_sec} eta {eta} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(prefix.to_string());
    bar
}
