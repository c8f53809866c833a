//! The configuration reference in `docs/CONFIGURATION.md` is generated, not
//! written: this test reads `src/config.rs` (every field of `Config` and of
//! its sections, with its `///` doc comment and type), takes the defaults
//! from `Config::default()`, derives each environment variable the way
//! `Config::load` maps them, adds the command-line flags of
//! `navcast::cli::Cli`, renders the tables and compares them with the block
//! between the markers in the document. A mismatch fails with the first
//! differing line and the command that rewrites the block:
//!
//! ```sh
//! BLESS=1 cargo test --test config_reference
//! ```
//!
//! (`BLESS`, not `NAVCAST_BLESS`: a node refuses to start with an unknown
//! `NAVCAST_*` variable, see `unknown_navcast_variables_are_refused`.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use navcast::Config;
use navcast::cli::Cli;
use navcast::config::Overrides;

const DOC: &str = "docs/CONFIGURATION.md";
const BEGIN: &str = "<!-- BEGIN GENERATED config-reference: do not edit; change src/config.rs or src/cli.rs and run `BLESS=1 cargo test --test config_reference` -->";
const END: &str = "<!-- END GENERATED config-reference -->";
const BLESS_HINT: &str = "BLESS=1 cargo test --test config_reference";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One field of a struct in `src/config.rs`.
#[derive(Debug, Clone)]
struct Field {
    name: String,
    ty: String,
    doc: String,
    /// `#[serde(with = "humantime_serde")]`: written as `30s`, `5m`, `7days`.
    duration: bool,
}

/// What the source says: structs with their fields, enums with their wire
/// spellings, and the `SECTIONS` reachable from the environment.
#[derive(Debug, Default)]
struct Source {
    structs: BTreeMap<String, Vec<Field>>,
    enums: BTreeMap<String, Vec<String>>,
    sections: Vec<String>,
}

fn doc_text(lines: &[String]) -> String {
    lines.join(" ").replace('|', "\\|")
}

/// `rename_all = "…"` of serde, for the spellings the config types use.
fn rename(ident: &str, rule: Option<&str>) -> String {
    match rule {
        None => ident.to_string(),
        Some("lowercase") => ident.to_ascii_lowercase(),
        Some("UPPERCASE") => ident.to_ascii_uppercase(),
        Some(other) => panic!("config_reference: teach rename() the serde rule {other:?}"),
    }
}

fn quoted_after(attr: &str, key: &str) -> Option<String> {
    let start = attr.find(key)? + key.len();
    let rest = attr[start..].trim_start().strip_prefix('=')?.trim_start();
    let rest = rest.strip_prefix('"')?;
    Some(rest[..rest.find('"')?].to_string())
}

