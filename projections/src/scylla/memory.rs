//! An in-process stand-in for a CQL node, for tests where none can run (no Cassandra or Scylla
//! server installs on the project's machines). It holds the tables of `schema/cql/` and runs
//! the statement shapes the backend uses with Cassandra's semantics: upserts, partitions
//! ordered by clustering key (with `CLUSTERING ORDER BY ... DESC`), slices and multi-column
//! slices on clustering columns, range deletes, `LIMIT`, compare-and-set (`IF NOT EXISTS`,
//! `IF col = ?` returning `[applied]`), and logged batches whose statements share one write
//! timestamp (so a delete beats an insert of the same row in one batch, as on a real node).
//! It does not speak the wire protocol, page, expire TTLs or replicate: the driver and the
//! cluster are verified only against a real node (`MSGXC_TEST_SCYLLA`).

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;
use scylla::value::CqlValue;
use uuid::Uuid;

use super::exec::{Cql, Row, Values};
use super::statements::Stmt;
use crate::store::{StoreError, StoreResult};

fn err(msg: impl Into<String>) -> StoreError {
    StoreError::Backend(msg.into())
}

/// A comparable column value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Null,
    Bool(bool),
    Int(i64),
    Text(String),
    Uuid(Uuid),
}

impl Key {
    fn of(v: &Option<CqlValue>) -> StoreResult<Self> {
        Ok(match v {
            None => Key::Null,
            Some(CqlValue::Boolean(b)) => Key::Bool(*b),
            Some(CqlValue::Int(n)) => Key::Int(i64::from(*n)),
            Some(CqlValue::BigInt(n)) => Key::Int(*n),
            Some(CqlValue::Text(s)) => Key::Text(s.clone()),
            Some(CqlValue::Uuid(u)) => Key::Uuid(*u),
            Some(other) => return Err(err(format!("unsupported value {other:?}"))),
        })
    }
}

/// A clustering column value in storage order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Stored {
    Asc(Key),
    Desc(Reverse<Key>),
}

impl Stored {
    fn key(&self) -> &Key {
        match self {
            Stored::Asc(k) => k,
            Stored::Desc(Reverse(k)) => k,
        }
    }
}

#[derive(Debug, Clone)]
struct TableDef {
    columns: HashMap<String, String>,
    partition: Vec<String>,
    clustering: Vec<String>,
    descending: Vec<bool>,
}

type Partition = BTreeMap<Vec<Stored>, HashMap<String, CqlValue>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Op {
    fn holds(self, o: Ordering) -> bool {
        match self {
            Op::Eq => o == Ordering::Equal,
            Op::Lt => o == Ordering::Less,
            Op::Le => o != Ordering::Greater,
            Op::Gt => o == Ordering::Greater,
            Op::Ge => o != Ordering::Less,
        }
    }
}

/// `cols op (?, ...)`.
#[derive(Debug, Clone)]
struct Restriction {
    cols: Vec<String>,
    op: Op,
}

#[derive(Debug, Clone)]
enum Parsed {
    Select {
        table: String,
        cols: Vec<String>,
        wheres: Vec<Restriction>,
        limit: Option<Option<usize>>,
    },
    Insert {
        table: String,
        cols: Vec<String>,
        if_not_exists: bool,
    },
    Update {
        table: String,
        sets: Vec<String>,
        wheres: Vec<Restriction>,
        conditions: Vec<String>,
    },
    Delete {
        table: String,
        wheres: Vec<Restriction>,
    },
}

fn list(s: &str) -> Vec<String> {
    s.split(',')
        .map(|c| {
            c.trim()
                .trim_matches(|c| c == '(' || c == ')')
                .trim()
                .to_owned()
        })
        .filter(|c| !c.is_empty())
        .collect()
}

fn restrictions(clause: &str) -> StoreResult<Vec<Restriction>> {
    clause
        .split(" AND ")
        .map(|cond| {
            let (op, sym) = [
                (Op::Le, "<="),
                (Op::Ge, ">="),
                (Op::Eq, "="),
                (Op::Lt, "<"),
                (Op::Gt, ">"),
            ]
            .into_iter()
            .find(|(_, sym)| cond.contains(sym))
            .ok_or_else(|| err(format!("no operator in {cond}")))?;
            let (lhs, _) = cond.split_once(sym).unwrap_or_default();
            Ok(Restriction {
                cols: list(lhs),
                op,
            })
        })
        .collect()
}

