//! The compose files and the Dockerfile, checked without Docker (it cannot run on the project's
//! machines): every msgxc service runs a real subcommand with flags and `MSGXC_*` variables its
//! `--help` lists, store URLs parse, references between services resolve, and the production
//! file has the shape it promises (3-node JetStream cluster with 3 replicas, Scylla, a
//! migration job the roles wait for, each role present, health checks on every long-running
//! service that probe the port the service listens on).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use yaml_rust2::{Yaml, YamlLoader};

const BIN: &str = env!("CARGO_BIN_EXE_msgxc");

fn load(path: &str) -> Yaml {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut docs = YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(docs.len(), 1, "{path}: one document");
    docs.remove(0)
}

fn strings(y: &Yaml) -> Vec<String> {
    match y {
        Yaml::Array(a) => a
            .iter()
            .map(|v| match v {
                Yaml::String(s) => s.clone(),
                Yaml::Integer(n) => n.to_string(),
                other => panic!("not a string: {other:?}"),
            })
            .collect(),
        Yaml::BadValue => Vec::new(),
        other => panic!("expected a list, got {other:?}"),
    }
}

fn services(doc: &Yaml) -> BTreeMap<String, Yaml> {
    doc["services"]
        .as_hash()
        .expect("services")
        .iter()
        .map(|(k, v)| (k.as_str().expect("service name").to_owned(), v.clone()))
        .collect()
}

fn env(service: &Yaml) -> BTreeMap<String, String> {
    match &service["environment"] {
        Yaml::Hash(h) => h
            .iter()
            .map(|(k, v)| {
                let value = match v {
                    Yaml::String(s) => s.clone(),
                    Yaml::Integer(n) => n.to_string(),
                    Yaml::Boolean(b) => b.to_string(),
                    other => panic!("environment value {other:?}"),
                };
                (k.as_str().expect("variable").to_owned(), value)
            })
            .collect(),
        Yaml::BadValue => BTreeMap::new(),
        other => panic!("environment as a map, got {other:?}"),
    }
}

fn is_msgxc(service: &Yaml) -> bool {
    !service["build"].is_badvalue()
        || service["image"]
            .as_str()
            .is_some_and(|i| i.starts_with("msgxc"))
}

fn help(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).arg("--help").output().unwrap();
    assert!(out.status.success(), "msgxc {args:?} --help");
    String::from_utf8(out.stdout).unwrap()
}

/// The port of an `address:port` or URL.
fn port_of(s: &str) -> String {
    let after_host = s.rsplit_once(':').map(|(_, p)| p).unwrap_or_default();
    after_host
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect()
}

/// Checks every msgxc service of a compose file; returns them by name.
fn check_msgxc_services(path: &str) -> BTreeMap<String, Yaml> {
    let doc = load(path);
    let all = services(&doc);
    let commands = help(&[]);
    let mut out = BTreeMap::new();
    for (name, s) in &all {
        for dep in match &s["depends_on"] {
            Yaml::Hash(h) => h
                .keys()
                .filter_map(|k| k.as_str())
                .map(str::to_owned)
                .collect(),
            other => strings(other),
        } {
            assert!(
                all.contains_key(&dep),
                "{path}: {name} depends on unknown {dep}"
            );
        }
        if !is_msgxc(s) {
            continue;
        }
        let command = strings(&s["command"]);
        let sub = command
            .first()
            .unwrap_or_else(|| panic!("{name}: no command"));
        assert!(
            commands
                .lines()
                .any(|l| l.split_whitespace().next() == Some(sub.as_str())),
            "{path}: {name} runs `msgxc {sub}`, not a subcommand"
        );
        let sub_help = help(&[sub]);
        for (i, arg) in command.iter().enumerate().skip(1) {
            if let Some(flag) = arg.strip_prefix("--") {
                let flag = flag.split('=').next().unwrap_or_default();
                assert!(
                    sub_help.contains(&format!("--{flag} "))
                        || sub_help.contains(&format!("--{flag}\n")),
                    "{path}: {name}: `msgxc {sub}` has no --{flag}"
                );
            }
            if command
                .get(i.wrapping_sub(1))
                .is_some_and(|p| p == "--role")
            {
                assert!(
                    ["all", "gateway", "projector", "dispatcher"].contains(&arg.as_str()),
                    "{path}: {name}: role {arg}"
                );
            }
        }
        for (var, value) in env(s) {
            if var.starts_with("MSGXC_") {
                assert!(
                    sub_help.contains(&format!("[env: {var}="))
                        || sub_help.contains(&format!("[env: {var}]")),
                    "{path}: {name}: `msgxc {sub}` reads no {var}"
                );
            }
            if var == "MSGXC_STORE" {
                projections::ScyllaConfig::parse(&value)
                    .unwrap_or_else(|e| panic!("{path}: {name}: MSGXC_STORE {value}: {e}"));
            }
        }
        out.insert(name.clone(), s.clone());
    }
    assert!(!out.is_empty(), "{path}: no msgxc service");
    out
}

