//! Launching one training run over many machines the way cluster launchers do: every process of
//! the job runs the same command (`blip3 launch`), reads its rank from the environment, and rank 0
//! becomes the trainer while every other rank becomes a worker serving its devices.
//!
//! The ranks find each other by a rendezvous at the first node (`MASTER_ADDR:MASTER_PORT`, as
//! torchrun and `torch.distributed` use it): each worker starts its Burn server on a free port,
//! dials the trainer's rendezvous port and registers one line,
//! `blip3-rendezvous 1 RANK PORT DEVICES TOKEN`. The trainer takes the worker's address as it sees
//! the connection (the interface through which the worker reached it), checks the token, waits
//! until every rank has registered, and lists the workers' devices in `devices.remote` in rank
//! order. The registration connections stay open for the whole run; a worker exits when its
//! connection closes, i.e. when the trainer ends, so the job ends with the run.
//!
//! Where the ranks come from ([`ClusterEnv::from_env`]): torchrun's `RANK`, `WORLD_SIZE`,
//! `MASTER_ADDR`, `MASTER_PORT`; else Slurm's `SLURM_PROCID`, `SLURM_NTASKS` and the first node
//! of `SLURM_JOB_NODELIST` (port `BLIP3_RENDEZVOUS_PORT`, default [`DEFAULT_RENDEZVOUS_PORT`]).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::error::TrainError;

/// The rendezvous port under Slurm when `BLIP3_RENDEZVOUS_PORT` is not set.
pub const DEFAULT_RENDEZVOUS_PORT: u16 = 29400;

/// The first word of a registration line and the protocol version after it.
const HELLO: &str = "blip3-rendezvous 1";

/// This process's place in a launched job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterEnv {
    /// 0 for the trainer, 1.. for the workers.
    pub rank: usize,
    /// Number of processes in the job (the trainer and its workers).
    pub world_size: usize,
    /// The trainer's host, which the workers dial.
    pub master_addr: String,
    /// The trainer's rendezvous port.
    pub master_port: u16,
    /// This process's rank on its node (`LOCAL_RANK` or `SLURM_LOCALID`), when the launcher says:
    /// with one process per GPU, the device index a worker serves by default.
    pub local_rank: Option<usize>,
    /// Which launcher's variables these came from (for messages).
    pub source: &'static str,
}

impl ClusterEnv {
    /// Reads the launcher's variables from the process environment.
    pub fn from_env() -> Result<ClusterEnv, String> {
        ClusterEnv::from_vars(|name| std::env::var(name).ok())
    }

    /// Reads the launcher's variables through `var` (torchrun's first, then Slurm's).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<ClusterEnv, String> {
        let num = |name: &str| -> Result<Option<usize>, String> {
            var(name)
                .map(|v| {
                    v.trim()
                        .parse::<usize>()
                        .map_err(|_| format!("{name}={v:?} is not a number"))
                })
                .transpose()
        };
        let env = if let Some(rank) = num("RANK")? {
            let missing = |n: &str| format!("RANK is set but {n} is not (torchrun sets both)");
            ClusterEnv {
                rank,
                world_size: num("WORLD_SIZE")?.ok_or_else(|| missing("WORLD_SIZE"))?,
                master_addr: var("MASTER_ADDR").ok_or_else(|| missing("MASTER_ADDR"))?,
                master_port: var("MASTER_PORT")
                    .ok_or_else(|| missing("MASTER_PORT"))?
                    .trim()
                    .parse()
                    .map_err(|_| "MASTER_PORT is not a port number".to_string())?,
                local_rank: num("LOCAL_RANK")?,
                source: "torchrun (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT)",
            }
        } else if let Some(rank) = num("SLURM_PROCID")? {
            let nodes = var("SLURM_JOB_NODELIST")
                .or_else(|| var("SLURM_NODELIST"))
                .ok_or("SLURM_PROCID is set but SLURM_JOB_NODELIST is not")?;
            let first = expand_slurm_hostlist(&nodes)
                .map_err(|e| format!("SLURM_JOB_NODELIST: {e}"))?
                .into_iter()
                .next()
                .ok_or("SLURM_JOB_NODELIST names no node")?;
            ClusterEnv {
                rank,
                world_size: num("SLURM_NTASKS")?
                    .ok_or("SLURM_PROCID is set but SLURM_NTASKS is not")?,
                master_addr: first,
                master_port: match var("BLIP3_RENDEZVOUS_PORT") {
                    Some(p) => p
                        .trim()
                        .parse()
                        .map_err(|_| "BLIP3_RENDEZVOUS_PORT is not a port number".to_string())?,
                    None => DEFAULT_RENDEZVOUS_PORT,
                },
                local_rank: num("SLURM_LOCALID")?,
                source: "Slurm (SLURM_PROCID, SLURM_NTASKS, SLURM_JOB_NODELIST)",
            }
        } else {
            return Err(
                "no launcher environment: set RANK, WORLD_SIZE, MASTER_ADDR and \
                        MASTER_PORT (torchrun's variables) or run under srun (Slurm)"
                    .into(),
            );
        };
        if env.world_size == 0 || env.rank >= env.world_size {
            return Err(format!(
                "rank {} is outside a world of {} processes ({})",
                env.rank, env.world_size, env.source
            ));
        }
        Ok(env)
    }
}