fn parse(cql: &str) -> StoreResult<Parsed> {
    let cql = cql.trim().trim_end_matches(';');
    let after = |kw: &str| -> StoreResult<String> {
        let mut words = cql.split_whitespace();
        while let Some(w) = words.next() {
            if w == kw {
                return Ok(words.next().unwrap_or_default().to_owned());
            }
        }
        Err(err(format!("no {kw} in {cql}")))
    };
    if let Some(rest) = cql.strip_prefix("SELECT ") {
        let (cols, _) = rest
            .split_once(" FROM ")
            .ok_or_else(|| err("SELECT without FROM"))?;
        let (body, limit) = match cql.split_once(" LIMIT ") {
            Some((b, l)) => (
                b,
                Some(if l.trim() == "?" {
                    None
                } else {
                    Some(l.trim().parse().map_err(|_| err(format!("LIMIT {l}")))?)
                }),
            ),
            None => (cql, None),
        };
        let wheres = match body.split_once(" WHERE ") {
            Some((_, w)) => restrictions(w)?,
            None => Vec::new(),
        };
        return Ok(Parsed::Select {
            table: after("FROM")?,
            cols: list(cols),
            wheres,
            limit,
        });
    }
    if cql.starts_with("INSERT ") {
        let open = cql.find('(').ok_or_else(|| err("INSERT without columns"))?;
        let close = cql.find(')').ok_or_else(|| err("INSERT without columns"))?;
        return Ok(Parsed::Insert {
            table: after("INTO")?,
            cols: list(&cql[open + 1..close]),
            if_not_exists: cql.ends_with("IF NOT EXISTS"),
        });
    }
    if cql.starts_with("UPDATE ") {
        let (body, condition) = match cql.split_once(" IF ") {
            Some((b, c)) => (b, Some(c)),
            None => (cql, None),
        };
        let (_, rest) = body
            .split_once(" SET ")
            .ok_or_else(|| err("UPDATE without SET"))?;
        let (sets, wheres) = rest
            .split_once(" WHERE ")
            .ok_or_else(|| err("UPDATE without WHERE"))?;
        let sets = sets
            .split(',')
            .map(|a| a.split('=').next().unwrap_or_default().trim().to_owned())
            .collect();
        let conditions = match condition {
            Some(c) => restrictions(c)?.into_iter().flat_map(|r| r.cols).collect(),
            None => Vec::new(),
        };
        return Ok(Parsed::Update {
            table: after("UPDATE")?,
            sets,
            wheres: restrictions(wheres)?,
            conditions,
        });
    }
    if cql.starts_with("DELETE ") {
        let (_, wheres) = cql
            .split_once(" WHERE ")
            .ok_or_else(|| err("DELETE without WHERE"))?;
        return Ok(Parsed::Delete {
            table: after("FROM")?,
            wheres: restrictions(wheres)?,
        });
    }
    Err(err(format!("unsupported statement {cql}")))
}

