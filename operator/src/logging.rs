//! Log setup: structured logs on stderr, text or JSON, filter from `--log-level` or
//! `HAGW_LOG`. The filter can be changed while the process runs ([`set_filter`], served as
//! `PUT /log-level` by the agent's HTTP endpoint).

use std::sync::OnceLock;

use clap::{Args, ValueEnum};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, fmt, reload};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct LogArgs {
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `hagw_core=debug`.
    #[arg(long, global = true, env = "HAGW_LOG", default_value = "warn")]
    pub log_level: String,
    /// Log line format.
    #[arg(long, global = true, env = "HAGW_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// The live filter, once [`init`] has run.
static FILTER: OnceLock<(reload::Handle<EnvFilter, Registry>, std::sync::Mutex<String>)> =
    OnceLock::new();

pub fn init(args: &LogArgs) {
    let (filter, text) = match EnvFilter::try_new(&args.log_level) {
        Ok(filter) => (filter, args.log_level.clone()),
        Err(e) => {
            eprintln!("hagw: invalid --log-level {:?} ({e}); using `warn`", args.log_level);
            (EnvFilter::new("warn"), "warn".to_string())
        }
    };
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let layer = fmt::layer().with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => registry.with(layer).init(),
        LogFormat::Json => registry.with(layer.json()).init(),
    }
    let _ = FILTER.set((handle, std::sync::Mutex::new(text)));
}

/// The filter in force, as it was given.
pub fn filter() -> Option<String> {
    FILTER.get().map(|(_, text)| text.lock().unwrap_or_else(|e| e.into_inner()).clone())
}

/// Replaces the filter (EnvFilter syntax). Fails on a filter that does not parse or when
/// logging was not set up by [`init`].
pub fn set_filter(directives: &str) -> Result<(), String> {
    let (handle, text) = FILTER.get().ok_or("logging is not initialised")?;
    let filter = EnvFilter::try_new(directives).map_err(|e| e.to_string())?;
    handle.reload(filter).map_err(|e| e.to_string())?;
    *text.lock().unwrap_or_else(|e| e.into_inner()) = directives.to_string();
    Ok(())
}