/// A small line-based reader for the shapes `src/config.rs` uses: outer
/// attributes and doc comments, then `pub struct X {` with `pub name: Type,`
/// fields, or `pub enum X {` with unit variants, each closed by `}` in
/// column 0.
fn parse_source(text: &str) -> Source {
    enum Mode {
        Top,
        Struct(String),
        Enum(String, Option<String>),
    }
    let mut src = Source::default();
    let mut mode = Mode::Top;
    let mut docs: Vec<String> = Vec::new();
    let mut attrs: Vec<String> = Vec::new();
    let mut lines = text.lines();
    while let Some(raw) = lines.next() {
        let line = raw.trim();
        if line.starts_with("#[cfg(test)]") {
            break;
        }
        if let Some(d) = line.strip_prefix("///") {
            docs.push(d.strip_prefix(' ').unwrap_or(d).to_string());
            continue;
        }
        if line.starts_with("#[") {
            let mut attr = line.to_string();
            while !attr.ends_with(']') {
                match lines.next() {
                    Some(more) => attr.push_str(more.trim()),
                    None => break,
                }
            }
            attrs.push(attr);
            continue;
        }
        if line.starts_with("const SECTIONS") {
            // rustfmt may spread the list over several lines.
            let mut whole = line.to_string();
            while !whole
                .split_once("= [")
                .is_some_and(|(_, list)| list.contains(']'))
            {
                match lines.next() {
                    Some(more) => whole.push_str(more.trim()),
                    None => break,
                }
            }
            let line = whole.as_str();
            let list = &line[line.find("= [").expect("SECTIONS = [ … ]") + 3..];
            let list = &list[..list.find(']').expect("SECTIONS = [ … ]")];
            src.sections = list
                .split(',')
                .map(|s| s.trim().trim_matches('"').to_string())
                .filter(|s| !s.is_empty())
                .collect();
        }
        match &mut mode {
            Mode::Top => {
                if let Some(rest) = line.strip_prefix("pub struct ")
                    && let Some(name) = rest.strip_suffix(" {")
                {
                    src.structs.insert(name.to_string(), Vec::new());
                    mode = Mode::Struct(name.to_string());
                } else if let Some(rest) = line.strip_prefix("pub enum ")
                    && let Some(name) = rest.strip_suffix(" {")
                {
                    let rule = attrs.iter().find_map(|a| quoted_after(a, "rename_all"));
                    src.enums.insert(name.to_string(), Vec::new());
                    mode = Mode::Enum(name.to_string(), rule);
                }
            }
            Mode::Struct(name) => {
                if raw.starts_with('}') {
                    mode = Mode::Top;
                } else if let Some(rest) = line.strip_prefix("pub ")
                    && let Some((field, ty)) = rest.split_once(": ")
                {
                    let duration = attrs.iter().any(|a| a.contains("humantime_serde"));
                    src.structs.get_mut(name.as_str()).unwrap().push(Field {
                        name: field.to_string(),
                        ty: ty.trim_end_matches(',').to_string(),
                        doc: doc_text(&docs),
                        duration,
                    });
                }
            }
            Mode::Enum(name, rule) => {
                if raw.starts_with('}') {
                    mode = Mode::Top;
                } else if let Some(ident) = line.strip_suffix(',')
                    && !ident.is_empty()
                    && ident.chars().all(|c| c.is_ascii_alphanumeric())
                {
                    let spelled = attrs
                        .iter()
                        .find_map(|a| quoted_after(a, "rename "))
                        .unwrap_or_else(|| rename(ident, rule.as_deref()));
                    src.enums.get_mut(name.as_str()).unwrap().push(spelled);
                }
            }
        }
        docs.clear();
        attrs.clear();
    }
    src
}

/// One row of the settings table.
#[derive(Debug)]
struct Setting {
    key: String,
    env: String,
    ty: String,
    default: String,
    /// The default as an environment value, for the reachability check;
    /// `None` when unset or random.
    env_value: Option<String>,
    doc: String,
}

fn type_name(src: &Source, field: &Field) -> String {
    if field.duration {
        return "duration".into();
    }
    let ty = field
        .ty
        .strip_prefix("Option<")
        .and_then(|t| t.strip_suffix('>'))
        .unwrap_or(&field.ty);
    match ty {
        "SocketAddr" => "address (`host:port`)".into(),
        "String" => "string".into(),
        "PathBuf" => "path".into(),
        "bool" => "boolean".into(),
        "f64" => "number".into(),
        "u16" | "u32" | "u64" | "usize" | "i32" | "i64" => "integer".into(),
        "Vec<Network>" => "list of addresses or CIDR networks".into(),
        other => match src.enums.get(other) {
            Some(values) => format!(
                "one of {}",
                values
                    .iter()
                    .map(|v| format!("`{v}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => panic!(
                "config_reference: field `{}` has type `{other}`; teach type_name() how to show it",
                field.name
            ),
        },
    }
}

fn render_value(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        // A list is comma-separated in the environment; an empty one is unset.
        serde_json::Value::Array(items) if items.is_empty() => None,
        serde_json::Value::Array(items) => Some(
            items
                .iter()
                .map(|i| render_value(i).unwrap_or_default())
                .collect::<Vec<_>>()
                .join(","),
        ),
        other => panic!("config_reference: no rendering for a default of {other}"),
    }
}

/// Every setting, in source order: top-level keys, then each section.
fn settings(src: &Source) -> Vec<Setting> {
    let first = serde_json::to_value(Config::default()).unwrap();
    let second = serde_json::to_value(Config::default()).unwrap();
    let top = src
        .structs
        .get("Config")
        .expect("src/config.rs defines pub struct Config");

    let mut out = Vec::new();
    let mut push = |section: Option<&str>, field: &Field| {
        let (a, b) = match section {
            Some(s) => (&first[s][&field.name], &second[s][&field.name]),
            None => (&first[&field.name], &second[&field.name]),
        };
        assert!(
            !field.doc.is_empty(),
            "src/config.rs: `{}` has no /// doc comment; every setting needs one (it becomes the reference)",
            field.name
        );
        let (default, env_value) = if a != b {
            ("random per start".to_string(), None)
        } else {
            match render_value(a) {
                Some(v) => (format!("`{v}`"), Some(v)),
                None => ("unset".to_string(), None),
            }
        };
        let (key, env) = match section {
            Some(s) => (
                format!("{s}.{}", field.name),
                format!("NAVCAST_{}_{}", s, field.name).to_ascii_uppercase(),
            ),
            None => (
                field.name.clone(),
                format!("NAVCAST_{}", field.name).to_ascii_uppercase(),
            ),
        };
        out.push(Setting {
            key,
            env,
            ty: type_name(src, field),
            default,
            env_value,
            doc: field.doc.clone(),
        });
    };

    let mut sections = Vec::new();
    for field in top {
        if src.structs.contains_key(&field.ty) {
            sections.push(field);
            continue;
        }
        for s in &src.sections {
            assert!(
                !field.name.starts_with(&format!("{s}_")),
                "top-level key `{}` starts with the section `{s}_`: Config::load would read \
                 NAVCAST_{} as a key of [{s}]",
                field.name,
                field.name.to_ascii_uppercase()
            );
        }
        push(None, field);
    }
    let names: BTreeSet<&str> = sections.iter().map(|f| f.name.as_str()).collect();
    let listed: BTreeSet<&str> = src.sections.iter().map(String::as_str).collect();
    assert_eq!(
        names, listed,
        "the sections of Config and SECTIONS in src/config.rs differ: a section missing from \
         SECTIONS cannot be set from the environment"
    );
    for section in sections {
        let fields = &src.structs[&section.ty];
        let keys: BTreeSet<&str> = fields.iter().map(|f| f.name.as_str()).collect();
        let serialized: BTreeSet<&str> = first[&section.name]
            .as_object()
            .expect("a section serialises as a table")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys, serialized,
            "[{}]: the fields read from src/config.rs and the serialised keys differ",
            section.name
        );
        for field in fields {
            push(Some(&section.name), field);
        }
    }
    let top_keys: BTreeSet<&str> = top.iter().map(|f| f.name.as_str()).collect();
    let serialized: BTreeSet<&str> = first
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        top_keys, serialized,
        "Config: the fields read from src/config.rs and the serialised keys differ"
    );
    out
}