/// Parses `CREATE TABLE` statements (the shape of `schema/cql/`).
fn table_defs(schema: &str) -> StoreResult<HashMap<String, TableDef>> {
    let mut out = HashMap::new();
    for statement in super::schema_statements(schema) {
        let Some(rest) = statement.strip_prefix("CREATE TABLE IF NOT EXISTS ") else {
            continue;
        };
        let (name, body) = rest
            .split_once('(')
            .ok_or_else(|| err("table without columns"))?;
        let key_at = body.find("PRIMARY KEY (");
        let mut columns = HashMap::new();
        let mut inline_key = None;
        for def in body[..key_at.unwrap_or(body.len())].split(',') {
            let mut words = def.split_whitespace();
            if let (Some(col), Some(ty)) = (words.next(), words.next()) {
                columns.insert(col.to_owned(), ty.trim_end_matches(')').to_owned());
                if def.contains("PRIMARY KEY") {
                    inline_key = Some(col.to_owned());
                }
            }
        }
        let key = match (key_at, &inline_key) {
            (Some(at), _) => &body[at + "PRIMARY KEY (".len()..],
            (None, Some(_)) => "",
            (None, None) => return Err(err(format!("{name}: no primary key"))),
        };
        let (partition, clustering) = match key.strip_prefix('(') {
            _ if key_at.is_none() => (inline_key.into_iter().collect(), Vec::new()),
            Some(k) => {
                let (p, rest) = k.split_once(')').unwrap_or_default();
                let c = rest.split(')').next().unwrap_or_default();
                (list(p), list(c))
            }
            None => {
                let all = list(key.split(')').next().unwrap_or_default());
                (all[..1].to_vec(), all[1..].to_vec())
            }
        };
        let desc_cols: Vec<String> = match statement.split_once("CLUSTERING ORDER BY (") {
            Some((_, o)) => o
                .split(')')
                .next()
                .unwrap_or_default()
                .split(',')
                .filter(|c| c.trim().ends_with("DESC"))
                .map(|c| c.split_whitespace().next().unwrap_or_default().to_owned())
                .collect(),
            None => Vec::new(),
        };
        let descending = clustering.iter().map(|c| desc_cols.contains(c)).collect();
        out.insert(
            name.trim().to_owned(),
            TableDef {
                columns,
                partition,
                clustering,
                descending,
            },
        );
    }
    Ok(out)
}

/// An in-process CQL stand-in (see the module docs).
pub struct MemoryCql {
    /// Writes (statements or batches) to let through before failing the rest; -1: all.
    fail_after: std::sync::atomic::AtomicI64,
    tables: HashMap<String, TableDef>,
    data: Mutex<HashMap<String, BTreeMap<Vec<Key>, Partition>>>,
    parsed: Mutex<HashMap<&'static str, Parsed>>,
}

/// What one request (a statement or a batch) has done so far.
#[derive(Default)]
struct Request {
    deferred: Vec<Deferred>,
    /// Cells written, as `table/partition/clustering/column`: a batch writing one cell twice
    /// gives both writes one timestamp, and Cassandra then keeps the larger value, not the
    /// last; refused here so such a batch fails in tests instead of misbehaving on a node.
    cells: std::collections::HashSet<String>,
}

impl Request {
    fn cell(&mut self, table: &str, pk: &[Key], ck: &[Stored], col: &str) -> StoreResult<()> {
        let id = format!("{table}/{pk:?}/{ck:?}/{col}");
        if self.cells.insert(id.clone()) {
            Ok(())
        } else {
            Err(err(format!("one batch writes {id} twice")))
        }
    }
}

/// A write whose effect waits for the end of its batch.
enum Deferred {
    Delete {
        table: String,
        partition: Vec<Key>,
        wheres: Vec<(Restriction, Vec<Key>)>,
    },
}

