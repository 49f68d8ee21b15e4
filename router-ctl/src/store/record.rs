//! Model types as table rows: each table's columns are named once, in `record!`, and the row
//! mapper, the insert and the updates all follow that list, so a column cannot be read from one
//! position and written to another.
//!
//! How one field is stored is its type's `Column` impl: addresses as 16-byte BLOBs (IPv4
//! mapped, so BLOB order is address order within a family), prefixes, MACs, IPv6 modes and
//! name-server lists as text, everything else as SQLite's own value of the type.

use std::{
    net::{IpAddr, Ipv6Addr},
    str::FromStr,
};

use ipnet::IpNet;
use rusqlite::{Connection, Params, Row, params_from_iter, types::Value};

use super::query_all;
use crate::model::{Fault, Ipv6Mode, mac_to_string, parse_mac};

/// How a field's value is stored in its column.
pub trait Column: Sized {
    fn read(r: &Row, col: usize) -> rusqlite::Result<Self>;
    fn value(&self) -> Value;
}

/// Types SQLite stores as they are.
macro_rules! sqlite_native {
    ($($t:ty),* $(,)?) => {$(
        impl Column for $t {
            fn read(r: &Row, col: usize) -> rusqlite::Result<Self> {
                r.get(col)
            }
            fn value(&self) -> Value {
                Value::from(self.clone())
            }
        }
    )*};
}
sqlite_native!(String, Option<String>, bool, u16, u32);

impl Column for IpAddr {
    fn read(r: &Row, col: usize) -> rusqlite::Result<Self> {
        Ok(addr_of(r.get(col)?))
    }
    fn value(&self) -> Value {
        Value::Blob(addr_val(*self).to_vec())
    }
}

impl Column for Option<IpAddr> {
    fn read(r: &Row, col: usize) -> rusqlite::Result<Self> {
        Ok(r.get::<_, Option<[u8; 16]>>(col)?.map(addr_of))
    }
    fn value(&self) -> Value {
        self.map_or(Value::Null, |a| a.value())
    }
}

impl Column for IpNet {
    fn read(r: &Row, col: usize) -> rusqlite::Result<Self> {
        parsed(r, col, |s| IpNet::from_str(s).map_err(|e| e.to_string()))
    }
    fn value(&self) -> Value {
        Value::Text(self.to_string())
    }
}

/// A MAC, as Neutron writes it (`fa:16:3e:…`).
impl Column for [u8; 6] {
    fn read(r: &Row, col: usize) -> rusqlite::Result<Self> {
        parsed(r, col, |s| parse_mac(s).ok_or(format!("bad mac {s}")))
    }
    fn value(&self) -> Value {
        Value::Text(mac_to_string(self))
    }
}

impl Column for Option<Ipv6Mode> {
    fn read(r: &Row, col: usize) -> rusqlite::Result<Self> {
        match r.get::<_, Option<String>>(col)? {
            None => Ok(None),
            Some(s) => Ipv6Mode::parse(&s)
                .map(Some)
                .ok_or_else(|| text_err(col, format!("bad IPv6 mode {s}"))),
        }
    }
    fn value(&self) -> Value {
        self.map_or(Value::Null, |m| Value::Text(m.as_str().to_owned()))
    }
}

/// A name-server list: comma-separated addresses (what does not parse is dropped).
impl Column for Vec<IpAddr> {
    fn read(r: &Row, col: usize) -> rusqlite::Result<Self> {
        let text: String = r.get(col)?;
        Ok(text
            .split(',')
            .filter_map(|s| IpAddr::from_str(s).ok())
            .collect())
    }
    fn value(&self) -> Value {
        let text: Vec<String> = self.iter().map(|a| a.to_string()).collect();
        Value::Text(text.join(","))
    }
}

/// A text column parsed by `parse`; its error names the column.
fn parsed<T>(
    r: &Row,
    col: usize,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> rusqlite::Result<T> {
    let text: String = r.get(col)?;
    parse(&text).map_err(|msg| text_err(col, msg))
}

pub(super) fn text_err(col: usize, msg: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(col, rusqlite::types::Type::Text, msg.into())
}

/// An address column's value as the model carries it: IPv4 addresses are stored mapped
/// (`::ffff:a.b.c.d`), so a v4 address comes back as `IpAddr::V4` (the API refuses IPv6
/// subnets inside `::ffff:0:0/96`, so no IPv6 address is taken for one).
pub(super) fn addr_of(v: [u8; 16]) -> IpAddr {
    let a = Ipv6Addr::from(v);
    match a.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(a),
    }
}

/// The column value of an address: 16 bytes, big-endian, IPv4 as IPv4-mapped. Compared as
/// BLOBs (memcmp), the values keep the addresses' order within a family, which is what IPAM
/// walks (`first_free_ip`).
pub(super) fn addr_val(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

/// A model type stored as one row of `TABLE`.
pub trait Record: Sized {
    const TABLE: &'static str;
    /// The columns, in the order `from_row` reads and `values` writes them.
    const COLUMNS: &'static [&'static str];
    /// The columns that find one row.
    const KEY: &'static [&'static str];
    /// The columns an update rewrites (the others never change after the insert).
    const MUTABLE: &'static [&'static str];
    fn from_row(r: &Row) -> rusqlite::Result<Self>;
    fn values(&self) -> Vec<Value>;
    /// Fills what other tables hold (a subnet's pools, a port's fixed IPs).
    fn complete(&mut self, _conn: &Connection) -> Result<(), Fault> {
        Ok(())
    }
    /// Writes what other tables hold, replacing what they held.
    fn write_rest(&self, _conn: &Connection) -> Result<(), Fault> {
        Ok(())
    }
}