fn flag_value(command: &[String], flag: &str) -> Option<String> {
    command
        .iter()
        .position(|a| a == flag)
        .and_then(|i| command.get(i + 1).cloned())
}

#[test]
fn the_production_compose_file_has_its_promised_shape() {
    let doc = load("docker-compose.yml");
    let all = services(&doc);
    let ours = check_msgxc_services("docker-compose.yml");

    // A 3-node JetStream cluster, each node routing to the other two.
    let nats: Vec<&String> = all
        .keys()
        .filter(|n| {
            all[*n]["image"]
                .as_str()
                .is_some_and(|i| i.starts_with("nats:"))
        })
        .collect();
    assert_eq!(nats.len(), 3, "three NATS nodes");
    for n in &nats {
        let cmd = strings(&all[*n]["command"]);
        assert!(cmd.contains(&"-js".to_owned()), "{n}: JetStream on");
        let routes = flag_value(&cmd, "--routes").unwrap_or_default();
        for other in nats.iter().filter(|o| o != &n) {
            assert!(routes.contains(other.as_str()), "{n} routes to {other}");
        }
        assert!(
            flag_value(&cmd, "--cluster_name").is_some(),
            "{n}: cluster name"
        );
    }

    // Scylla, and a migration job every role waits for.
    assert!(
        all.values().any(|s| s["image"]
            .as_str()
            .is_some_and(|i| i.starts_with("scylladb/scylla"))),
        "a Scylla node"
    );
    let migrate: Vec<&String> = ours
        .keys()
        .filter(|n| strings(&ours[*n]["command"]).first().map(String::as_str) == Some("migrate"))
        .collect();
    assert_eq!(migrate.len(), 1, "one migration job");
    let migrate = migrate[0];

    let mut roles = BTreeSet::new();
    for (name, s) in &ours {
        let cmd = strings(&s["command"]);
        if cmd.first().map(String::as_str) != Some("serve") {
            continue;
        }
        let role = flag_value(&cmd, "--role").unwrap_or_else(|| panic!("{name}: --role"));
        roles.insert(role.clone());
        let vars = env(s);
        assert_eq!(
            vars.get("MSGXC_STREAM_REPLICAS").map(String::as_str),
            Some("3"),
            "{name}: streams replicated 3 times"
        );
        let store = vars.get("MSGXC_STORE").expect("MSGXC_STORE");
        assert!(store.starts_with("scylla://"), "{name}: the Scylla store");
        let nats_url = vars.get("MSGXC_NATS_URL").expect("MSGXC_NATS_URL");
        for n in &nats {
            assert!(nats_url.contains(n.as_str()), "{name}: knows {n}");
        }
        assert_eq!(
            s["depends_on"][migrate.as_str()]["condition"].as_str(),
            Some("service_completed_successfully"),
            "{name} starts after the migration"
        );
        // The health check probes the port this role listens on.
        let probe = strings(&s["healthcheck"]["test"]);
        assert!(probe.len() > 2, "{name}: health check");
        let url = flag_value(&probe, "--url").unwrap_or_else(|| panic!("{name}: probe URL"));
        let listen = if role == "gateway" {
            flag_value(&cmd, "--listen")
        } else {
            flag_value(&cmd, "--health-listen")
        }
        .unwrap_or_else(|| panic!("{name}: no address to probe"));
        assert_eq!(port_of(&url), port_of(&listen), "{name}: probe port");
        assert!(url.ends_with("/api/v1/ping"), "{name}: {url}");
    }
    assert_eq!(
        roles,
        ["dispatcher", "gateway", "projector"]
            .map(str::to_owned)
            .into(),
        "each role in its own service"
    );

    // Every long-running service has a health check.
    for (name, s) in &all {
        if name != migrate {
            assert!(!s["healthcheck"].is_badvalue(), "{name}: health check");
        }
    }
}

#[test]
fn the_single_node_example_runs_real_commands() {
    let ours = check_msgxc_services("examples/docker-compose.single.yml");
    assert!(
        ours.values()
            .any(|s| strings(&s["command"]).first().map(String::as_str) == Some("serve"))
    );
}

#[test]
fn the_dockerfile_builds_in_one_stage_and_runs_in_a_small_one() {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile"))
        .expect("Dockerfile");
    let from: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert!(from.len() >= 2, "multi-stage: {from:?}");
    let runtime = from.last().copied().unwrap_or_default();
    assert!(
        !runtime.contains("rust:"),
        "the runtime image has no toolchain: {runtime}"
    );
    assert!(
        text.contains("COPY --from=") && text.contains("/usr/local/bin/msgxc"),
        "only the binary is copied into the runtime image"
    );
    assert!(text.contains("ENTRYPOINT [\"msgxc\"]"));
    assert!(text.contains("USER "), "the runtime does not run as root");
}