/// The trainer's side: listens on `port` (all interfaces) and waits until ranks `1..world_size`
/// have registered with `token`, for at most `timeout`. Returns the open registrations (keep them
/// for the run: the workers exit when they close) and the workers' devices, in rank order, as
/// `devices.remote` entries. A registration with a wrong token or a malformed line is logged and
/// dropped; a rank that registers twice replaces its earlier entry.
pub fn gather_workers(
    port: u16,
    world_size: usize,
    token: &str,
    timeout: Duration,
) -> Result<(Vec<TcpStream>, Vec<String>), TrainError> {
    let listener = TcpListener::bind(("0.0.0.0", port))
        .map_err(|e| TrainError::Config(format!("rendezvous port {port}: cannot listen: {e}")))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| TrainError::Config(format!("rendezvous port {port}: {e}")))?;
    log::info!(
        "rendezvous on port {port}: waiting for {} worker(s)",
        world_size - 1
    );
    let deadline = Instant::now() + timeout;
    let mut joined: BTreeMap<usize, (TcpStream, Vec<String>)> = BTreeMap::new();
    while joined.len() + 1 < world_size {
        if Instant::now() > deadline {
            let missing: Vec<String> = (1..world_size)
                .filter(|r| !joined.contains_key(r))
                .map(|r| r.to_string())
                .collect();
            return Err(TrainError::Config(format!(
                "rendezvous port {port}: rank(s) {} did not register within {} s",
                missing.join(", "),
                timeout.as_secs()
            )));
        }
        let (stream, peer) = match listener.accept() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(e) => return Err(TrainError::Config(format!("rendezvous port {port}: {e}"))),
        };
        match registration(&stream, peer, world_size, token) {
            Ok((rank, devices)) => {
                log::info!("rank {rank} registered from {peer}: {}", devices.join(" "));
                joined.insert(rank, (stream, devices));
            }
            Err(why) => log::warn!("rendezvous: refused {peer}: {why}"),
        }
    }
    let (streams, devices): (Vec<TcpStream>, Vec<Vec<String>>) = joined.into_values().unzip();
    Ok((streams, devices.into_iter().flatten().collect()))
}

/// Reads and checks one registration line; returns the rank and its devices' addresses.
fn registration(
    stream: &TcpStream,
    peer: SocketAddr,
    world_size: usize,
    token: &str,
) -> Result<(usize, Vec<String>), String> {
    stream.set_nonblocking(false).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .map_err(|e| format!("no registration line: {e}"))?;
    stream.set_read_timeout(None).map_err(|e| e.to_string())?;
    let rest = line
        .trim_end()
        .strip_prefix(HELLO)
        .ok_or("not a blip3 rendezvous registration (or another version)")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let [rank, port, devices, sent_token] = fields[..] else {
        return Err("malformed registration".into());
    };
    if sent_token != token {
        return Err("wrong token".into());
    }
    let rank: usize = rank.parse().map_err(|_| "bad rank")?;
    let port: u16 = port.parse().map_err(|_| "bad port")?;
    let devices: u32 = devices.parse().map_err(|_| "bad device count")?;
    if rank == 0 || rank >= world_size {
        return Err(format!(
            "rank {rank} is not a worker rank of a world of {world_size}"
        ));
    }
    if devices == 0 {
        return Err("serves no device".into());
    }
    let host = SocketAddr::new(peer.ip(), port);
    Ok((
        rank,
        (0..devices)
            .map(|i| match i {
                0 => format!("ws://{host}"),
                i => format!("ws://{host}#{i}"),
            })
            .collect(),
    ))
}

