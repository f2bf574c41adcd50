//! Logging from inside a plugin: lines go to the host's log, tagged with the plugin's name.
//!
//! Outside WebAssembly (native unit tests of plugin logic) there is no host, so lines go to
//! standard error instead.

use crate::bindings::data_filter::triad::plugin::host::{self, Level};

fn write(level: Level, message: &str) {
    if cfg!(target_arch = "wasm32") {
        host::log(level, message);
    } else {
        eprintln!("[{level:?}] {message}");
    }
}

/// A detail useful when debugging the plugin.
pub fn debug(message: &str) {
    write(Level::Debug, message);
}

/// Normal progress information.
pub fn info(message: &str) {
    write(Level::Info, message);
}

/// Something the user should look at.
pub fn warn(message: &str) {
    write(Level::Warn, message);
}

/// A failure; the host attaches the last error line to a trap it reports.
pub fn error(message: &str) {
    write(Level::Error, message);
}
