//! Generates the client from the service's committed OpenAPI document (which a test of the service keeps
//! equal to what the code produces), so the client always matches the API of this checkout.

use std::{env, fs, path::Path};

fn main() {
    let document = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
    println!("cargo:rerun-if-changed={}", document.display());
    let text = fs::read_to_string(&document).expect("docs/openapi.json is readable");
    // progenitor decodes only `application/json` bodies and hands back any other as a byte stream; the error
    // answers are problem documents (`application/problem+json`, JSON too), so that they decode into
    // `types::Problem`.
    let text = text.replace("\"application/problem+json\"", "\"application/json\"");
    let spec: openapiv3::OpenAPI = serde_json::from_str(&text).expect("docs/openapi.json is an OpenAPI 3.0 document");
    let tokens = progenitor::Generator::default().generate_tokens(&spec).expect("progenitor generates the client");
    let file: syn::File = syn::parse2(tokens).expect("the generated code parses");
    let out = Path::new(&env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("client.rs");
    fs::write(out, prettyplease::unparse(&file)).expect("the generated client is written");
}