impl MemoryCql {
    /// A node holding the tables of these CQL files, empty.
    pub fn new<'a>(schema: impl IntoIterator<Item = &'a str>) -> StoreResult<Self> {
        let mut tables = HashMap::new();
        for file in schema {
            tables.extend(table_defs(file)?);
        }
        Ok(Self {
            fail_after: std::sync::atomic::AtomicI64::new(-1),
            tables,
            data: Mutex::new(HashMap::new()),
            parsed: Mutex::new(HashMap::new()),
        })
    }

    /// Lets `n` more writes through, then fails every write (a node going away mid-batch);
    /// `None` lets all through again.
    pub fn fail_writes_after(&self, n: Option<u32>) {
        let v = n.map_or(-1, i64::from);
        self.fail_after
            .store(v, std::sync::atomic::Ordering::SeqCst);
    }

    /// Counts a write against [`Self::fail_writes_after`].
    fn write_allowed(&self) -> StoreResult<()> {
        use std::sync::atomic::Ordering::SeqCst;
        let left = self.fail_after.load(SeqCst);
        if left == 0 {
            return Err(err("injected failure: the node is unreachable"));
        }
        if left > 0 {
            self.fail_after.store(left - 1, SeqCst);
        }
        Ok(())
    }

    fn parsed(&self, stmt: &Stmt) -> StoreResult<Parsed> {
        let mut cache = self.parsed.lock().map_err(|_| err("poisoned"))?;
        if let Some(p) = cache.get(stmt.cql) {
            return Ok(p.clone());
        }
        let p = parse(stmt.cql)?;
        cache.insert(stmt.cql, p.clone());
        Ok(p)
    }

    fn def(&self, table: &str) -> StoreResult<&TableDef> {
        self.tables
            .get(table)
            .ok_or_else(|| err(format!("unconfigured table {table}")))
    }

    /// Runs one statement; deletes are returned for the caller to apply (at once, or at the
    /// end of a batch).
    fn execute(
        &self,
        data: &mut HashMap<String, BTreeMap<Vec<Key>, Partition>>,
        stmt: &Stmt,
        values: Values,
        request: &mut Request,
    ) -> StoreResult<Vec<Row>> {
        let mut values = values.into_iter();
        let mut take = |n: usize| -> StoreResult<Vec<Option<CqlValue>>> {
            let v: Vec<_> = values.by_ref().take(n).collect();
            if v.len() == n {
                Ok(v)
            } else {
                Err(err(format!("{}: too few values", stmt.name)))
            }
        };
        match self.parsed(stmt)? {
            Parsed::Select {
                table,
                cols,
                wheres,
                limit,
            } => {
                let def = self.def(&table)?;
                let bound = bind(&wheres, &mut take)?;
                let limit = match limit {
                    Some(Some(n)) => n,
                    Some(None) => match take(1)?.pop().flatten() {
                        Some(CqlValue::Int(n)) => usize::try_from(n).unwrap_or(0),
                        other => return Err(err(format!("LIMIT {other:?}"))),
                    },
                    None => usize::MAX,
                };
                let (partition, clustering) = split(def, &bound)?;
                let mut out = Vec::new();
                if let Some(p) = data.get(&table).and_then(|t| t.get(&partition)) {
                    for (ck, row) in p {
                        if out.len() >= limit {
                            break;
                        }
                        if matches(ck, &clustering, def) {
                            out.push(project(def, &partition, ck, row, &cols)?);
                        }
                    }
                }
                Ok(out)
            }
            Parsed::Insert {
                table,
                cols,
                if_not_exists,
            } => {
                let def = self.def(&table)?;
                let vals = take(cols.len())?;
                let (pk, ck) = key_of(def, &cols, &vals)?;
                let partition = data
                    .entry(table.clone())
                    .or_default()
                    .entry(pk.clone())
                    .or_default();
                if if_not_exists && let Some(existing) = partition.get(&ck) {
                    let mut row = vec![Some(CqlValue::Boolean(false))];
                    row.extend(project(def, &pk, &ck, existing, &cols)?);
                    return Ok(vec![row]);
                }
                for c in &cols {
                    if !def.partition.contains(c) && !def.clustering.contains(c) {
                        request.cell(&table, &pk, &ck, c)?;
                    }
                }
                let row = partition.entry(ck).or_default();
                for (c, v) in cols.iter().zip(vals) {
                    if def.partition.contains(c) || def.clustering.contains(c) {
                        continue;
                    }
                    match v {
                        Some(v) => row.insert(c.clone(), v),
                        None => row.remove(c),
                    };
                }
                Ok(if if_not_exists {
                    vec![vec![Some(CqlValue::Boolean(true))]]
                } else {
                    Vec::new()
                })
            }
            Parsed::Update {
                table,
                sets,
                wheres,
                conditions,
            } => {
                let def = self.def(&table)?;
                let set_values = take(sets.len())?;
                let bound = bind(&wheres, &mut take)?;
                let expected = take(conditions.len())?;
                let mut cols = Vec::new();
                let mut vals = Vec::new();
                for (r, v) in &bound {
                    if r.op != Op::Eq || r.cols.len() != 1 {
                        return Err(err(format!("{}: UPDATE names one row", stmt.name)));
                    }
                    cols.push(r.cols[0].clone());
                    vals.push(key_value(v));
                }
                let (pk, ck) = key_of(def, &cols, &vals)?;
                for c in &sets {
                    request.cell(&table, &pk, &ck, c)?;
                }
                let partition = data
                    .entry(table.clone())
                    .or_default()
                    .entry(pk)
                    .or_default();
                if !conditions.is_empty() {
                    let current = partition.get(&ck);
                    let actual: Vec<Option<CqlValue>> = conditions
                        .iter()
                        .map(|c| current.and_then(|r| r.get(c).cloned()))
                        .collect();
                    if actual != expected {
                        let mut row = vec![Some(CqlValue::Boolean(false))];
                        row.extend(actual);
                        return Ok(vec![row]);
                    }
                }
                let row = partition.entry(ck).or_default();
                for (c, v) in sets.iter().zip(set_values) {
                    match v {
                        Some(v) => row.insert(c.clone(), v),
                        None => row.remove(c),
                    };
                }
                Ok(if conditions.is_empty() {
                    Vec::new()
                } else {
                    vec![vec![Some(CqlValue::Boolean(true))]]
                })
            }
            Parsed::Delete { table, wheres } => {
                let def = self.def(&table)?;
                let bound = bind(&wheres, &mut take)?;
                let (partition, _) = split(def, &bound)?;
                let wheres = bound
                    .into_iter()
                    .filter(|(r, _)| !r.cols.iter().any(|c| def.partition.contains(c)))
                    .map(|(r, v)| Ok((r, v.iter().map(Key::of).collect::<StoreResult<_>>()?)))
                    .collect::<StoreResult<_>>()?;
                request.deferred.push(Deferred::Delete {
                    table,
                    partition,
                    wheres,
                });
                Ok(Vec::new())
            }
        }
    }

    fn apply_deferred(
        &self,
        data: &mut HashMap<String, BTreeMap<Vec<Key>, Partition>>,
        request: Request,
    ) -> StoreResult<()> {
        for Deferred::Delete {
            table,
            partition,
            wheres,
        } in request.deferred
        {
            let def = self.def(&table)?;
            if let Some(p) = data.get_mut(&table).and_then(|t| t.get_mut(&partition)) {
                p.retain(|ck, _| !matches(ck, &wheres, def));
            }
        }
        Ok(())
    }
}

