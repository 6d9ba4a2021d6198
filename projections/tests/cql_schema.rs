//! The CQL tables in `schema/cql/` are well formed: every table says which API call it serves,
//! uses known CQL types, and its primary key and clustering order name its own columns.
//! (The Scylla backend is not written yet; its statements will be checked against these
//! tables the same way.)

use std::collections::{BTreeMap, BTreeSet};

const TYPES: [&str; 9] = [
    "text",
    "int",
    "bigint",
    "uuid",
    "timeuuid",
    "timestamp",
    "boolean",
    "blob",
    "double",
];

#[derive(Debug)]
struct Table {
    comment: String,
    columns: BTreeMap<String, String>,
    partition: Vec<String>,
    clustering: Vec<String>,
    ordered: Vec<String>,
}

/// The `CREATE TABLE` statements of a CQL file, by name, with the comment lines before each.
fn tables(cql: &str) -> BTreeMap<String, Table> {
    let mut out = BTreeMap::new();
    let mut comment = String::new();
    let mut statement = String::new();
    for line in cql.lines() {
        let line = line.trim();
        if let Some(c) = line.strip_prefix("--") {
            if statement.is_empty() {
                comment.push_str(c.trim());
                comment.push(' ');
            }
            continue;
        }
        if line.is_empty() && statement.is_empty() {
            comment.clear();
            continue;
        }
        statement.push_str(line);
        statement.push(' ');
        if line.ends_with(';') {
            let (name, table) = parse(&statement, std::mem::take(&mut comment));
            assert!(
                out.insert(name.clone(), table).is_none(),
                "table {name} twice"
            );
            statement.clear();
        }
    }
    assert!(
        statement.trim().is_empty(),
        "unterminated statement: {statement}"
    );
    out
}

fn names(list: &str) -> Vec<String> {
    list.split(',')
        .map(|s| {
            s.trim()
                .trim_matches(|c| c == '(' || c == ')')
                .trim()
                .to_owned()
        })
        .filter(|s| !s.is_empty())
        .collect()
}

fn parse(statement: &str, comment: String) -> (String, Table) {
    let rest = statement
        .strip_prefix("CREATE TABLE IF NOT EXISTS ")
        .unwrap_or_else(|| panic!("not an idempotent CREATE TABLE: {statement}"));
    let (name, body) = rest.split_once('(').expect("column list");
    let name = name.trim().to_owned();
    // The column list ends at the parenthesis that closes the one after the name.
    let mut open = 1;
    let close = body
        .char_indices()
        .find_map(|(i, ch)| {
            match ch {
                '(' => open += 1,
                ')' => open -= 1,
                _ => {}
            }
            (open == 0).then_some(i)
        })
        .expect("closing parenthesis");
    let (defs, options) = (&body[..close], &body[close + 1..]);
    let mut columns = BTreeMap::new();
    let mut key: Option<(Vec<String>, Vec<String>)> = None;
    // Split the definitions on top-level commas.
    let mut depth = 0;
    let mut parts = vec![String::new()];
    for ch in defs.chars() {
        match ch {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(String::new());
                continue;
            }
            _ => {}
        }
        if let Some(last) = parts.last_mut() {
            last.push(ch);
        }
    }
    for part in parts.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
        if let Some(k) = part.strip_prefix("PRIMARY KEY") {
            let k = k.trim();
            let inner = &k[1..k.len() - 1];
            let (partition, clustering) = match inner.trim_start().strip_prefix('(') {
                Some(p) => {
                    let (p, c) = p.split_once(')').expect("partition key");
                    (names(p), names(c))
                }
                None => {
                    let all = names(inner);
                    (all[..1].to_vec(), all[1..].to_vec())
                }
            };
            key = Some((partition, clustering));
            continue;
        }
        let mut words = part.split_whitespace();
        let (col, ty) = (words.next().expect("column"), words.next().expect("type"));
        let primary = words.collect::<Vec<_>>().join(" ");
        assert!(TYPES.contains(&ty), "{name}.{col}: unknown type {ty}");
        assert!(
            columns.insert(col.to_owned(), ty.to_owned()).is_none(),
            "{name}.{col} twice"
        );
        if primary == "PRIMARY KEY" {
            key = Some((vec![col.to_owned()], vec![]));
        }
    }
    let (partition, clustering) = key.unwrap_or_else(|| panic!("{name}: no primary key"));
    let ordered = options
        .split_once("CLUSTERING ORDER BY")
        .map(|(_, o)| {
            names(o.split(')').next().unwrap_or_default())
                .into_iter()
                .map(|c| {
                    let (col, dir) = c.split_once(' ').expect("column and direction");
                    assert!(matches!(dir.trim(), "ASC" | "DESC"), "{name}: order {dir}");
                    col.to_owned()
                })
                .collect()
        })
        .unwrap_or_default();
    (
        name,
        Table {
            comment,
            columns,
            partition,
            clustering,
            ordered,
        },
    )
}

#[test]
fn cql_tables_are_well_formed() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schema/cql");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("schema/cql")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "cql"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no CQL files in {}", dir.display());
    let mut seen = BTreeSet::new();
    for file in files {
        let cql = std::fs::read_to_string(&file).expect("readable CQL");
        for (name, t) in tables(&cql) {
            assert!(seen.insert(name.clone()), "{name} defined in two files");
            assert!(
                t.comment.len() > 10,
                "{name}: say which API call the table serves"
            );
            for col in t.partition.iter().chain(&t.clustering) {
                assert!(
                    t.columns.contains_key(col),
                    "{name}: key column {col} not declared"
                );
            }
            assert!(!t.partition.is_empty(), "{name}: empty partition key");
            assert_eq!(
                t.ordered,
                t.clustering[..t.ordered.len().min(t.clustering.len())].to_vec(),
                "{name}: CLUSTERING ORDER must follow the clustering columns"
            );
        }
    }
    for expected in [
        "projection_state",
        "inbox",
        "thread_messages",
        "outbox",
        "receipts",
    ] {
        assert!(seen.contains(expected), "{expected} missing");
    }
}

#[test]
fn the_parser_reads_keys_and_order() {
    let t = tables(
        "-- GET /x: things per user\n\
         CREATE TABLE IF NOT EXISTS x (\n  uid text,\n  m int,\n  seq bigint,\n  v text,\n  \
         PRIMARY KEY ((uid, m), seq)\n) WITH CLUSTERING ORDER BY (seq DESC);\n",
    );
    let x = &t["x"];
    assert_eq!(x.partition, ["uid", "m"]);
    assert_eq!(x.clustering, ["seq"]);
    assert_eq!(x.ordered, ["seq"]);
    assert_eq!(x.columns["v"], "text");
    assert!(x.comment.contains("GET /x"));
}
