//! The deployment files agree with the binary: the Kubernetes manifests in
//! `deploy/kubernetes/` and the compose file's `cluster` profile set only variables the
//! binary reads, with values it accepts, on the port it listens on, with probes on the
//! paths it serves.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use clap::Parser;
use serde_yaml_ng::Value;

#[derive(Parser)]
struct Wrap {
    #[command(flatten)]
    config: stockline::config::Config,
}

/// Read by the logger, not by the command line.
const LOGGER: &str = "RUST_LOG";

/// The variables `stockline serve` reads, from its own help.
fn known_variables() -> BTreeSet<String> {
    let help = std::process::Command::new(testkit::binary())
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    let mut known: BTreeSet<String> = help
        .split("[env: ")
        .skip(1)
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect()
        })
        .collect();
    known.insert(LOGGER.to_owned());
    assert!(known.contains("STOCKLINE_CLUSTER_NATS_URL"), "{known:?}");
    known
}

/// Parses `variables` as the binary would (each as its flag); answers the configuration.
fn accepted(variables: &BTreeMap<String, String>) -> stockline::config::Config {
    let mut args = vec!["stockline".to_owned()];
    for (name, value) in variables.iter().filter(|(name, _)| *name != LOGGER) {
        let flag = name
            .strip_prefix("STOCKLINE_")
            .unwrap_or(name)
            .to_lowercase()
            .replace('_', "-");
        args.extend([format!("--{flag}"), value.clone()]);
    }
    match Wrap::try_parse_from(&args) {
        Ok(wrap) => wrap.config,
        Err(error) => panic!("the binary refuses {args:?}: {error}"),
    }
}

/// Every document of every YAML file in `dir`.
fn documents(dir: &Path) -> Vec<Value> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut documents = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for document in serde_yaml_ng::Deserializer::from_str(&text) {
            let value: Value = serde::Deserialize::deserialize(document)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            if !value.is_null() {
                documents.push(value);
            }
        }
    }
    documents
}

fn of_kind<'a>(documents: &'a [Value], kind: &str) -> Vec<&'a Value> {
    documents.iter().filter(|d| d["kind"] == kind).collect()
}

fn named<'a>(documents: &'a [Value], kind: &str, name: &str) -> &'a Value {
    of_kind(documents, kind)
        .into_iter()
        .find(|d| d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

fn string_map(value: &Value) -> BTreeMap<String, String> {
    value
        .as_mapping()
        .unwrap()
        .iter()
        .map(|(k, v)| (text(k), text(v)))
        .collect()
}

fn host_of(url: &str) -> &str {
    let rest = url.split("://").nth(1).unwrap();
    let rest = rest.rsplit('@').next().unwrap();
    rest.split([':', '/']).next().unwrap()
}

#[test]
fn the_kubernetes_manifests_match_the_binary() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
    let documents = documents(&dir);
    let known = known_variables();

    // Every file is in the kustomization, and every resource it names exists.
    let kustomization: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap())
            .unwrap();
    let listed: BTreeSet<String> = kustomization["resources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(text)
        .collect();
    let files: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".yaml") && name != "kustomization.yaml")
        .collect();
    assert_eq!(listed, files);

    let nodes = named(&documents, "StatefulSet", "stockline");
    let pod = &nodes["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    // The variables: from the ConfigMap and the Secret the container takes, and its own.
    let mut variables = BTreeMap::new();
    for source in container["envFrom"].as_sequence().unwrap() {
        let (kind, reference) = match (&source["configMapRef"], &source["secretRef"]) {
            (Value::Mapping(r), _) => ("ConfigMap", r),
            (_, Value::Mapping(r)) => ("Secret", r),
            _ => panic!("unknown envFrom {source:?}"),
        };
        let name = text(&reference[&Value::from("name")]);
        let data = match kind {
            "ConfigMap" => &named(&documents, kind, &name)["data"],
            _ => &named(&documents, kind, &name)["stringData"],
        };
        variables.extend(string_map(data));
    }
    let mut from_pod = BTreeSet::new();
    for variable in container["env"].as_sequence().unwrap() {
        let name = text(&variable["name"]);
        if variable["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name" {
            from_pod.insert(name.clone());
            variables.insert(name, "stockline-0".into());
        } else {
            variables.insert(name, text(&variable["value"]));
        }
    }
    let unknown: Vec<_> = variables.keys().filter(|v| !known.contains(*v)).collect();
    assert!(
        unknown.is_empty(),
        "variables the binary does not read: {unknown:?}"
    );
    assert!(
        from_pod.contains("STOCKLINE_NODE_ID"),
        "a node's id is its pod's stable name"
    );
    let config = accepted(&variables);
    assert!(
        config.cluster_nats_url.is_some(),
        "the manifests run a cluster"
    );
    assert_eq!(config.durability, stockline::config::Durability::Sync);

    // The port it listens on is the container's, the probes' and the Services' target.
    let port = config.addr.port();
    let ports = container["ports"].as_sequence().unwrap();
    let http = ports
        .iter()
        .find(|p| p["name"] == "http")
        .expect("a port named http");
    assert_eq!(http["containerPort"].as_u64(), Some(u64::from(port)));
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert!(get["port"] == "http" || get["port"].as_u64() == Some(u64::from(port)));
    }
    for service in of_kind(&documents, "Service")
        .into_iter()
        .filter(|s| s["spec"]["type"] != "ExternalName")
    {
        assert_eq!(
            service["spec"]["selector"],
            nodes["spec"]["template"]["metadata"]["labels"]
        );
        for p in service["spec"]["ports"].as_sequence().unwrap() {
            let target = &p["targetPort"];
            assert!(target == "http" || target.as_u64() == Some(u64::from(port)));
        }
    }
    assert_eq!(
        nodes["spec"]["serviceName"],
        named(&documents, "Service", "stockline-nodes")["metadata"]["name"]
    );

    // PostgreSQL and NATS are external services the manifests name.
    let external: BTreeSet<String> = of_kind(&documents, "Service")
        .into_iter()
        .filter(|s| s["spec"]["type"] == "ExternalName")
        .map(|s| text(&s["metadata"]["name"]))
        .collect();
    for url in [
        &config.database_url,
        config.cluster_nats_url.as_ref().unwrap(),
    ] {
        assert!(
            external.contains(host_of(url)),
            "{url} names no external service"
        );
    }
    // The JWT secret is one every node shares, long enough to be accepted (checked by
    // parsing above); the pod runs as the image's unprivileged user.
    assert!(config.jwt_secret.is_some());
    let dockerfile =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile")).unwrap();
    let uid = text(&pod["securityContext"]["runAsUser"]);
    assert!(
        dockerfile.contains(&format!("--uid {uid}")),
        "runAsUser {uid}"
    );
}

