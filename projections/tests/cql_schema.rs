//! The CQL tables in `schema/cql/` are well formed (every table says which API call it serves,
//! uses known CQL types, and its primary key and clustering order name its own columns), and
//! every statement of the Scylla backend fits them: tables and columns exist, each bound value
//! and result column has the column's type, and each `WHERE` is one a CQL node accepts without
//! `ALLOW FILTERING` (partition key fully given, clustering restrictions a prefix). No CQL
//! node can run here, so this is what keeps a typo from reaching a user.

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

/// Every table of `schema/cql/`.
fn schema() -> BTreeMap<String, Table> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schema/cql");
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).expect("schema/cql") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "cql") {
            out.extend(tables(
                &std::fs::read_to_string(&path).expect("readable CQL"),
            ));
        }
    }
    out
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
    assert_eq!(
        files.len(),
        projections::scylla::MIGRATIONS.len(),
        "every file of schema/cql is a migration `msgxc migrate` applies"
    );
    for file in files {
        let cql = std::fs::read_to_string(&file).expect("readable CQL");
        assert!(
            projections::scylla::MIGRATIONS
                .iter()
                .any(|(_, applied)| *applied == cql),
            "{} is not in MIGRATIONS",
            file.display()
        );
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

/// The CQL type a bound or returned Rust type maps to (`Option<T>`: nullable `T`).
fn cql_type(rust: &str) -> Option<&'static str> {
    let t: String = rust.chars().filter(|c| !c.is_whitespace()).collect();
    let t = t
        .strip_prefix("Option<")
        .and_then(|i| i.strip_suffix('>'))
        .unwrap_or(&t);
    Some(match t {
        "Uuid" => "uuid",
        "String" | "&str" => "text",
        "i64" => "bigint",
        "i32" => "int",
        "bool" => "boolean",
        _ => return None,
    })
}

