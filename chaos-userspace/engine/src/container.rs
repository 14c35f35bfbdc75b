//! Docker containers as targets (`container:NAME|ID`): the Docker Engine API (bollard)
//! gives a running container's PID, and its network namespace (/proc/PID/ns/net) is the
//! target, as for `netns:`. A container that restarts gets a new namespace: the run's
//! identity check at each lease renewal then reports the target lost, and the run ends
//! with its faults reverted (it does not follow the new one: a restart is itself part of
//! what the experiment observes).

use std::time::Duration;

use anyhow::Result;
use chaos_datapath::error::Error;
use chaos_model::{
    plan::{Plan, PlannedFault},
    spec::{FaultSpec, TargetSpec},
};

/// The daemon's socket when DOCKER_HOST does not name one.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// How long one call to the daemon may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A running container, as the daemon described it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    pub id: String,
    pub name: String,
    pub pid: u32,
    /// Its IPv4 address on the first of its networks (by name) that gives one.
    pub ip: Option<std::net::Ipv4Addr>,
}

impl Container {
    /// Its network namespace, as a path.
    pub fn netns_path(&self) -> String {
        format!("/proc/{}/ns/net", self.pid)
    }
}

/// The daemon's socket: DOCKER_HOST (unix:// only), else [`DEFAULT_SOCKET`].
pub fn socket() -> Result<String> {
    match std::env::var("DOCKER_HOST") {
        Ok(host) if !host.is_empty() => match host.strip_prefix("unix://") {
            Some(path) => Ok(path.to_owned()),
            None => Err(Error::unsupported(
                format!("DOCKER_HOST={} is not a Unix socket", chaos_model::spec::shorten(&host, 80)),
                "point DOCKER_HOST at the daemon's socket (unix:///var/run/docker.sock) or unset it",
            )
            .into()),
        },
        _ => Ok(DEFAULT_SOCKET.to_owned()),
    }
}

/// The running container `name` (a name or an id, as `docker ps` shows them).
pub fn inspect(name: &str) -> Result<Container> {
    let socket = socket()?;
    block_on(&socket, Duration::ZERO, inspect_at(&socket, name))
}

/// What an action does to a container through the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Sends a signal (number) to its main process.
    Kill(i32),
    /// SIGTERM, then SIGKILL after the grace period (`docker stop -t`).
    Stop(Duration),
    Start,
    /// Freezes every process of it (the cgroup freezer), and thaws them.
    Pause,
    Unpause,
}

/// Carries out `change` on the container `name`.
pub fn change(name: &str, change: Change) -> Result<()> {
    change_at(&socket()?, name, change)
}

/// [`change`] through the daemon at `socket` (the one a crashed run recorded).
pub fn change_at(socket: &str, name: &str, change: Change) -> Result<()> {
    let socket = socket.to_owned();
    let extra = match change {
        Change::Stop(grace) => grace,
        _ => Duration::ZERO,
    };
    block_on(&socket, extra, async {
        let docker = connect(&socket, &format!("container:{name}")).await?;
        let done = match change {
            Change::Kill(signal) => {
                let options = bollard::query_parameters::KillContainerOptions { signal: signal.to_string() };
                docker.kill_container(name, Some(options)).await
            }
            Change::Stop(grace) => {
                let t = i32::try_from(grace.as_secs()).unwrap_or(i32::MAX);
                let options = bollard::query_parameters::StopContainerOptions { signal: None, t: Some(t) };
                docker.stop_container(name, Some(options)).await
            }
            Change::Start => docker.start_container(name, None).await,
            Change::Pause => docker.pause_container(name).await,
            Change::Unpause => docker.unpause_container(name).await,
        };
        done.map_err(|e| anyhow::anyhow!("{change:?} of container {name}: {}", first_line(&e.to_string())))
    })
}

/// Whether the container `name` runs, and whether it is paused.
pub fn state(name: &str) -> Result<(bool, bool)> {
    let socket = socket()?;
    state_at(&socket, name)?.ok_or_else(|| missing(&socket, name))
}

