//! Devices on other machines: `blip3 worker` processes (Burn remote servers) named in a stage
//! config's `[devices] remote = [...]`, and the environment variables cluster launchers set.
//!
//! A remote device is a Burn `Device` whose operations run on the worker's backend; the trainer
//! keeps the autodiff graph, the optimizer and the data loader. Burn's `multi` strategy trains
//! over local and remote devices alike: each device receives its slice of every global batch and
//! the replicas' gradients are gathered and summed on the main device (the loss is already
//! divided by the device count, so the sum is the mean), where the global-norm clipping and the
//! optimizer step happen. See docs/scaling.md for what Burn 0.22 does and does not offer here.
//!
//! Addresses:
//! * `ws://HOST:PORT` — WebSocket (trusted networks only: the token travels in clear text);
//! * `iroh://ENDPOINT_ID@HOST:PORT` — Iroh (QUIC, encrypted, the server authenticated by its
//!   key), dialled directly without relays;
//! * either followed by `#INDEX` to pick one of a worker's devices (default 0).
//!
//! Every worker expects the token in the environment variable named by
//! `devices.remote_token_env` (default [`DEFAULT_TOKEN_ENV`]).

use std::sync::mpsc;
use std::time::{Duration, Instant};

use burn::prelude::*;
use burn::remote::{IrohHost, IrohRelays, RemoteHost};

use crate::error::TrainError;

/// The environment variable holding the workers' shared token by default.
pub const DEFAULT_TOKEN_ENV: &str = "BLIP3_WORKER_TOKEN";

/// Where a worker is and which of its devices to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteAddress {
    /// The transport and address.
    pub endpoint: Endpoint,
    /// The worker's device index.
    pub device_index: u32,
}

/// A worker's transport and address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `ws://host:port`.
    WebSocket(String),
    /// `iroh://id@host:port`: the server's endpoint id (its public key) and a socket address.
    Iroh {
        /// The server's endpoint id, as `blip3 worker` prints it.
        id: String,
        /// `host:port`.
        address: String,
    },
}

impl RemoteAddress {
    /// Parses `ws://HOST:PORT[#INDEX]` or `iroh://ID@HOST:PORT[#INDEX]`.
    pub fn parse(text: &str) -> Result<RemoteAddress, String> {
        let (rest, index) = match text.rsplit_once('#') {
            Some((rest, index)) => (
                rest,
                index
                    .parse::<u32>()
                    .map_err(|_| format!("{text:?}: the device index after # is not a number"))?,
            ),
            None => (text, 0),
        };
        let endpoint = if let Some(addr) = rest.strip_prefix("ws://") {
            check_host_port(text, addr)?;
            Endpoint::WebSocket(rest.to_string())
        } else if let Some(spec) = rest.strip_prefix("iroh://") {
            let Some((id, address)) = spec.split_once('@') else {
                return Err(format!(
                    "{text:?}: an Iroh address is iroh://ENDPOINT_ID@HOST:PORT (the id `blip3 \
                     worker` prints)"
                ));
            };
            check_host_port(text, address)?;
            Endpoint::Iroh {
                id: id.to_string(),
                address: address.to_string(),
            }
        } else {
            return Err(format!(
                "{text:?}: a remote device is ws://HOST:PORT or iroh://ENDPOINT_ID@HOST:PORT, \
                 optionally with #DEVICE_INDEX"
            ));
        };
        Ok(RemoteAddress {
            endpoint,
            device_index: index,
        })
    }

    /// Connects the device with `token` (an empty token sends none). Errors name the address.
    pub fn connect(&self, token: &str) -> Result<Device, TrainError> {
        let named = |msg: String| TrainError::Config(format!("remote device {self}: {msg}"));
        let mut host = match &self.endpoint {
            Endpoint::WebSocket(url) => RemoteHost::websocket(url),
            Endpoint::Iroh { id, address } => {
                let id = id
                    .parse::<burn::remote::EndpointId>()
                    .map_err(|e| named(format!("bad endpoint id: {e}")))?;
                let address = resolve(address).map_err(named)?;
                RemoteHost::iroh(
                    IrohHost::new(id)
                        .with_address(address)
                        .with_relays(IrohRelays::Disabled),
                )
            }
        };
        if !token.is_empty() {
            host = host.with_credential(token.to_string());
        }
        Device::remote_options(&host)
            .device_index(self.device_index)
            .init()
            .map_err(|e| named(e.to_string()))
    }
}

impl std::fmt::Display for RemoteAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.endpoint {
            Endpoint::WebSocket(url) => write!(f, "{url}")?,
            Endpoint::Iroh { id, address } => write!(f, "iroh://{id}@{address}")?,
        }
        if self.device_index != 0 {
            write!(f, "#{}", self.device_index)?;
        }
        Ok(())
    }
}