/// `impl Record` for a model type: its table, the columns that find a row (`keyed by`), its
/// column fields in column order, the columns an update rewrites (`mutable`), and the fields no
/// column holds, with their value until `complete` fills them, and what writes them.
macro_rules! record {
    (
        $t:ident in $table:literal keyed by [$($key:ident),+] { $($col:ident),+ $(,)? }
        mutable [$($set:ident),+ $(,)?]
        $(filled { $($other:ident: $init:expr),+ $(,)? } by $complete:path, $write:path)?
    ) => {
        impl $crate::store::record::Record for $t {
            const TABLE: &'static str = $table;
            const COLUMNS: &'static [&'static str] = &[$(stringify!($col)),+];
            const KEY: &'static [&'static str] = &[$(stringify!($key)),+];
            const MUTABLE: &'static [&'static str] = &[$(stringify!($set)),+];
            fn from_row(r: &rusqlite::Row) -> rusqlite::Result<Self> {
                use $crate::store::record::Column;
                let mut col = 0usize..;
                Ok(Self {
                    $($col: Column::read(r, col.next().unwrap_or_default())?,)+
                    $($($other: $init,)+)?
                })
            }
            fn values(&self) -> Vec<rusqlite::types::Value> {
                use $crate::store::record::Column;
                vec![$(self.$col.value()),+]
            }
            $(fn complete(&mut self, conn: &rusqlite::Connection) -> Result<(), $crate::model::Fault> {
                $complete(conn, self)
            }
            fn write_rest(&self, conn: &rusqlite::Connection) -> Result<(), $crate::model::Fault> {
                $write(conn, self)
            })?
        }
    };
}
pub(super) use record;

/// The columns of `T` for a select list, each behind `prefix` (e.g. `p.` in a join).
pub(super) fn columns<T: Record>(prefix: &str) -> String {
    let cols: Vec<String> = T::COLUMNS.iter().map(|c| format!("{prefix}{c}")).collect();
    cols.join(", ")
}

/// The rows of `T` that `filter` (a `WHERE` clause, or empty) selects with `p`, in creation
/// order, completed.
pub(super) fn select<T: Record, P: Params>(
    conn: &Connection,
    filter: &str,
    p: P,
) -> Result<Vec<T>, Fault> {
    let sql = format!(
        "SELECT {} FROM {} {filter} ORDER BY rowid",
        columns::<T>(""),
        T::TABLE
    );
    query(conn, &sql, p)
}

/// The rows of `T` that `sql` (selecting `columns::<T>(…)` first) returns with `p`, completed.
pub(super) fn query<T: Record, P: Params>(
    conn: &Connection,
    sql: &str,
    p: P,
) -> Result<Vec<T>, Fault> {
    let mut out = query_all(conn, sql, p, T::from_row)?;
    for x in &mut out {
        x.complete(conn)?;
    }
    Ok(out)
}

/// The row of `T` with this id, completed; None when unknown.
pub fn get<T: Record>(conn: &Connection, id: &str) -> Result<Option<T>, Fault> {
    Ok(select::<T, _>(conn, "WHERE id=?1", [id])?.pop())
}

/// Every row of `T`, in creation order.
pub fn list<T: Record>(conn: &Connection) -> Result<Vec<T>, Fault> {
    select(conn, "", [])
}

/// Adds `x`: its row (every column) and what other tables hold of it. The schema's UNIQUE
/// constraints refuse a duplicate (a 409).
pub fn insert<T: Record>(conn: &Connection, x: &T) -> Result<(), Fault> {
    let marks: Vec<String> = (1..=T::COLUMNS.len()).map(|i| format!("?{i}")).collect();
    let sql = format!(
        "INSERT INTO {} ({}) VALUES ({})",
        T::TABLE,
        columns::<T>(""),
        marks.join(",")
    );
    super::execute(conn, &sql, params_from_iter(x.values()))?;
    x.write_rest(conn)
}

/// Rewrites the mutable columns of the row with `x`'s key, and what other tables hold of it.
pub fn update<T: Record>(conn: &Connection, x: &T) -> Result<(), Fault> {
    let (key, set) = (T::KEY, T::MUTABLE);
    let values = x.values();
    let mut args = Vec::with_capacity(set.len() + key.len());
    let mut clause = |cols: &[&str], sep: &str| -> Result<String, Fault> {
        let mut parts = Vec::with_capacity(cols.len());
        for c in cols {
            let at = T::COLUMNS
                .iter()
                .position(|k| k == c)
                .ok_or_else(|| Fault::internal(format!("{} has no column {c}", T::TABLE)))?;
            args.push(values[at].clone());
            parts.push(format!("{c}=?{}", args.len()));
        }
        Ok(parts.join(sep))
    };
    let sql = format!(
        "UPDATE {} SET {} WHERE {}",
        T::TABLE,
        clause(set, ", ")?,
        clause(key, " AND ")?
    );
    super::execute(conn, &sql, params_from_iter(args))?;
    x.write_rest(conn)
}