/// [`state`] through the daemon at `socket`; `None` when the daemon has no such
/// container (it was removed), which is not an error for a cleanup.
pub fn state_at(socket: &str, name: &str) -> Result<Option<(bool, bool)>> {
    block_on(socket, Duration::ZERO, async {
        let docker = connect(socket, &format!("container:{name}")).await?;
        let details = match docker.inspect_container(name, None).await {
            Ok(details) => details,
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => return Ok(None),
            Err(e) => return Err(lookup_error(socket, name, e)),
        };
        let state = details.state.unwrap_or_default();
        Ok(Some((state.running == Some(true), state.paused == Some(true))))
    })
}

/// The daemon's socket, the container's full id and its name (running or not): what a
/// record needs to find this very container again, after a rename or a new container
/// of the same name.
pub fn identify(name: &str) -> Result<(String, String, String)> {
    let socket = socket()?;
    block_on(&socket, Duration::ZERO, async {
        let docker = connect(&socket, &format!("container:{name}")).await?;
        let details = docker.inspect_container(name, None).await.map_err(|e| lookup_error(&socket, name, e))?;
        let display = details.name.as_deref().unwrap_or(name).trim_start_matches('/').to_owned();
        Ok((socket.clone(), details.id.unwrap_or_else(|| name.to_owned()), display))
    })
}

/// Runs one exchange with the daemon on a runtime of its own, bounded by CALL_TIMEOUT
/// plus `extra` (a stop's grace period).
fn block_on<T>(socket: &str, extra: Duration, call: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        tokio::time::timeout(CALL_TIMEOUT + extra, call).await.map_err(|_| {
            anyhow::Error::from(Error::unsupported(
                format!("the Docker daemon at {socket} did not answer within {} s", (CALL_TIMEOUT + extra).as_secs()),
                "check that dockerd is running and not stuck (`docker info`)",
            ))
        })?
    })
}

fn first_line(text: &str) -> String {
    chaos_model::spec::shorten(text.lines().next().unwrap_or(text), 160)
}

/// A client of the daemon at `socket`, its API version negotiated; `what` is what is
/// asked about (`container:web`), for the message when there is no daemon.
async fn connect(socket: &str, what: &str) -> Result<bollard::Docker> {
    match std::fs::metadata(socket) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::unsupported(
                format!("no Docker daemon socket at {socket} (asked about {what})"),
                "start dockerd, or set DOCKER_HOST=unix:///path/to/docker.sock",
            )
            .into())
        }
        Err(e) => return Err(unreachable(socket, &e.to_string()).into()),
    }
    let docker = bollard::Docker::connect_with_unix(socket, CALL_TIMEOUT.as_secs(), bollard::API_DEFAULT_VERSION)
        .map_err(|e| unreachable(socket, &e.to_string()))?
        .negotiate_version()
        .await
        .map_err(|e| unreachable(socket, &e.to_string()))?;
    Ok(docker)
}

/// An inspect that failed: no such container, or a daemon that cannot be asked.
fn lookup_error(socket: &str, name: &str, e: bollard::errors::Error) -> anyhow::Error {
    match e {
        bollard::errors::Error::DockerResponseServerError { status_code: 404, .. } => missing(socket, name),
        e => unreachable(socket, &e.to_string()).into(),
    }
}

fn missing(socket: &str, name: &str) -> anyhow::Error {
    Error::unsupported(
        format!("no container named {name} (Docker at {socket})"),
        "give a name or id that `docker ps` lists",
    )
    .into()
}

async fn inspect_at(socket: &str, name: &str) -> Result<Container> {
    let docker = connect(socket, &format!("container:{name}")).await?;
    let details = docker.inspect_container(name, None).await.map_err(|e| lookup_error(socket, name, e))?;
    let state = details.state.unwrap_or_default();
    let pid = state.pid.unwrap_or(0);
    let display = details.name.as_deref().unwrap_or(name).trim_start_matches('/').to_owned();
    if state.running != Some(true) || pid <= 0 {
        return Err(Error::unsupported(
            format!("container {display} is not running"),
            format!("start it first (`docker start {display}`)"),
        )
        .into());
    }
    let settings = details.network_settings.unwrap_or_default();
    let mut networks: Vec<_> = settings.networks.unwrap_or_default().into_iter().collect();
    networks.sort_by(|a, b| a.0.cmp(&b.0));
    let ip = networks.into_iter().filter_map(|(_, endpoint)| endpoint.ip_address).find_map(|text| text.parse().ok());
    Ok(Container { id: details.id.unwrap_or_default(), name: display, pid: pid as u32, ip })
}