fn cli_rows() -> Vec<[String; 3]> {
    let mut cmd = Cli::command();
    cmd.build();
    let top = parse_source(&std::fs::read_to_string(root().join("src/config.rs")).unwrap());
    let top_keys: BTreeSet<String> = top.structs["Config"]
        .iter()
        .map(|f| f.name.clone())
        .collect();
    let mut rows = Vec::new();
    for arg in cmd.get_arguments() {
        if arg.is_hide_set() {
            continue;
        }
        let mut flag = String::new();
        if let Some(s) = arg.get_short() {
            flag.push_str(&format!("-{s}, "));
        }
        let long = arg.get_long().unwrap_or_else(|| arg.get_id().as_str());
        flag.push_str(&format!("--{long}"));
        if arg.get_action().takes_values() {
            let value = arg
                .get_value_names()
                .and_then(|v| v.first())
                .map(|v| v.to_string())
                .unwrap_or_else(|| arg.get_id().as_str().to_ascii_uppercase());
            flag.push_str(&format!(" <{value}>"));
        }
        let mut help = arg
            .get_help()
            .map(|h| h.to_string())
            .unwrap_or_default()
            .replace('|', "\\|");
        let values: Vec<String> = arg
            .get_possible_values()
            .iter()
            .filter(|v| !v.is_hide_set())
            .map(|v| format!("`{}`", v.get_name()))
            .collect();
        if !values.is_empty() {
            help = format!("{help}: one of {}", values.join(", "));
        }
        let key = long.replace('-', "_");
        let overrides = if top_keys.contains(&key) {
            format!("`{key}`")
        } else {
            "–".to_string()
        };
        rows.push([format!("`{flag}`"), overrides, help]);
    }
    rows
}

fn render() -> String {
    let src = parse_source(&std::fs::read_to_string(root().join("src/config.rs")).unwrap());
    let mut out = String::new();
    out.push_str("### Settings\n\n");
    out.push_str("| key (TOML) | environment variable | type | default | meaning |\n");
    out.push_str("|---|---|---|---|---|\n");
    for s in settings(&src) {
        out.push_str(&format!(
            "| `{}` | `{}` | {} | {} | {} |\n",
            s.key, s.env, s.ty, s.default, s.doc
        ));
    }
    out.push_str("\n### Command-line flags\n\n");
    out.push_str("| flag | overrides | meaning |\n");
    out.push_str("|---|---|---|\n");
    for [flag, key, help] in cli_rows() {
        out.push_str(&format!("| {flag} | {key} | {help} |\n"));
    }
    out
}

