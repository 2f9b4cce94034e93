//! The layer rule of docs/architecture.md ("Module map and layers"), checked on the source: every top-level
//! module of `src/` has a layer, and its `crate::…` paths may name only modules of a lower layer, or of its
//! own layer as long as no circle forms. A new top-level module fails here until it is given a layer.
//!
//! `cargo test --test layers -- --nocapture` prints the import graph between the top-level modules.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

/// Each top-level module and its layer; lower numbers are further down. `lib.rs` and `main.rs` are above all.
const LAYERS: &[(&str, u8)] = &[
    ("domain", 0),
    ("backoff", 0),
    ("detach", 0),
    ("config", 1),
    ("telemetry", 2),
    ("metrics", 2),
    ("auth", 2),
    ("store", 3),
    ("broker", 3),
    ("projectors", 4),
    ("runtime", 4),
    ("app", 5),
    ("api", 6),
];

type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<PathBuf>>>;

#[test]
fn imports_point_down_and_form_no_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = import_graph(&src);
    print_graph(&graph);

    let layers: BTreeMap<&str, u8> = LAYERS.iter().copied().collect();
    let mut problems = Vec::new();
    for module in graph.keys() {
        if !layers.contains_key(module.as_str()) {
            problems.push(format!("`{module}` has no layer: add it to LAYERS here and to docs/architecture.md"));
        }
    }
    for (from, targets) in &graph {
        for (to, files) in targets {
            let (Some(&from_layer), Some(&to_layer)) = (layers.get(from.as_str()), layers.get(to.as_str())) else {
                continue;
            };
            if from_layer >= to_layer {
                continue;
            }
            problems.push(format!(
                "`{from}` (layer {from_layer}) imports `{to}` (layer {to_layer}), which is above it, in {}",
                list(files)
            ));
        }
    }
    for circle in circles(&graph) {
        problems.push(format!("import circle between {}", circle.join(", ")));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The API reaches PostgreSQL, RabbitMQ and the runtime only through the use cases in `app/`; the one
/// exception is `api/problem.rs`, which maps every layer's errors to problem documents.
#[test]
fn handlers_use_the_application_layer_only() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = import_graph(&src);
    let below_app = ["store", "broker", "runtime", "projectors"];
    let error_mapping = Path::new("src/api/problem.rs");
    let problems: Vec<String> = graph
        .get("api")
        .into_iter()
        .flatten()
        .filter(|(to, _)| below_app.contains(&to.as_str()))
        .flat_map(|(to, files)| files.iter().filter(|file| *file != error_mapping).map(move |file| (to, file)))
        .map(|(to, file)| format!("{} imports `{to}`: call a use case in `app/` instead", file.display()))
        .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The domain is pure: its rules are decided without I/O, so that they are tested without any, and every
/// effect happens at the edges (`store`, `broker`, `runtime`, `api`).
#[test]
fn the_domain_does_no_io() {
    let domain = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/domain");
    let io_crates = ["tokio", "sea_orm", "sqlx", "lapin", "poem", "poem_openapi", "reqwest", "hyper"];
    let mut problems = Vec::new();
    for file in rust_files(&domain) {
        let code = without_comments(&fs::read_to_string(&file).expect("readable source"));
        for name in io_crates {
            let named = code.match_indices(name).any(|(at, _)| {
                let before = code[..at].chars().next_back();
                let after = code[at + name.len()..].chars().next();
                !before.is_some_and(|c| c.is_alphanumeric() || c == '_') && after == Some(':')
            });
            if named {
                problems.push(format!("{} names `{name}`", file.display()));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

fn list(files: &BTreeSet<PathBuf>) -> String {
    files.iter().map(|file| file.display().to_string()).collect::<Vec<_>>().join(", ")
}

fn print_graph(graph: &Graph) {
    for (from, targets) in graph {
        println!("{from} -> {}", targets.keys().cloned().collect::<Vec<_>>().join(", "));
    }
}

/// Top-level module → the top-level modules its files name with `crate::`, and in which files.
fn import_graph(src: &Path) -> Graph {
    let mut graph = Graph::new();
    for file in rust_files(src) {
        let relative = file.strip_prefix(src).expect("under src");
        let Some(module) = top_level_module(relative) else { continue };
        let entry = graph.entry(module.clone()).or_default();
        let text = fs::read_to_string(&file).expect("readable source");
        for target in crate_paths(&without_comments(&text)) {
            if target != module {
                entry.entry(target).or_default().insert(Path::new("src").join(relative));
            }
        }
    }
    graph
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).expect("readable directory") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
    files
}

/// `auth.rs` → `auth`, `api/problem.rs` → `api`; the crate roots (`lib.rs`, `main.rs`) are no module.
fn top_level_module(relative: &Path) -> Option<String> {
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_owned())
}

/// The text with `//` comments removed (doc links are no imports); `://` in URLs is kept.
fn without_comments(text: &str) -> String {
    text.lines()
        .map(|line| {
            let mut cut = line.len();
            let mut from = 0;
            while let Some(found) = line[from..].find("//") {
                let at = from + found;
                if !line[..at].ends_with(':') {
                    cut = at;
                    break;
                }
                from = at + 2;
            }
            &line[..cut]
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first segment of every `crate::` path, also inside `crate::{a::X, b::{Y, Z}}`.
fn crate_paths(code: &str) -> BTreeSet<String> {
    let mut modules = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let preceded_by_identifier =
            rest[..at].chars().next_back().is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':');
        rest = &rest[at + "crate::".len()..];
        if preceded_by_identifier {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item_start = true;
            for (index, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && !c.is_whitespace() => {
                        modules.insert(identifier(&group[index..]));
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            modules.insert(identifier(rest));
        }
    }
    modules.remove("");
    modules.remove("self");
    modules
}

fn identifier(text: &str) -> String {
    text.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()
}

/// Every strongly connected set of more than one module (Tarjan), each sorted.
fn circles(graph: &Graph) -> Vec<Vec<String>> {
    struct Search<'a> {
        graph: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        circles: Vec<Vec<String>>,
    }
    impl<'a> Search<'a> {
        fn visit(&mut self, module: &'a str) {
            let index = self.index.len();
            self.index.insert(module, index);
            self.low.insert(module, index);
            self.stack.push(module);
            for target in self.graph.get(module).into_iter().flat_map(|targets| targets.keys()) {
                if !self.index.contains_key(target.as_str()) {
                    self.visit(target);
                    let low = self.low[module].min(self.low[target.as_str()]);
                    self.low.insert(module, low);
                } else if self.stack.contains(&target.as_str()) {
                    let low = self.low[module].min(self.index[target.as_str()]);
                    self.low.insert(module, low);
                }
            }
            if self.low[module] == self.index[module] {
                let start = self.stack.iter().rposition(|m| *m == module).expect("on the stack");
                let mut component: Vec<String> = self.stack.drain(start..).map(str::to_owned).collect();
                if component.len() > 1 {
                    component.sort();
                    self.circles.push(component);
                }
            }
        }
    }
    let mut search =
        Search { graph, index: BTreeMap::new(), low: BTreeMap::new(), stack: Vec::new(), circles: Vec::new() };
    for module in graph.keys() {
        if !search.index.contains_key(module.as_str()) {
            search.visit(module);
        }
    }
    search.circles
}