/// A daemon that cannot be asked (no permission, not answering, an error of its own).
fn unreachable(socket: &str, why: &str) -> Error {
    Error::unsupported(
        format!("the Docker daemon at {socket} cannot be asked: {}", first_line(why)),
        "run as root (or a member of the docker group) with dockerd running; DOCKER_HOST names another socket",
    )
}

/// The running containers with label `key=value`, by name.
pub fn with_label(key: &str, value: &str) -> Result<Vec<String>> {
    let socket = socket()?;
    let selector = format!("{key}={value}");
    block_on(&socket, Duration::ZERO, async {
        let docker = connect(&socket, &format!("container-label:{selector}")).await?;
        let filters = std::collections::HashMap::from([("label".to_owned(), vec![selector.clone()])]);
        let options = bollard::query_parameters::ListContainersOptions { filters: Some(filters), ..Default::default() };
        let list = docker.list_containers(Some(options)).await.map_err(|e| unreachable(&socket, &e.to_string()))?;
        let mut names: Vec<String> = list
            .into_iter()
            .filter_map(|c| c.names.and_then(|n| n.into_iter().next()).or(c.id))
            .map(|n| n.trim_start_matches('/').to_owned())
            .collect();
        names.sort();
        Ok(names)
    })
}

/// A new container made like a running one (`template`): its image, command, entry
/// point, environment, working directory, user, host configuration (mounts, init,
/// restart policy) and first network, with another name and hostname; its labels but
/// `drop_label`, plus `add_labels`. Created, not started: its full id.
pub fn create_clone(
    template: &str,
    name: &str,
    hostname: &str,
    drop_label: &str,
    add_labels: &[(String, String)],
) -> Result<String> {
    let socket = socket()?;
    block_on(&socket, Duration::ZERO, async {
        let docker = connect(&socket, &format!("container:{template}")).await?;
        let details = docker.inspect_container(template, None).await.map_err(|e| lookup_error(&socket, template, e))?;
        let network = clone_network(&details);
        let config = details.config.unwrap_or_default();
        let mut labels = config.labels.unwrap_or_default();
        labels.remove(drop_label);
        labels.extend(add_labels.iter().cloned());
        // Without the template's aliases: a clone is not found under the template's
        // service name.
        let networking_config = network.map(|network| bollard::models::NetworkingConfig {
            endpoints_config: Some(std::collections::HashMap::from([(
                network,
                bollard::models::EndpointSettings::default(),
            )])),
        });
        let body = bollard::models::ContainerCreateBody {
            hostname: Some(hostname.to_owned()),
            user: config.user,
            env: config.env,
            cmd: config.cmd,
            entrypoint: config.entrypoint,
            image: config.image,
            working_dir: config.working_dir,
            labels: Some(labels),
            stop_signal: config.stop_signal,
            host_config: details.host_config,
            networking_config,
            ..Default::default()
        };
        let options =
            bollard::query_parameters::CreateContainerOptions { name: Some(name.to_owned()), ..Default::default() };
        let created = docker.create_container(Some(options), body).await.map_err(|e| {
            anyhow::anyhow!("creating container {name} like {template}: {}", first_line(&e.to_string()))
        })?;
        Ok(created.id)
    })
}

/// The network a clone of a container joins ([`create_clone`]): its first by name.
fn clone_network(details: &bollard::models::ContainerInspectResponse) -> Option<String> {
    let networks = details.network_settings.as_ref()?.networks.as_ref()?;
    networks.keys().min().cloned()
}

