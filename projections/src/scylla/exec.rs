//! How statements reach a CQL node: [`Cql`], implemented by the driver session ([`Driver`]),
//! and the conversion of result rows into the typed tuples `statements.rs` declares.

use async_trait::async_trait;
use futures::TryStreamExt;
use scylla::client::session::Session;
use scylla::statement::batch::{Batch, BatchType};
use scylla::value::CqlValue;
use uuid::Uuid;

use super::statements::Stmt;
use crate::store::{StoreError, StoreResult};

/// One result row: its columns in `SELECT` order (`None`: null).
pub type Row = Vec<Option<CqlValue>>;

/// Bound values of one statement, in marker order.
pub type Values = Vec<Option<CqlValue>>;

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// A CQL endpoint.
#[async_trait]
pub trait Cql: Send + Sync + 'static {
    /// Runs one statement; the rows of a `SELECT` (all pages) or of a compare-and-set.
    async fn run(&self, stmt: &Stmt, values: Values) -> StoreResult<Vec<Row>>;

    /// Runs a `SELECT` page by page, handing each row to `keep` until it returns false.
    async fn scan(
        &self,
        stmt: &Stmt,
        values: Values,
        keep: &mut (dyn FnMut(Row) -> StoreResult<bool> + Send),
    ) -> StoreResult<()>;

    /// Runs writes as one logged batch.
    async fn batch(&self, writes: Vec<(&Stmt, Values)>) -> StoreResult<()>;
}

/// The scylla driver's session.
pub struct Driver(pub Session);

#[async_trait]
impl Cql for Driver {
    async fn run(&self, stmt: &Stmt, values: Values) -> StoreResult<Vec<Row>> {
        if stmt.is_select() {
            let mut out = Vec::new();
            self.scan(stmt, values, &mut |r| {
                out.push(r);
                Ok(true)
            })
            .await?;
            return Ok(out);
        }
        let result = match &stmt.prepared {
            Some(p) => self.0.execute_unpaged(p, values).await,
            None => self.0.query_unpaged(stmt.cql, values).await,
        }
        .map_err(|e| backend(format!("{}: {e}", stmt.name)))?;
        if !result.is_rows() {
            return Ok(Vec::new());
        }
        let rows = result.into_rows_result().map_err(backend)?;
        rows.rows::<scylla::value::Row>()
            .map_err(backend)?
            .map(|r| r.map(|r| r.columns).map_err(backend))
            .collect()
    }

    async fn scan(
        &self,
        stmt: &Stmt,
        values: Values,
        keep: &mut (dyn FnMut(Row) -> StoreResult<bool> + Send),
    ) -> StoreResult<()> {
        let pager = match &stmt.prepared {
            Some(p) => self.0.execute_iter(p.clone(), values).await,
            None => self.0.query_iter(stmt.cql, values).await,
        }
        .map_err(|e| backend(format!("{}: {e}", stmt.name)))?;
        let mut rows = pager.rows_stream::<scylla::value::Row>().map_err(backend)?;
        while let Some(row) = rows.try_next().await.map_err(backend)? {
            if !keep(row.columns)? {
                break;
            }
        }
        Ok(())
    }

    async fn batch(&self, writes: Vec<(&Stmt, Values)>) -> StoreResult<()> {
        let mut batch = Batch::new(BatchType::Logged);
        batch.set_is_idempotent(true);
        let mut values = Vec::with_capacity(writes.len());
        for (stmt, v) in writes {
            match &stmt.prepared {
                Some(p) => batch.append_statement(p.clone()),
                None => batch.append_statement(stmt.cql),
            }
            values.push(v);
        }
        self.0
            .batch(&batch, values)
            .await
            .map(drop)
            .map_err(backend)
    }
}

/// A column value as a Rust value.
pub trait FromCql: Sized {
    fn from_cql(v: Option<CqlValue>) -> StoreResult<Self>;
}