fn check_host_port(text: &str, addr: &str) -> Result<(), String> {
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(format!("{text:?}: expected HOST:PORT after the scheme")),
    }
}

fn resolve(address: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs;
    address
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {address}: {e}"))?
        .next()
        .ok_or_else(|| format!("{address} resolves to no address"))
}

/// How long a probe of a worker (a one-element read) may take before the worker counts as not
/// answering.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects every remote device of a config, in order, with the token from `token_env` (unset:
/// no token; the workers then refuse the connection unless they run with `--no-auth`). A
/// connection that takes longer than `timeout` (a worker that accepts but never answers) is an
/// error naming the address; a zero `timeout` waits forever.
pub fn connect_all(
    remote: &[String],
    token_env: &str,
    timeout: Duration,
) -> Result<Vec<Device>, TrainError> {
    let token = std::env::var(token_env).unwrap_or_default();
    remote
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let address = RemoteAddress::parse(text)
                .map_err(|e| TrainError::Config(format!("devices.remote[{i}]: {e}")))?;
            if timeout.is_zero() {
                return address.connect(&token);
            }
            let (tx, rx) = mpsc::channel();
            let (a, t) = (address.clone(), token.clone());
            std::thread::spawn(move || {
                let _ = tx.send(a.connect(&t));
            });
            rx.recv_timeout(timeout).unwrap_or_else(|_| {
                Err(TrainError::Config(format!(
                    "remote device {address}: no answer within {} s (devices.remote_timeout_s)",
                    timeout.as_secs()
                )))
            })
        })
        .collect()
}

/// Waits for a training run's result on `done` while watching its progress: when nothing has
/// progressed for `quiet_limit` (the latest of the start, `last_beat()` and the previous probe),
/// the workers of `remote` are probed; it returns `Err` with the addresses that do not answer,
/// and keeps waiting (logging a warning) while they all do; an empty `Err` means `done`'s sender
/// went away without a result. A zero `quiet_limit` waits forever.
/// Burn's remote client has no timeouts, so this is how a hung worker ends a run.
pub fn wait_watched<T>(
    done: &mpsc::Receiver<T>,
    remote: &[(String, Device)],
    quiet_limit: Duration,
    last_beat: impl Fn() -> Option<Instant>,
) -> Result<T, Vec<String>> {
    let mut quiet_since = Instant::now();
    loop {
        let tick = if quiet_limit.is_zero() {
            Duration::from_secs(3600)
        } else {
            quiet_limit.min(Duration::from_secs(1))
        };
        match done.recv_timeout(tick) {
            Ok(result) => return Ok(result),
            Err(mpsc::RecvTimeoutError::Disconnected) => return Err(Vec::new()),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if quiet_limit.is_zero() {
            continue;
        }
        if let Some(beat) = last_beat() {
            quiet_since = quiet_since.max(beat);
        }
        if quiet_since.elapsed() < quiet_limit {
            continue;
        }
        let dead = unresponsive(remote, PROBE_TIMEOUT);
        if !dead.is_empty() {
            return Err(dead);
        }
        log::warn!(
            "no training progress for {} s, but every remote device answers; still waiting",
            quiet_since.elapsed().as_secs()
        );
        quiet_since = Instant::now();
    }
}

/// The workers among `remote` (addresses beside their connected devices) that do not answer a
/// one-element read within `timeout`: Burn's remote client has no timeouts of its own, so each
/// probe runs on its own thread (a probe that never returns leaves its thread blocked). Used to
/// name the worker after a run stops on a device failure, and by [`wait_watched`].
pub fn unresponsive(remote: &[(String, Device)], timeout: Duration) -> Vec<String> {
    let probes: Vec<_> = remote
        .iter()
        .map(|(address, device)| {
            let (tx, rx) = mpsc::channel();
            let device = device.clone();
            std::thread::spawn(move || {
                let answered = std::panic::catch_unwind(|| {
                    Tensor::<1>::zeros([1], &device).try_into_data().is_ok()
                })
                .unwrap_or(false);
                let _ = tx.send(answered);
            });
            (address.clone(), rx)
        })
        .collect();
    probes
        .into_iter()
        .filter(|(_, rx)| rx.recv_timeout(timeout) != Ok(true))
        .map(|(address, _)| address)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_and_print_back() {
        for text in [
            "ws://127.0.0.1:3000",
            "ws://node7:29500#1",
            "iroh://abc@10.0.0.2:4000",
        ] {
            let a = RemoteAddress::parse(text).expect(text);
            assert_eq!(a.to_string(), text);
        }
        assert_eq!(RemoteAddress::parse("ws://h:1#3").unwrap().device_index, 3);
        for bad in [
            "http://h:1",
            "ws://h",
            "ws://h:x",
            "ws://:80",
            "iroh://h:1",
            "ws://h:1#x",
        ] {
            assert!(RemoteAddress::parse(bad).is_err(), "{bad}");
        }
    }
}
