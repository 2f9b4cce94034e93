//! deploy/Dockerfile builds what the workspace is: it cannot be built here (no Docker engine), so what it
//! must keep in step with is checked as text.

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{ROOT}/{path}")).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The quoted strings on the `key = …` line of a TOML file.
fn quoted(toml: &str, key: &str) -> Vec<String> {
    let line = toml.lines().find(|l| l.trim_start().starts_with(&format!("{key} ="))).expect("the key");
    line.split('"').skip(1).step_by(2).map(str::to_owned).collect()
}

#[test]
fn the_dockerfile_stubs_every_workspace_member_and_uses_a_new_enough_toolchain() {
    let manifest = read("Cargo.toml");
    let dockerfile = read("deploy/Dockerfile");
    for member in quoted(&manifest, "members").iter().filter(|m| m.as_str() != ".") {
        let copy = format!("COPY {member}/Cargo.toml {member}/Cargo.toml");
        assert!(dockerfile.contains(&copy), "deploy/Dockerfile must `{copy}` (cargo loads every member)");
        assert!(dockerfile.contains(&format!("{member}/src")), "deploy/Dockerfile must stub {member}/src");
    }
    let rust_version = quoted(&manifest, "rust-version");
    let wanted = rust_version.first().expect("rust-version");
    let image = dockerfile.lines().find_map(|l| l.strip_prefix("FROM rust:")).expect("a rust builder image");
    let version = image.split('-').next().unwrap_or_default();
    let parse = |v: &str| v.split('.').map(|p| p.parse::<u32>().unwrap_or(0)).collect::<Vec<_>>();
    assert!(parse(version) >= parse(wanted), "builder image rust:{version} is older than rust-version {wanted}");
}