/// Room for clones of `template` on the network they join: the network's name, its
/// dynamic IPv4 range(s) and how many addresses there are free now. `None` when the
/// template has no network, or the network's IPAM names no IPv4 range this can read
/// (then nothing is known before a start fails).
pub fn room_for_clones(template: &str) -> Result<Option<(String, String, u64)>> {
    let socket = socket()?;
    block_on(&socket, Duration::ZERO, async {
        let docker = connect(&socket, &format!("container:{template}")).await?;
        let details = docker.inspect_container(template, None).await.map_err(|e| lookup_error(&socket, template, e))?;
        let Some(network) = clone_network(&details) else { return Ok(None) };
        let inspected = docker
            .inspect_network(&network, None)
            .await
            .map_err(|e| anyhow::anyhow!("inspecting network {network}: {}", first_line(&e.to_string())))?;
        let configs = inspected.ipam.and_then(|i| i.config).unwrap_or_default();
        let used: Vec<std::net::Ipv4Addr> = inspected
            .containers
            .unwrap_or_default()
            .values()
            .filter_map(|e| e.ipv4_address.as_deref().and_then(cidr).map(|(ip, _)| ip))
            .collect();
        Ok(free_addresses(&configs, &used).map(|(ranges, free)| (network, ranges, free)))
    })
}

/// The dynamic ranges of a network's IPv4 IPAM configs (`ip_range`, else the subnet)
/// and how many of their addresses are neither reserved (the subnet's network and
/// broadcast addresses, the gateway, auxiliary addresses) nor `used`. `None` when no
/// config gives an IPv4 subnet.
fn free_addresses(configs: &[bollard::models::IpamConfig], used: &[std::net::Ipv4Addr]) -> Option<(String, u64)> {
    let mut ranges = Vec::new();
    let mut free = 0u64;
    for config in configs {
        let Some((subnet, subnet_len)) = config.subnet.as_deref().and_then(cidr) else { continue };
        let range_text = config.ip_range.as_deref().unwrap_or(config.subnet.as_deref().unwrap_or_default());
        let Some((range, range_len)) = cidr(range_text) else { continue };
        let within = |ip: std::net::Ipv4Addr, base: std::net::Ipv4Addr, len: u8| {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(base) & mask
        };
        let subnet_mask = u32::MAX.checked_shl(32 - u32::from(subnet_len)).unwrap_or(0);
        let mut taken: std::collections::BTreeSet<std::net::Ipv4Addr> = used.iter().copied().collect();
        // A /31 or /32 has no network or broadcast address to spare.
        if subnet_len < 31 {
            taken.insert((u32::from(subnet) & subnet_mask).into());
            taken.insert((u32::from(subnet) | !subnet_mask).into());
        }
        let reserved = config.gateway.iter().chain(config.auxiliary_addresses.iter().flat_map(|a| a.values()));
        taken.extend(reserved.filter_map(|a| a.parse::<std::net::Ipv4Addr>().ok()));
        let size = 1u64 << (32 - u32::from(range_len));
        let taken_in_range = taken.iter().filter(|ip| within(**ip, range, range_len)).count() as u64;
        free += size.saturating_sub(taken_in_range);
        ranges.push(range_text.to_owned());
    }
    (!ranges.is_empty()).then(|| (ranges.join(", "), free))
}

/// An IPv4 address with its prefix length (`198.51.100.112/28`; a bare address is a
/// /32), parsed as scenario prefixes are.
fn cidr(text: &str) -> Option<(std::net::Ipv4Addr, u8)> {
    match text.parse::<chaos_model::spec::Cidr>().ok()? {
        chaos_model::spec::Cidr { addr: std::net::IpAddr::V4(v4), len } => Some((v4, len)),
        _ => None,
    }
}

/// Removes the container `name` (stopping it first if it runs, like `docker rm -f`);
/// false when the daemon has no such container.
pub fn remove_at(socket: &str, name: &str) -> Result<bool> {
    block_on(socket, Duration::ZERO, async {
        let docker = connect(socket, &format!("container:{name}")).await?;
        let options = bollard::query_parameters::RemoveContainerOptions { force: true, ..Default::default() };
        match docker.remove_container(name, Some(options)).await {
            Ok(()) => Ok(true),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(false),
            Err(e) => Err(anyhow::anyhow!("removing container {name}: {}", first_line(&e.to_string()))),
        }
    })
}