fn key_value(v: &[Option<CqlValue>]) -> Option<CqlValue> {
    v.first().cloned().flatten()
}

/// Each restriction with its bound values.
fn bind(
    wheres: &[Restriction],
    take: &mut impl FnMut(usize) -> StoreResult<Vec<Option<CqlValue>>>,
) -> StoreResult<Vec<(Restriction, Vec<Option<CqlValue>>)>> {
    wheres
        .iter()
        .map(|r| Ok((r.clone(), take(r.cols.len())?)))
        .collect()
}

/// The partition key (all partition columns given with `=`) and the clustering restrictions.
#[allow(clippy::type_complexity)]
fn split(
    def: &TableDef,
    bound: &[(Restriction, Vec<Option<CqlValue>>)],
) -> StoreResult<(Vec<Key>, Vec<(Restriction, Vec<Key>)>)> {
    let mut partition = Vec::new();
    for col in &def.partition {
        let (_, v) = bound
            .iter()
            .find(|(r, _)| r.op == Op::Eq && r.cols.len() == 1 && &r.cols[0] == col)
            .ok_or_else(|| err(format!("partition key column {col} not restricted")))?;
        partition.push(Key::of(&key_value(v))?);
    }
    let clustering = bound
        .iter()
        .filter(|(r, _)| !r.cols.iter().any(|c| def.partition.contains(c)))
        .map(|(r, v)| {
            Ok((
                r.clone(),
                v.iter().map(Key::of).collect::<StoreResult<_>>()?,
            ))
        })
        .collect::<StoreResult<_>>()?;
    Ok((partition, clustering))
}

/// Whether a row's clustering key satisfies every restriction (compared in natural order).
fn matches(ck: &[Stored], restrictions: &[(Restriction, Vec<Key>)], def: &TableDef) -> bool {
    restrictions.iter().all(|(r, values)| {
        let row: Vec<&Key> = r
            .cols
            .iter()
            .filter_map(|c| def.clustering.iter().position(|k| k == c))
            .filter_map(|i| ck.get(i).map(Stored::key))
            .collect();
        let given: Vec<&Key> = values.iter().collect();
        r.op.holds(row.cmp(&given))
    })
}

