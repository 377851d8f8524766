//! `portico check [--filter NAME] FILE...`: checks every Portico filter configuration in each
//! file (an Envoy config, Istio WasmPlugin manifests, or with `--filter`, a bare filter
//! configuration). Prints every error with its JSON path, and a note for what it could not
//! check; exits 1 if any configuration is invalid or a file holds none, 2 on usage errors.

use std::process::ExitCode;

fn usage() -> ExitCode {
    eprintln!("usage: portico check [--filter auth|rate-limit|header-routing|body-transform|cache] FILE...");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        return usage();
    };
    if command != "check" {
        return usage();
    }
    let (filter, files) = match rest {
        [flag, name, files @ ..] if flag == "--filter" => (Some(name.as_str()), files),
        files => (None, files),
    };
    if files.is_empty() {
        return usage();
    }
    let mut failed = false;
    // Every document of every file, for what spans them: the order of Istio's WasmPlugins.
    let mut all_docs: Vec<(&str, serde_json::Value)> = Vec::new();
    for file in files {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                println!("{file}: cannot read: {e}");
                failed = true;
                continue;
            }
        };
        if let Some(filter) = filter {
            match portico_check::check_filter(filter, text.as_bytes()) {
                Ok(()) => println!("{file}: {filter}: ok"),
                Err(errors) => {
                    failed = true;
                    for e in errors.list() {
                        println!("{file}: {filter}: {e}");
                    }
                }
            }
            continue;
        }
        let docs = match portico_check::parse_documents(&text) {
            Ok(d) => d,
            Err(e) => {
                println!("{file}: not valid YAML or JSON: {e}");
                failed = true;
                continue;
            }
        };
        let findings: Vec<_> = docs.iter().flat_map(portico_check::check_document).collect();
        all_docs.extend(docs.into_iter().map(|d| (file.as_str(), d)));
        if findings.is_empty() {
            println!("{file}: no Portico filter configuration found");
            failed = true;
        }
        for f in findings {
            match f.result {
                Ok(()) => println!("{file}: {} at {}: ok", f.filter, f.location),
                Err(errors) => {
                    failed = true;
                    for e in errors.list() {
                        println!("{file}: {} at {}: {e}", f.filter, f.location);
                    }
                }
            }
            for note in f.notes {
                println!("{file}: {} at {}: note: {note}", f.filter, f.location);
            }
        }
    }
    let values: Vec<&serde_json::Value> = all_docs.iter().map(|(_, d)| d).collect();
    for problem in portico_check::check_plugin_order(&values) {
        failed = true;
        let file = all_docs
            .iter()
            .find(|(_, d)| d.pointer("/metadata/name").and_then(serde_json::Value::as_str) == Some(&problem.plugin))
            .map_or("", |(f, _)| f);
        println!(
            "{file}: {} at WasmPlugin {}: $: {}",
            problem.filter, problem.plugin, problem.message
        );
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