/// A YAML file of the repository as JSON.
fn yaml(path: &str) -> serde_json::Value {
    use figment::providers::Format;
    figment::Figment::from(figment::providers::Yaml::file_exact(format!("{ROOT}/{path}")))
        .extract()
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A manifest of deploy/kubernetes as JSON.
fn manifest(file: &str) -> serde_json::Value {
    yaml(&format!("deploy/kubernetes/{file}"))
}

/// The variables Kubernetes gives every pod of the namespace for each Service of the manifests (service links):
/// `TENANTMQ_API_SERVICE_HOST`, `TENANTMQ_API_PORT=tcp://…`, … The manifests' pods turn them off, but a pod
/// spec written otherwise (an operator's own, a Helm chart's) gets them, and must start all the same.
fn service_links() -> Vec<(String, String)> {
    let service = manifest("service.yaml");
    let name = service["metadata"]["name"].as_str().expect("a name").to_ascii_uppercase().replace('-', "_");
    let address = "10.96.0.12";
    let mut links = vec![(format!("{name}_SERVICE_HOST"), address.to_owned())];
    for (i, port) in service["spec"]["ports"].as_array().expect("ports").iter().enumerate() {
        let number = port["port"].as_u64().expect("a port");
        let protocol = port["protocol"].as_str().unwrap_or("TCP");
        let url = format!("{}://{address}:{number}", protocol.to_ascii_lowercase());
        let prefix = format!("{name}_PORT_{number}_{protocol}");
        if i == 0 {
            links.push((format!("{name}_SERVICE_PORT"), number.to_string()));
            links.push((format!("{name}_PORT"), url.clone()));
        }
        if let Some(port_name) = port["name"].as_str() {
            links.push((format!("{name}_SERVICE_PORT_{}", port_name.to_ascii_uppercase()), number.to_string()));
        }
        links.push((prefix.clone(), url));
        links.push((format!("{prefix}_PROTO"), protocol.to_ascii_lowercase()));
        links.push((format!("{prefix}_PORT"), number.to_string()));
        links.push((format!("{prefix}_ADDR"), address.to_owned()));
    }
    links
}

/// What the pods would run with: the ConfigMap's file, the Deployment's variables (placeholder values for the
/// Secret's) and the Services' links, through the real binary, which refuses unknown keys. A graceful stop must
/// end before the kubelet's SIGKILL.
#[test]
fn the_kubernetes_configuration_loads_and_the_grace_period_outlasts_a_graceful_stop() {
    let file = std::env::temp_dir().join(format!("tenantmq-k8s-{}.yaml", uuid::Uuid::new_v4()));
    let configmap = manifest("configmap.yaml");
    std::fs::write(&file, configmap["data"]["config.yaml"].as_str().expect("config.yaml")).expect("written");
    let file = file.to_str().expect("utf-8 path");
    for deployment in ["deployment-api.yaml", "deployment-worker.yaml"] {
        let pod = &manifest(deployment)["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        let env: Vec<(&str, &str)> = container["env"]
            .as_array()
            .expect("env")
            .iter()
            .map(|variable| variable["name"].as_str().expect("name"))
            .map(|name| match name {
                "TENANTMQ_DATABASE__URL" => (name, "postgres://tenantmq:secret@postgres:5432/tenantmq"),
                "TENANTMQ_RABBITMQ__URL" => (name, "amqps://tenantmq:secret@rabbitmq:5671/%2f"),
                _ => (name, "a-placeholder-secret-of-more-than-32-bytes"),
            })
            .collect();
        assert_eq!(pod["enableServiceLinks"], false, "{deployment}: no Service's variables in the environment");
        let links = service_links();
        let env: Vec<(&str, &str)> =
            env.into_iter().chain(links.iter().map(|(n, v)| (n.as_str(), v.as_str()))).collect();
        let args: Vec<&str> = container["args"].as_array().expect("args").iter().filter_map(|a| a.as_str()).collect();
        let serve = args.iter().position(|a| *a == "serve").expect("serve");
        assert_eq!(args[..serve], ["--config", "/etc/tenantmq/config.yaml"], "{deployment}");
        let output = crate::config_cli::tenantmq(&["--config", file, "config"], &env);
        assert!(output.status.success(), "{deployment}: {}", String::from_utf8_lossy(&output.stderr));
        let config: serde_json::Value = serde_json::from_slice(&output.stdout).expect("config JSON");
        assert_eq!(config["server"]["host"], "0.0.0.0", "{deployment}: reachable from the Service");
        assert_eq!(config["database"]["migrate_on_start"], false, "{deployment}: the Job migrates");
        let shutdown =
            humantime::parse_duration(config["shutdown_timeout"].as_str().expect("duration")).expect("parsed");
        let pause = container["lifecycle"]["preStop"]["sleep"]["seconds"].as_u64().unwrap_or(0);
        let grace = pod["terminationGracePeriodSeconds"].as_u64().expect("terminationGracePeriodSeconds");
        let stop = shutdown + tenantmq::STOP_PAST_SHUTDOWN_TIMEOUT;
        assert!(grace > stop.as_secs() + pause, "{deployment}: {grace}s grace for a {stop:?} stop after {pause}s");
    }
}

/// Compose waits `stop_grace_period` before its SIGKILL: longer than the graceful stop its service is set for.
#[test]
fn the_compose_grace_period_outlasts_a_graceful_stop() {
    let compose = yaml("deploy/docker-compose.yml");
    let service = &compose["services"]["app"];
    let duration =
        |text: &serde_json::Value| humantime::parse_duration(text.as_str().expect("a duration")).expect("parsed");
    let stop = duration(&service["environment"]["TENANTMQ_SHUTDOWN_TIMEOUT"]) + tenantmq::STOP_PAST_SHUTDOWN_TIMEOUT;
    let grace = duration(&service["stop_grace_period"]);
    assert!(grace > stop, "stop_grace_period {grace:?} for a stop of up to {stop:?}");
}

/// The autoscaling query operations.md explains is the one the ScaledObject asks.
#[test]
fn the_documented_autoscaling_query_is_the_manifests() {
    let scaled = manifest("scaledobject.yaml");
    let query = scaled["spec"]["triggers"][0]["metadata"]["query"].as_str().expect("the query");
    let guide = read("docs/operations.md");
    let documented = guide
        .split('`')
        .find(|quoted| quoted.starts_with("sum(max by (tenant_id)") && quoted.contains(" or "))
        .expect("the query in operations.md");
    assert_eq!(documented.replace('\n', " "), query);
}