/// The element types of a tuple type as `stringify!` writes it: `(A, Option < B >,)`.
fn tuple_types(t: &str) -> Vec<String> {
    let t: String = t.chars().filter(|c| !c.is_whitespace()).collect();
    let inner = t
        .strip_prefix('(')
        .and_then(|i| i.strip_suffix(')'))
        .unwrap_or_else(|| panic!("not a tuple: {t}"));
    let (mut out, mut depth, mut cur) = (Vec::new(), 0, String::new());
    for ch in inner.chars() {
        match ch {
            '<' => depth += 1,
            '>' => depth -= 1,
            ',' if depth == 0 => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(ch);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Tables where a compare-and-set (lightweight transaction) is allowed: uniqueness of an alias,
/// the store's identity and the checkpoint fence.
const LWT_TABLES: [&str; 2] = ["thread_aliases", "projection_state"];

/// What a statement restricts in its `WHERE`: (columns, operator), a multi-column restriction
/// `(a, b) > (?, ?)` as several columns with one operator.
fn restrictions(clause: &str) -> Result<Vec<(Vec<String>, String)>, String> {
    let mut out = Vec::new();
    for cond in clause.split(" AND ") {
        let cond = cond.trim();
        let op = ["<=", ">=", "=", "<", ">"]
            .into_iter()
            .find(|op| cond.contains(op))
            .ok_or_else(|| format!("no operator in `{cond}`"))?;
        let (lhs, rhs) = cond.split_once(op).unwrap_or_default();
        let cols = names(lhs);
        let binds = rhs.matches('?').count();
        if binds != cols.len() {
            return Err(format!("`{cond}`: {} columns, {binds} values", cols.len()));
        }
        out.push((cols, op.to_owned()));
    }
    Ok(out)
}

/// Checks one statement against the tables; the error says what is wrong.
fn check(
    spec: &projections::scylla::StatementSpec,
    schema: &BTreeMap<String, Table>,
) -> Result<(), String> {
    let cql = spec.cql.trim().trim_end_matches(';');
    let words: Vec<&str> = cql.split_whitespace().collect();
    let table_after = |kw: &str| -> Result<&str, String> {
        let i = words
            .iter()
            .position(|w| *w == kw)
            .ok_or(format!("no {kw}"))?;
        words
            .get(i + 1)
            .copied()
            .ok_or(format!("no table after {kw}"))
    };
    let (kind, name) = match words.first().copied() {
        Some("SELECT") => ("select", table_after("FROM")?),
        Some("INSERT") => ("insert", table_after("INTO")?),
        Some("UPDATE") => ("update", table_after("UPDATE")?),
        Some("DELETE") => ("delete", table_after("FROM")?),
        other => return Err(format!("unexpected statement kind {other:?}")),
    };
    let t = schema.get(name).ok_or(format!("no table {name}"))?;
    let col_type = |c: &str| -> Result<String, String> {
        t.columns
            .get(c)
            .cloned()
            .ok_or(format!("{name} has no column {c}"))
    };
    let lwt = cql.contains(" IF ");
    if lwt && !LWT_TABLES.contains(&name) {
        return Err(format!("lightweight transaction on {name}"));
    }
    // (column, ...) each bound `?` fills, in order; "int" for LIMIT and TTL.
    let mut bound: Vec<String> = Vec::new();
    let mut selected: Vec<String> = Vec::new();
    let mut where_clause = None;
    let (body, condition) = match cql.split_once(" IF ") {
        Some((b, c)) => (b, Some(c)),
        None => (cql, None),
    };
    let (body, limit) = match body.split_once(" LIMIT ") {
        Some((b, l)) => (b, Some(l.trim())),
        None => (body, None),
    };
    match kind {
        "select" => {
            let list = body["SELECT ".len()..]
                .split(" FROM ")
                .next()
                .unwrap_or_default();
            selected = names(list);
            where_clause = body.split_once(" WHERE ").map(|(_, w)| w);
        }
        "insert" => {
            let open = body.find('(').ok_or("no column list")?;
            let close = body.find(')').ok_or("no column list")?;
            let cols = names(&body[open + 1..close]);
            let values = body[close..].matches('?').count();
            if values != cols.len() {
                return Err(format!("{} columns, {values} values", cols.len()));
            }
            for k in t.partition.iter().chain(&t.clustering) {
                if !cols.contains(k) {
                    return Err(format!("INSERT without key column {k}"));
                }
            }
            bound = cols;
        }
        "update" => {
            let (set, w) = body
                .split_once(" SET ")
                .and_then(|(_, r)| r.split_once(" WHERE "))
                .ok_or("UPDATE needs SET and WHERE")?;
            for assignment in set.split(',') {
                let (c, v) = assignment
                    .split_once('=')
                    .ok_or(format!("`{assignment}`"))?;
                let c = c.trim().to_owned();
                if t.partition.contains(&c) || t.clustering.contains(&c) {
                    return Err(format!("UPDATE sets key column {c}"));
                }
                if v.trim() == "?" {
                    bound.push(c);
                } else {
                    return Err(format!("bind every value: `{assignment}`"));
                }
            }
            where_clause = Some(w);
        }
        _ => where_clause = body.split_once(" WHERE ").map(|(_, w)| w),
    }
    if let Some(w) = where_clause {
        let rs = restrictions(w)?;
        let mut eq_partition = BTreeSet::new();
        let mut clustering_seen: Vec<String> = Vec::new();
        let mut range_done = false;
        for (cols, op) in &rs {
            for c in cols {
                col_type(c)?;
                bound.push(c.clone());
            }
            if cols.len() == 1 && t.partition.contains(&cols[0]) {
                if op != "=" {
                    return Err(format!("range on partition key {}", cols[0]));
                }
                eq_partition.insert(cols[0].clone());
                continue;
            }
            for c in cols {
                let i = t
                    .clustering
                    .iter()
                    .position(|k| k == c)
                    .ok_or(format!("WHERE on non-key column {c} needs ALLOW FILTERING"))?;
                if i != clustering_seen.len() || range_done {
                    return Err(format!("clustering restriction on {c} skips a column"));
                }
                clustering_seen.push(c.clone());
            }
            if op != "=" {
                range_done = true;
            }
        }
        if eq_partition.len() != t.partition.len() {
            return Err(format!(
                "partition key {:?} not fully restricted",
                t.partition
            ));
        }
        let full_key = clustering_seen.len() == t.clustering.len() && !range_done;
        if kind == "update" && !full_key {
            return Err("UPDATE must name one row".into());
        }
        if kind == "delete" && range_done && t.clustering.is_empty() {
            return Err("range DELETE on a table without clustering columns".into());
        }
    } else if kind != "insert" {
        return Err("no WHERE: a full-table scan".into());
    }
    if let Some(c) = condition.filter(|c| c.trim() != "NOT EXISTS") {
        for (cols, op) in restrictions(c)? {
            if op != "=" {
                return Err(format!("condition `{c}`"));
            }
            bound.extend(cols);
        }
    }
    let mut bound_types: Vec<String> = bound
        .iter()
        .map(|c| col_type(c))
        .collect::<Result<_, _>>()?;
    if let Some(l) = limit {
        if l != "?" && l.parse::<u32>().is_err() {
            return Err(format!("LIMIT {l}"));
        }
        if l == "?" {
            bound_types.push("int".into());
        }
    }
    if spec.binds.len() != bound_types.len() {
        return Err(format!(
            "{} values declared, {} bind markers",
            spec.binds.len(),
            bound_types.len()
        ));
    }
    for (i, (rust, cql_t)) in spec.binds.iter().zip(&bound_types).enumerate() {
        let want = cql_type(rust).ok_or(format!("bind {i}: unsupported Rust type {rust}"))?;
        if want != cql_t {
            return Err(format!(
                "bind {i} is {rust} ({want}), the column is {cql_t}"
            ));
        }
    }
    let returns = tuple_types(spec.returns);
    if kind == "select" {
        if returns.len() != selected.len() {
            return Err(format!(
                "{} columns selected, the row type has {}",
                selected.len(),
                returns.len()
            ));
        }
        for (rust, c) in returns.iter().zip(&selected) {
            let have = col_type(c)?;
            let want = cql_type(rust).ok_or(format!("{c}: unsupported Rust type {rust}"))?;
            if want != have {
                return Err(format!("{c} is {have}, read as {rust}"));
            }
        }
    } else if !returns.is_empty() {
        return Err("a write returns no rows: declare ()".into());
    }
    Ok(())
}

#[test]
fn every_backend_statement_fits_the_schema() {
    let schema = schema();
    let mut names = BTreeSet::new();
    let specs = projections::scylla::STATEMENTS.iter().chain([
        &projections::scylla::MIGRATION_GET,
        &projections::scylla::MIGRATION_PUT,
    ]);
    let mut tables_used = BTreeSet::new();
    for spec in specs {
        assert!(names.insert(spec.name), "statement {} twice", spec.name);
        if let Err(e) = check(spec, &schema) {
            panic!("statement {}: {e}\n  {}", spec.name, spec.cql);
        }
        if let Some(t) = spec
            .cql
            .split_whitespace()
            .skip_while(|w| !matches!(*w, "FROM" | "INTO" | "UPDATE"))
            .nth(1)
        {
            tables_used.insert(t.to_owned());
        }
    }
    // A table nothing reads or writes is dead weight in every keyspace.
    for name in schema.keys() {
        assert!(tables_used.contains(name), "no statement uses table {name}");
    }
}

#[test]
fn the_statement_check_catches_mistakes() {
    let schema = tables(
        "-- GET /x: things per user\n\
         CREATE TABLE IF NOT EXISTS x (uid text, m int, seq bigint, v text, n bigint, \
         PRIMARY KEY ((uid, m), seq)) WITH CLUSTERING ORDER BY (seq DESC);\n",
    );
    let spec = |cql: &'static str, binds: &'static [&'static str], returns: &'static str| {
        projections::scylla::StatementSpec {
            name: "t",
            cql,
            binds,
            returns,
        }
    };
    let ok = [
        spec(
            "SELECT v, n FROM x WHERE uid = ? AND m = ?",
            &["&str", "i32"],
            "(String, Option<i64>)",
        ),
        spec(
            "SELECT seq FROM x WHERE uid = ? AND m = ? AND seq < ? LIMIT ?",
            &["String", "i32", "i64", "i32"],
            "(i64,)",
        ),
        spec(
            "INSERT INTO x (uid, m, seq, v) VALUES (?, ?, ?, ?)",
            &["&str", "i32", "i64", "Option<String>"],
            "()",
        ),
        spec(
            "UPDATE x SET n = ? WHERE uid = ? AND m = ? AND seq = ?",
            &["i64", "&str", "i32", "i64"],
            "()",
        ),
        spec(
            "DELETE FROM x WHERE uid = ? AND m = ? AND seq < ?",
            &["&str", "i32", "i64"],
            "()",
        ),
    ];
    for s in ok {
        assert_eq!(check(&s, &schema), Ok(()), "{}", s.cql);
    }
    let bad = [
        // a typo in a column
        spec(
            "SELECT vv FROM x WHERE uid = ? AND m = ?",
            &["&str", "i32"],
            "(String,)",
        ),
        // a type mismatch in a bound value and in a result
        spec(
            "SELECT v FROM x WHERE uid = ? AND m = ?",
            &["&str", "i64"],
            "(String,)",
        ),
        spec(
            "SELECT n FROM x WHERE uid = ? AND m = ?",
            &["&str", "i32"],
            "(i32,)",
        ),
        // partition key not fully given, filter on a regular column
        spec("SELECT v FROM x WHERE uid = ?", &["&str"], "(String,)"),
        spec(
            "SELECT v FROM x WHERE uid = ? AND m = ? AND v = ?",
            &["&str", "i32", "&str"],
            "(String,)",
        ),
        // an unknown table, a missing key column, a count mismatch
        spec("SELECT v FROM y WHERE uid = ?", &["&str"], "(String,)"),
        spec(
            "INSERT INTO x (uid, m, v) VALUES (?, ?, ?)",
            &["&str", "i32", "&str"],
            "()",
        ),
        spec(
            "INSERT INTO x (uid, m, seq) VALUES (?, ?, ?)",
            &["&str", "i32"],
            "()",
        ),
        // an update of many rows, a compare-and-set where none is allowed
        spec(
            "UPDATE x SET n = ? WHERE uid = ? AND m = ?",
            &["i64", "&str", "i32"],
            "()",
        ),
        spec(
            "INSERT INTO x (uid, m, seq) VALUES (?, ?, ?) IF NOT EXISTS",
            &["&str", "i32", "i64"],
            "()",
        ),
    ];
    for s in bad {
        assert!(check(&s, &schema).is_err(), "not caught: {}", s.cql);
    }
}