/// A label of the container `name`, if it has it.
pub fn label_of(name: &str, key: &str) -> Result<Option<String>> {
    let socket = socket()?;
    block_on(&socket, Duration::ZERO, async {
        let docker = connect(&socket, &format!("container:{name}")).await?;
        let details = docker.inspect_container(name, None).await.map_err(|e| lookup_error(&socket, name, e))?;
        Ok(details.config.and_then(|c| c.labels).and_then(|mut l| l.remove(key)))
    })
}

/// Binds `container-label:KEY=VALUE` targets to the running containers with that label
/// now: one fault per container (`container:NAME`; the first keeps the rule id, the
/// others take new ones), as lab selectors are bound. Returns the bound plan and one
/// line per binding; a plan without label targets comes back as it is. No container
/// with the label is exit 2: a fault on nothing would do nothing.
pub fn bind_container_labels(plan: &Plan) -> Result<(Plan, Vec<String>)> {
    let labelled = |f: &PlannedFault| matches!(f.spec.target, TargetSpec::ContainerLabel { .. });
    if !plan.steps.iter().flat_map(|s| &s.faults).any(labelled) {
        return Ok((plan.clone(), Vec::new()));
    }
    let mut next_id = plan.steps.iter().flat_map(|s| s.faults.iter().map(|f| f.rule_id)).max().unwrap_or(0) + 1;
    let mut notes = Vec::new();
    let mut bound = plan.clone();
    for step in &mut bound.steps {
        let mut faults = Vec::with_capacity(step.faults.len());
        for fault in std::mem::take(&mut step.faults) {
            let TargetSpec::ContainerLabel { key, value } = &fault.spec.target else {
                faults.push(fault);
                continue;
            };
            let names = with_label(key, value)?;
            if names.is_empty() {
                return Err(Error::unsupported(
                    format!("step {}: no running container has the label {key}={value}", step.name),
                    format!("start one, or check the label (`docker ps --filter label={key}={value}`)"),
                )
                .into());
            }
            notes.push(format!("step {}: {} = {}", step.name, fault.spec.target, names.join(", ")));
            for (k, name) in names.into_iter().enumerate() {
                let rule_id = crate::action::expanded_rule_id(k, fault.rule_id, &mut next_id);
                let spec = FaultSpec { target: TargetSpec::Container(name), ..fault.spec.clone() };
                faults.push(PlannedFault { rule_id, spec, ..fault.clone() });
            }
        }
        step.faults = faults;
    }
    Ok((bound, notes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_addresses_count_the_dynamic_range_less_what_is_taken() {
        // The stack's network: 16 addresses in the range, its last the subnet's broadcast.
        let stack = bollard::models::IpamConfig {
            subnet: Some("198.51.100.96/27".to_owned()),
            gateway: Some("198.51.100.97".to_owned()),
            ip_range: Some("198.51.100.112/28".to_owned()),
            ..Default::default()
        };
        let ip = |last: u8| std::net::Ipv4Addr::new(198, 51, 100, last);
        // Three etcds outside the range, five nodes in it.
        let used: Vec<_> = [98, 99, 100, 112, 113, 114, 115, 116].into_iter().map(ip).collect();
        assert_eq!(free_addresses(std::slice::from_ref(&stack), &used), Some(("198.51.100.112/28".to_owned(), 10)));
        // No range: the whole subnet less network, broadcast, gateway and the eight.
        let subnet = bollard::models::IpamConfig { ip_range: None, ..stack };
        assert_eq!(free_addresses(&[subnet], &used), Some(("198.51.100.96/27".to_owned(), 32 - 3 - 8)));
        let v6 = bollard::models::IpamConfig { subnet: Some("fd00::/64".to_owned()), ..Default::default() };
        assert_eq!(free_addresses(&[v6], &used), None);
        assert_eq!(cidr("198.51.100.113/27"), Some((ip(113), 27)));
        assert_eq!(cidr("198.51.100.113"), Some((ip(113), 32)));
        assert_eq!(cidr("198.51.100.113/33"), None);
    }
}