/// A worker's side: dials the trainer's rendezvous (retrying until `timeout`, as the trainer may
/// start later) and registers this rank, its server's `port` and its number of `devices`. Returns
/// the open connection: it reaches end-of-file when the trainer ends ([`wait_for_trainer`]).
pub fn register(
    env: &ClusterEnv,
    port: u16,
    devices: usize,
    token: &str,
    timeout: Duration,
) -> Result<TcpStream, TrainError> {
    let target = format!("{}:{}", env.master_addr, env.master_port);
    let named = |msg: String| TrainError::Config(format!("rendezvous at {target}: {msg}"));
    let deadline = Instant::now() + timeout;
    let mut stream = loop {
        let attempt = target
            .to_socket_addrs()
            .map_err(|e| e.to_string())
            .and_then(|mut a| a.next().ok_or_else(|| "resolves to no address".to_string()))
            .and_then(|a| {
                TcpStream::connect_timeout(&a, Duration::from_secs(5)).map_err(|e| e.to_string())
            });
        match attempt {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => {
                return Err(named(format!(
                    "unreachable for {} s: {e}",
                    timeout.as_secs()
                )));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    writeln!(stream, "{HELLO} {} {port} {devices} {token}", env.rank)
        .and_then(|()| stream.flush())
        .map_err(|e| named(e.to_string()))?;
    Ok(stream)
}

/// Blocks until the trainer closes the rendezvous connection (its run ended, or it died).
pub fn wait_for_trainer(stream: TcpStream) {
    let mut sink = Vec::new();
    let _ = std::io::Read::read_to_end(&mut &stream, &mut sink);
}

/// Expands a Slurm host list (`SLURM_JOB_NODELIST`), e.g. `gpu[01-03,7],login1` →
/// `gpu01 gpu02 gpu03 gpu7 login1`. Ranges keep their zero padding.
pub fn expand_slurm_hostlist(list: &str) -> Result<Vec<String>, String> {
    let mut hosts = Vec::new();
    let mut rest = list.trim();
    while !rest.is_empty() {
        // One item: a prefix, optionally followed by [ranges], up to the next top-level comma.
        let bracket = rest.find('[');
        let comma = rest.find(',');
        match (bracket, comma) {
            (Some(b), c) if c.is_none_or(|c| b < c) => {
                let close = rest[b..]
                    .find(']')
                    .map(|i| b + i)
                    .ok_or_else(|| format!("{list:?}: unclosed ["))?;
                let prefix = &rest[..b];
                let suffix_end = rest[close + 1..]
                    .find(',')
                    .map_or(rest.len(), |i| close + 1 + i);
                let suffix = &rest[close + 1..suffix_end];
                for part in rest[b + 1..close].split(',') {
                    match part.split_once('-') {
                        Some((lo, hi)) => {
                            let (a, z) = (
                                lo.parse::<u64>()
                                    .map_err(|_| format!("{list:?}: bad range {part}"))?,
                                hi.parse::<u64>()
                                    .map_err(|_| format!("{list:?}: bad range {part}"))?,
                            );
                            if z < a {
                                return Err(format!("{list:?}: empty range {part}"));
                            }
                            for n in a..=z {
                                hosts
                                    .push(format!("{prefix}{n:0width$}{suffix}", width = lo.len()));
                            }
                        }
                        None => hosts.push(format!("{prefix}{part}{suffix}")),
                    }
                }
                rest = rest[suffix_end..].trim_start_matches(',');
            }
            (_, Some(c)) => {
                hosts.push(rest[..c].to_string());
                rest = &rest[c + 1..];
            }
            (_, None) => {
                hosts.push(rest.to_string());
                rest = "";
            }
        }
    }
    Ok(hosts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slurm_host_lists_expand() {
        assert_eq!(
            expand_slurm_hostlist("gpu[01-03,7],login1").unwrap(),
            ["gpu01", "gpu02", "gpu03", "gpu7", "login1"]
        );
        assert_eq!(expand_slurm_hostlist("a,b").unwrap(), ["a", "b"]);
        assert_eq!(
            expand_slurm_hostlist("n[8-10]-ib").unwrap(),
            ["n8-ib", "n9-ib", "n10-ib"]
        );
        assert!(expand_slurm_hostlist("n[1-").is_err());
        assert!(expand_slurm_hostlist("n[3-1]").is_err());
    }

    #[test]
    fn launcher_variables_give_the_rank_and_the_rendezvous() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let torchrun = ClusterEnv::from_vars(vars(&[
            ("RANK", "2"),
            ("WORLD_SIZE", "3"),
            ("MASTER_ADDR", "node1"),
            ("MASTER_PORT", "29501"),
            ("LOCAL_RANK", "1"),
            ("SLURM_PROCID", "7"),
        ]))
        .unwrap();
        assert_eq!(torchrun.local_rank, Some(1));
        assert_eq!(
            (
                torchrun.rank,
                torchrun.world_size,
                torchrun.master_addr.as_str()
            ),
            (2, 3, "node1")
        );
        assert_eq!(torchrun.master_port, 29501);
        let slurm = ClusterEnv::from_vars(vars(&[
            ("SLURM_PROCID", "1"),
            ("SLURM_NTASKS", "4"),
            ("SLURM_JOB_NODELIST", "gpu[07-10]"),
        ]))
        .unwrap();
        assert_eq!((slurm.rank, slurm.world_size), (1, 4));
        assert_eq!(slurm.master_addr, "gpu07");
        assert_eq!(slurm.master_port, DEFAULT_RENDEZVOUS_PORT);
        assert_eq!(slurm.local_rank, None);
        for bad in [
            &[][..],
            &[("RANK", "0")][..],
            &[
                ("RANK", "3"),
                ("WORLD_SIZE", "3"),
                ("MASTER_ADDR", "a"),
                ("MASTER_PORT", "1"),
            ][..],
            &[("RANK", "x")][..],
            &[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "2")][..],
        ] {
            assert!(ClusterEnv::from_vars(vars(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_rendezvous_orders_workers_by_rank_and_checks_tokens() {
        let free = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = free.local_addr().unwrap().port();
        drop(free);
        let env = move |rank| ClusterEnv {
            rank,
            world_size: 3,
            master_addr: "127.0.0.1".into(),
            master_port: port,
            local_rank: None,
            source: "test",
        };
        let workers = std::thread::spawn(move || {
            let t = Duration::from_secs(20);
            // A stranger with the wrong token is refused; rank 2 registers before rank 1.
            let _stranger = register(&env(1), 1111, 1, "wrong", t).unwrap();
            let two = register(&env(2), 2222, 2, "secret", t).unwrap();
            let one = register(&env(1), 3333, 1, "secret", t).unwrap();
            (one, two)
        });
        let (streams, devices) =
            gather_workers(port, 3, "secret", Duration::from_secs(20)).unwrap();
        assert_eq!(streams.len(), 2);
        assert_eq!(
            devices,
            [
                "ws://127.0.0.1:3333",
                "ws://127.0.0.1:2222",
                "ws://127.0.0.1:2222#1"
            ]
        );
        let (one, _two) = workers.join().unwrap();
        // Closing the trainer's side releases the workers.
        drop(streams);
        wait_for_trainer(one);

        let err = gather_workers(port, 2, "secret", Duration::from_millis(300)).unwrap_err();
        assert!(
            err.to_string().contains("rank(s) 1 did not register"),
            "{err}"
        );
    }
}
