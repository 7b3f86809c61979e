//! What every command shares: the heading of the global options and the ports an
//! address without one means.

/// The heading of the options every command takes, apart from the command's own.
pub(crate) const GLOBAL: &str = "Connection and output (every command)";

/// The ports `--broker` and `--namesrv` mean when none is given.
pub(crate) const BROKER_PORT: u16 = 10911;
pub(crate) const NAMESRV_PORT: u16 = 9876;
pub(crate) const CONTROLLER_PORT: u16 = 9877;

/// `host`, `host:port`, `[v6]`, `[v6]:port` or a bare IPv6 address, with `port` added
/// when it has none.
pub(crate) fn with_default_port(address: &str, port: u16) -> String {
    let address = address.trim();
    if let Some(rest) = address.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((_, "")) => format!("{address}:{port}"),
            _ => address.to_string(),
        };
    }
    match address.matches(':').count() {
        0 => format!("{address}:{port}"),
        1 => address.to_string(),
        _ => format!("[{address}]:{port}"),
    }
}