#[test]
fn the_compose_cluster_profile_matches_the_binary() {
    let mut compose: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docker-compose.yml"))
            .unwrap(),
    )
    .unwrap();
    // The nodes share their definition through `<<:` merge keys.
    compose.apply_merge().unwrap();
    let known = known_variables();
    let services = compose["services"].as_mapping().unwrap();
    let in_cluster: Vec<(String, &Value)> = services
        .iter()
        .filter(|(_, s)| {
            s["profiles"]
                .as_sequence()
                .is_some_and(|p| p.contains(&Value::from("cluster")))
        })
        .map(|(name, s)| (text(name), s))
        .collect();
    let nodes: Vec<_> = in_cluster
        .iter()
        .filter(|(_, s)| s["environment"]["STOCKLINE_CLUSTER_NATS_URL"].is_string())
        .collect();
    assert_eq!(nodes.len(), 3, "three nodes");
    let mut ids = BTreeSet::new();
    let mut host_ports = BTreeSet::new();
    let single_database = text(&services[&Value::from("stockline")]["environment"]["DATABASE_URL"]);
    for (name, node) in nodes {
        let variables = string_map(&node["environment"]);
        let unknown: Vec<_> = variables.keys().filter(|v| !known.contains(*v)).collect();
        assert!(unknown.is_empty(), "{name}: unknown {unknown:?}");
        let config = accepted(&variables);
        ids.insert(config.node_id.clone().unwrap());
        assert_ne!(
            config.database_url, single_database,
            "a cluster never shares the single server's database"
        );
        let nats = host_of(config.cluster_nats_url.as_ref().unwrap()).to_owned();
        assert!(
            in_cluster.iter().any(|(service, _)| *service == nats),
            "{name}: NATS at {nats} is in the profile"
        );
        let port = text(&node["ports"][0]);
        let (host, container) = port.split_once(':').unwrap();
        assert_eq!(container, config.addr.port().to_string(), "{name}");
        host_ports.insert(host.to_owned());
        let probe = text(&node["healthcheck"]["test"][3]);
        assert!(probe.contains("/readyz"), "{name}: {probe}");
    }
    assert_eq!(ids.len(), 3, "each node has its own id");
    assert_eq!(host_ports.len(), 3, "each node its own port");
}

/// The image builds from the Dockerfile's copies alone: cargo loads every workspace member
/// (the test kit too), so each must be copied in, or `docker build` fails at its manifest.
#[test]
fn the_dockerfile_copies_every_workspace_member() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let members = manifest
        .lines()
        .find_map(|l| l.strip_prefix("members = ["))
        .expect("the workspace lists its members on one line");
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    for member in members.trim_end_matches(']').split(',') {
        let member = member.trim().trim_matches('"');
        if member == "." {
            continue;
        }
        assert!(
            dockerfile.contains(&format!("COPY {member} ./{member}")),
            "the Dockerfile does not copy the workspace member {member}"
        );
    }
}