/// (partition key, clustering key) of a full primary key given as columns and values.
fn key_of(
    def: &TableDef,
    cols: &[String],
    vals: &[Option<CqlValue>],
) -> StoreResult<(Vec<Key>, Vec<Stored>)> {
    let value = |c: &String| -> StoreResult<Key> {
        let i = cols
            .iter()
            .position(|x| x == c)
            .ok_or_else(|| err(format!("key column {c} missing")))?;
        let k = Key::of(&vals[i])?;
        if k == Key::Null {
            return Err(err(format!("null key column {c}")));
        }
        Ok(k)
    };
    let pk = def
        .partition
        .iter()
        .map(value)
        .collect::<StoreResult<_>>()?;
    let ck = def
        .clustering
        .iter()
        .zip(&def.descending)
        .map(|(c, desc)| {
            value(c).map(|k| {
                if *desc {
                    Stored::Desc(Reverse(k))
                } else {
                    Stored::Asc(k)
                }
            })
        })
        .collect::<StoreResult<_>>()?;
    Ok((pk, ck))
}

fn to_value(k: &Key, ty: &str) -> Option<CqlValue> {
    match (k, ty) {
        (Key::Null, _) => None,
        (Key::Bool(b), _) => Some(CqlValue::Boolean(*b)),
        (Key::Int(n), "int") => Some(CqlValue::Int(i32::try_from(*n).unwrap_or(i32::MAX))),
        (Key::Int(n), _) => Some(CqlValue::BigInt(*n)),
        (Key::Text(s), _) => Some(CqlValue::Text(s.clone())),
        (Key::Uuid(u), _) => Some(CqlValue::Uuid(*u)),
    }
}

fn project(
    def: &TableDef,
    pk: &[Key],
    ck: &[Stored],
    row: &HashMap<String, CqlValue>,
    cols: &[String],
) -> StoreResult<Row> {
    cols.iter()
        .map(|c| {
            let ty = def
                .columns
                .get(c)
                .ok_or_else(|| err(format!("undefined column {c}")))?;
            if let Some(i) = def.partition.iter().position(|k| k == c) {
                return Ok(to_value(&pk[i], ty));
            }
            if let Some(i) = def.clustering.iter().position(|k| k == c) {
                return Ok(to_value(ck[i].key(), ty));
            }
            Ok(row.get(c).cloned())
        })
        .collect()
}

#[async_trait]
impl Cql for MemoryCql {
    async fn run(&self, stmt: &Stmt, values: Values) -> StoreResult<Vec<Row>> {
        if !stmt.is_select() {
            self.write_allowed()?;
        }
        let mut data = self.data.lock().map_err(|_| err("poisoned"))?;
        let mut request = Request::default();
        let rows = self.execute(&mut data, stmt, values, &mut request)?;
        self.apply_deferred(&mut data, request)?;
        Ok(rows)
    }

    async fn scan(
        &self,
        stmt: &Stmt,
        values: Values,
        keep: &mut (dyn FnMut(Row) -> StoreResult<bool> + Send),
    ) -> StoreResult<()> {
        for row in self.run(stmt, values).await? {
            if !keep(row)? {
                break;
            }
        }
        Ok(())
    }

