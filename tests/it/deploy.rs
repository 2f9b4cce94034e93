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