fn mismatch<T>(want: &str, got: &Option<CqlValue>) -> StoreResult<T> {
    Err(StoreError::Corrupt(format!("expected {want}, got {got:?}")))
}

impl FromCql for String {
    fn from_cql(v: Option<CqlValue>) -> StoreResult<Self> {
        match v {
            Some(CqlValue::Text(s)) | Some(CqlValue::Ascii(s)) => Ok(s),
            other => mismatch("text", &other),
        }
    }
}
impl FromCql for i64 {
    fn from_cql(v: Option<CqlValue>) -> StoreResult<Self> {
        match v {
            Some(CqlValue::BigInt(n)) => Ok(n),
            other => mismatch("bigint", &other),
        }
    }
}
impl FromCql for i32 {
    fn from_cql(v: Option<CqlValue>) -> StoreResult<Self> {
        match v {
            Some(CqlValue::Int(n)) => Ok(n),
            other => mismatch("int", &other),
        }
    }
}
impl FromCql for bool {
    fn from_cql(v: Option<CqlValue>) -> StoreResult<Self> {
        match v {
            Some(CqlValue::Boolean(b)) => Ok(b),
            other => mismatch("boolean", &other),
        }
    }
}
impl FromCql for Uuid {
    fn from_cql(v: Option<CqlValue>) -> StoreResult<Self> {
        match v {
            Some(CqlValue::Uuid(u)) => Ok(u),
            other => mismatch("uuid", &other),
        }
    }
}
impl<T: FromCql> FromCql for Option<T> {
    fn from_cql(v: Option<CqlValue>) -> StoreResult<Self> {
        match v {
            None => Ok(None),
            some => T::from_cql(some).map(Some),
        }
    }
}

/// A result row as a typed tuple.
pub trait FromRow: Sized {
    fn from_row(row: Row) -> StoreResult<Self>;
}

impl FromRow for () {
    fn from_row(_: Row) -> StoreResult<Self> {
        Ok(())
    }
}

macro_rules! tuple_from_row {
    ($n:literal; $($t:ident),+) => {
        impl<$($t: FromCql),+> FromRow for ($($t,)+) {
            fn from_row(row: Row) -> StoreResult<Self> {
                if row.len() != $n {
                    return Err(StoreError::Corrupt(format!(
                        "expected {} columns, got {}", $n, row.len()
                    )));
                }
                let mut cols = row.into_iter();
                Ok(($($t::from_cql(cols.next().flatten())?,)+))
            }
        }
    };
}

tuple_from_row!(1; A);
tuple_from_row!(2; A, B);
tuple_from_row!(3; A, B, C);
tuple_from_row!(4; A, B, C, D);
tuple_from_row!(5; A, B, C, D, E);
tuple_from_row!(6; A, B, C, D, E, F);
tuple_from_row!(7; A, B, C, D, E, F, G);
tuple_from_row!(8; A, B, C, D, E, F, G, H);
tuple_from_row!(9; A, B, C, D, E, F, G, H, I);
tuple_from_row!(10; A, B, C, D, E, F, G, H, I, J);
tuple_from_row!(11; A, B, C, D, E, F, G, H, I, J, K);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_convert_to_tuples_and_refuse_mismatches() {
        let row: Row = vec![
            Some(CqlValue::Text("a".into())),
            None,
            Some(CqlValue::BigInt(7)),
        ];
        let t: (String, Option<i32>, i64) = FromRow::from_row(row.clone()).unwrap();
        assert_eq!(t, ("a".into(), None, 7));
        assert!(
            <(String, i32, i64)>::from_row(row.clone()).is_err(),
            "null into i32"
        );
        assert!(
            <(String, Option<i32>)>::from_row(row.clone()).is_err(),
            "column count"
        );
        assert!(
            <(i64, Option<i32>, i64)>::from_row(row).is_err(),
            "text into i64"
        );
    }
}