/// The text between the markers, and the document around it.
fn split(doc: &str) -> (&str, &str, &str) {
    let b = doc
        .find(BEGIN)
        .unwrap_or_else(|| panic!("{DOC}: marker line missing:\n{BEGIN}"));
    let inner_start = b + BEGIN.len();
    let e = doc[inner_start..]
        .find(END)
        .map(|i| i + inner_start)
        .unwrap_or_else(|| panic!("{DOC}: marker line missing:\n{END}"));
    (&doc[..inner_start], &doc[inner_start..e], &doc[e..])
}

fn first_difference(expected: &str, found: &str) -> String {
    let (mut e, mut f) = (expected.lines(), found.lines());
    let mut n = 1;
    loop {
        match (e.next(), f.next()) {
            (None, None) => return "(only whitespace at the ends differs)".into(),
            (x, y) if x == y => n += 1,
            (x, y) => {
                return format!(
                    "first difference at line {n} of the generated block:\n  generated: {}\n  in {DOC}: {}",
                    x.unwrap_or("<end of block>"),
                    y.unwrap_or("<end of block>")
                );
            }
        }
    }
}

#[test]
fn configuration_reference_matches_the_code() {
    let path = root().join(DOC);
    let doc = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{DOC}: {e}"));
    let (head, inner, tail) = split(&doc);
    let generated = render();
    let expected = format!("\n{generated}");
    if inner == expected {
        return;
    }
    if std::env::var_os("BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, format!("{head}{expected}{tail}")).unwrap();
        eprintln!("{DOC}: configuration reference rewritten");
        return;
    }
    panic!(
        "{DOC} is out of date with src/config.rs / src/cli.rs.\n{}\n\nRegenerate it with:\n  {BLESS_HINT}",
        first_difference(&expected, inner)
    );
}

/// Every documented variable is one `Config::load` accepts (settings reject
/// unknown keys), and every documented default reads back as itself.
#[test]
fn documented_variables_and_defaults_load() {
    let src = parse_source(&std::fs::read_to_string(root().join("src/config.rs")).unwrap());
    let rows = settings(&src);
    let env: Vec<(String, String)> = rows
        .iter()
        .filter_map(|s| Some((s.env.clone(), s.env_value.clone()?)))
        .collect();
    assert!(env.len() > 30, "expected most settings to have a default");
    let loaded = Config::load(None, env.clone(), &Overrides::default())
        .unwrap_or_else(|e| panic!("the documented defaults as environment do not load: {e}"));
    let loaded = serde_json::to_value(loaded).unwrap();
    for s in &rows {
        let Some(value) = &s.env_value else { continue };
        let got = match s.key.split_once('.') {
            Some((section, key)) => &loaded[section][key],
            None => &loaded[&s.key],
        };
        assert_eq!(
            render_value(got).as_deref(),
            Some(value.as_str()),
            "{} = {value} read back differently",
            s.env
        );
    }
    // And each variable lands on its own key: a non-default value through
    // the environment changes exactly the documented setting.
    let one = Config::load(
        None,
        [("NAVCAST_WS_MAX_FRAME_BYTES".to_string(), "1234".to_string())],
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(one.ws.max_frame_bytes, 1234);
}

/// The reference says so: a misspelt `NAVCAST_*` variable stops the node
/// instead of being ignored.
#[test]
fn unknown_navcast_variables_are_refused() {
    let err = Config::load(
        None,
        [("NAVCAST_BLESS".to_string(), "1".to_string())],
        &Overrides::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("bless"), "{err}");
}

/// `config/navcast.example.toml` claims to hold every key with its default
/// (`navcast --node-id node-1 --print-config`); keep that true.
#[test]
fn example_config_holds_every_default() {
    let path: &Path = &root().join("config/navcast.example.toml");
    let text = std::fs::read_to_string(path).unwrap();
    let example: toml::Table = toml::from_str(&text).unwrap();
    let mut defaults = Config {
        node_id: "node-1".into(),
        ..Config::default()
    };
    defaults.auth.seed_file = Some("config/accounts.toml".into());
    let defaults: toml::Table = toml::from_str(&toml::to_string(&defaults).unwrap()).unwrap();
    assert_eq!(
        example, defaults,
        "config/navcast.example.toml differs from the defaults; regenerate it with \
         `cargo run -p navcast -- --node-id node-1 --print-config` (keep its header comment)"
    );
}
