//! What the export macros call: config parsing, the panic hook, and the per-record loops that
//! turn a trait method on one record into a batched call with record indices on errors.

use std::cell::RefCell;
use std::sync::Once;

use crate::{
    DataFilter, Decision, Episode, Feature, Loss, LossBatch, LossOutput, Metric, MetricRecord, NamedValue, Plugin,
    PluginError, Reward, Sample,
};

fn error(message: impl Into<String>, record: Option<usize>) -> PluginError {
    PluginError { message: message.into(), record: record.map(|i| i as u32) }
}

/// Plugins build with `panic = "abort"`, so a panic becomes a trap the host sees without its
/// message. The hook sends the message through `host.log` first; the host attaches the last
/// error-level line to the trap it reports.
fn install_panic_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            crate::log::error(&format!("plugin panicked: {info}"));
        }));
    });
}

/// Parse the JSON config (empty or `null` means defaults) and run `init`.
pub fn parse_config<T: Plugin>(config: &str) -> Result<T, PluginError> {
    let trimmed = config.trim();
    let mut plugin: T = if trimmed.is_empty() || trimmed == "null" {
        T::default()
    } else {
        serde_json::from_str(trimmed).map_err(|e| error(format!("invalid config {trimmed}: {e}"), None))?
    };
    plugin.init().map_err(|e| error(format!("invalid config: {e}"), None))?;
    Ok(plugin)
}

pub fn configure<T: Plugin>(slot: &RefCell<Option<T>>, config: &str) -> Result<(), PluginError> {
    install_panic_hook();
    *slot.borrow_mut() = Some(parse_config(config)?);
    Ok(())
}

pub fn with_plugin<T, R>(
    slot: &RefCell<Option<T>>,
    call: impl FnOnce(&mut T) -> Result<R, PluginError>,
) -> Result<R, PluginError> {
    install_panic_hook();
    let mut slot = slot.borrow_mut();
    let plugin =
        slot.as_mut().ok_or_else(|| error("called before configure: the host must configure a plugin first", None))?;
    call(plugin)
}

pub fn filter<T: DataFilter>(plugin: &mut T, samples: &[Sample]) -> Result<Vec<Decision>, PluginError> {
    samples.iter().enumerate().map(|(i, sample)| plugin.filter(sample).map_err(|e| error(e, Some(i)))).collect()
}

pub fn score<T: Reward>(plugin: &mut T, episodes: &[Episode]) -> Result<Vec<f64>, PluginError> {
    episodes.iter().enumerate().map(|(i, episode)| plugin.score(episode).map_err(|e| error(e, Some(i)))).collect()
}

pub fn features<T: Loss>(slot: &RefCell<Option<T>>) -> Vec<Feature> {
    slot.borrow().as_ref().map(Loss::features).unwrap_or_default()
}

pub fn compute<T: Loss>(plugin: &mut T, batch: &LossBatch) -> Result<LossOutput, PluginError> {
    plugin.compute(batch).map_err(|e| error(e, None))
}

pub fn statistics<T: Metric>(plugin: &mut T, records: &[MetricRecord]) -> Result<Vec<f64>, PluginError> {
    let mut totals: Vec<f64> = Vec::new();
    for (i, record) in records.iter().enumerate() {
        let stats = plugin.statistics(record).map_err(|e| error(e, Some(i)))?;
        if i == 0 {
            totals = stats;
        } else if stats.len() != totals.len() {
            return Err(error(
                format!("statistics has {} entries, earlier records had {}", stats.len(), totals.len()),
                Some(i),
            ));
        } else {
            totals.iter_mut().zip(&stats).for_each(|(t, s)| *t += s);
        }
    }
    Ok(totals)
}

pub fn finish<T: Metric>(plugin: &mut T, totals: &[f64]) -> Result<Vec<NamedValue>, PluginError> {
    let values = plugin.finish(totals).map_err(|e| error(e, None))?;
    Ok(values.into_iter().map(|(name, value)| NamedValue { name, value }).collect())
}