    async fn batch(&self, writes: Vec<(&Stmt, Values)>) -> StoreResult<()> {
        self.write_allowed()?;
        let mut data = self.data.lock().map_err(|_| err("poisoned"))?;
        let mut request = Request::default();
        for (stmt, values) in writes {
            if stmt.is_select() || stmt.cql.contains(" IF ") {
                return Err(err(format!("{}: not allowed in a batch", stmt.name)));
            }
            self.execute(&mut data, stmt, values, &mut request)?;
        }
        // One write timestamp for the whole batch: a delete wins over any write of it.
        self.apply_deferred(&mut data, request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str = "-- t\nCREATE TABLE IF NOT EXISTS t (p text, c bigint, d int, v text, \
        PRIMARY KEY ((p), c, d)) WITH CLUSTERING ORDER BY (c DESC, d ASC);\n\
        CREATE TABLE IF NOT EXISTS k (id text PRIMARY KEY, n bigint);";

    fn stmt(cql: &'static str) -> Stmt {
        Stmt::new("test", cql, None)
    }

    fn text(s: &str) -> Option<CqlValue> {
        Some(CqlValue::Text(s.into()))
    }

    async fn put(db: &MemoryCql, c: i64, d: i32) {
        let insert = stmt("INSERT INTO t (p, c, d, v) VALUES (?, ?, ?, ?)");
        let values = vec![
            text("a"),
            Some(CqlValue::BigInt(c)),
            Some(CqlValue::Int(d)),
            text(&format!("{c}.{d}")),
        ];
        db.run(&insert, values).await.unwrap();
    }

    async fn keys(db: &MemoryCql, cql: &'static str, mut values: Values) -> Vec<String> {
        values.insert(0, text("a"));
        db.run(&stmt(cql), values)
            .await
            .unwrap()
            .into_iter()
            .map(|r| match &r[0] {
                Some(CqlValue::Text(s)) => s.clone(),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[tokio::test]
    async fn clustering_order_slices_limits_and_range_deletes() {
        let db = MemoryCql::new([SCHEMA]).unwrap();
        for (c, d) in [(1, 0), (2, 1), (2, 0), (3, 0)] {
            put(&db, c, d).await;
        }
        let all = keys(&db, "SELECT v FROM t WHERE p = ?", vec![]).await;
        assert_eq!(all, ["3.0", "2.0", "2.1", "1.0"], "c DESC, then d ASC");
        let after = keys(
            &db,
            "SELECT v FROM t WHERE p = ? AND (c, d) > (?, ?)",
            vec![Some(CqlValue::BigInt(2)), Some(CqlValue::Int(0))],
        )
        .await;
        assert_eq!(after, ["3.0", "2.1"]);
        let limited = keys(
            &db,
            "SELECT v FROM t WHERE p = ? AND c < ? LIMIT ?",
            vec![Some(CqlValue::BigInt(3)), Some(CqlValue::Int(1))],
        )
        .await;
        assert_eq!(limited, ["2.0"]);
        db.run(
            &stmt("DELETE FROM t WHERE p = ? AND c < ?"),
            vec![text("a"), Some(CqlValue::BigInt(3))],
        )
        .await
        .unwrap();
        assert_eq!(
            keys(&db, "SELECT v FROM t WHERE p = ?", vec![]).await,
            ["3.0"]
        );
    }

    #[tokio::test]
    async fn compare_and_set_and_batch_timestamps() {
        let db = MemoryCql::new([SCHEMA]).unwrap();
        let claim = stmt("INSERT INTO k (id, n) VALUES (?, ?) IF NOT EXISTS");
        let first = db
            .run(&claim, vec![text("x"), Some(CqlValue::BigInt(1))])
            .await
            .unwrap();
        assert_eq!(first[0][0], Some(CqlValue::Boolean(true)));
        let second = db
            .run(&claim, vec![text("x"), Some(CqlValue::BigInt(2))])
            .await
            .unwrap();
        assert_eq!(second[0][0], Some(CqlValue::Boolean(false)));
        let cas = stmt("UPDATE k SET n = ? WHERE id = ? IF n = ?");
        let moved = db
            .run(
                &cas,
                vec![
                    Some(CqlValue::BigInt(5)),
                    text("x"),
                    Some(CqlValue::BigInt(2)),
                ],
            )
            .await
            .unwrap();
        assert_eq!(moved[0][0], Some(CqlValue::Boolean(false)), "n is 1");

        // A delete and an insert of one row in one batch: the delete wins.
        let delete = stmt("DELETE FROM k WHERE id = ?");
        let insert = stmt("INSERT INTO k (id, n) VALUES (?, ?)");
        db.batch(vec![
            (&delete, vec![text("x")]),
            (&insert, vec![text("x"), Some(CqlValue::BigInt(9))]),
        ])
        .await
        .unwrap();
        let get = stmt("SELECT n FROM k WHERE id = ?");
        assert!(db.run(&get, vec![text("x")]).await.unwrap().is_empty());
        // One cell written twice in one batch is refused (a node keeps the larger value).
        let twice = db
            .batch(vec![
                (&insert, vec![text("y"), Some(CqlValue::BigInt(2))]),
                (&insert, vec![text("y"), Some(CqlValue::BigInt(1))]),
            ])
            .await;
        assert!(twice.is_err());
        // Injected failures stop writes, not reads.
        db.fail_writes_after(Some(0));
        assert!(db.run(&insert, vec![text("z"), None]).await.is_err());
        assert!(db.run(&get, vec![text("z")]).await.is_ok());
    }
}
