//! Spark-style DDL: the text of a table contract (`schemas/<table>/vN.ddl`).
//!
//! `name TYPE [NOT NULL]` per column, the text Spark's `StructType.toDDL` gives, one column per
//! line so that a contract diff reads line by line. Names are backquoted when they are not plain
//! identifiers. [`Contract::parse`] and [`Contract::to_ddl`] round-trip exactly for text in this
//! canonical form, nested STRUCT/ARRAY/MAP, NOT NULL, DECIMAL(p,s) and backquoted names included.

use std::fmt;

use arrow::datatypes::{DataType, Field, Fields, Schema, TimeUnit};

use super::ContractError;

/// A column type in Spark SQL terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqlType {
    Boolean,
    TinyInt,
    SmallInt,
    Int,
    BigInt,
    Float,
    Double,
    String,
    Binary,
    Date,
    Timestamp,
    TimestampNtz,
    Decimal(u8, i8),
    Array(Box<SqlType>),
    Map(Box<SqlType>, Box<SqlType>),
    Struct(Vec<Column>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub ty: SqlType,
    pub nullable: bool,
}

/// The payload columns of a table, in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Contract {
    pub columns: Vec<Column>,
}

impl fmt::Display for SqlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SqlType::Boolean => f.write_str("BOOLEAN"),
            SqlType::TinyInt => f.write_str("TINYINT"),
            SqlType::SmallInt => f.write_str("SMALLINT"),
            SqlType::Int => f.write_str("INT"),
            SqlType::BigInt => f.write_str("BIGINT"),
            SqlType::Float => f.write_str("FLOAT"),
            SqlType::Double => f.write_str("DOUBLE"),
            SqlType::String => f.write_str("STRING"),
            SqlType::Binary => f.write_str("BINARY"),
            SqlType::Date => f.write_str("DATE"),
            SqlType::Timestamp => f.write_str("TIMESTAMP"),
            SqlType::TimestampNtz => f.write_str("TIMESTAMP_NTZ"),
            SqlType::Decimal(p, s) => write!(f, "DECIMAL({p},{s})"),
            SqlType::Array(e) => write!(f, "ARRAY<{e}>"),
            SqlType::Map(k, v) => write!(f, "MAP<{k}, {v}>"),
            SqlType::Struct(members) => {
                f.write_str("STRUCT<")?;
                for (i, m) in members.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{}: {}{}", quote(&m.name), m.ty, if m.nullable { "" } else { " NOT NULL" })?;
                }
                f.write_str(">")
            }
        }
    }
}

impl Contract {
    /// The contract of an Arrow schema in Delta storage types (see [`super::delta_schema`]).
    pub fn from_arrow(schema: &Schema) -> Result<Self, ContractError> {
        Ok(Contract { columns: columns_from_arrow(schema.fields(), "")? })
    }

    /// The Arrow schema (Delta storage types) this contract describes. List elements, map keys
    /// and values are non-nullable, as the decoder produces them.
    pub fn to_arrow(&self) -> Schema {
        Schema::new(self.columns.iter().map(column_to_arrow).collect::<Vec<_>>())
    }

    pub fn to_ddl(&self) -> String {
        let mut out = String::new();
        for (i, c) in self.columns.iter().enumerate() {
            if i > 0 {
                out.push_str(",\n");
            }
            out.push_str(&quote(&c.name));
            out.push(' ');
            out.push_str(&c.ty.to_string());
            if !c.nullable {
                out.push_str(" NOT NULL");
            }
        }
        out.push('\n');
        out
    }

    /// Parses DDL text: columns separated by commas, any whitespace, keywords in any case.
    pub fn parse(text: &str) -> Result<Self, ContractError> {
        let mut p = Parser { text, pos: 0 };
        let mut columns = Vec::new();
        p.skip_ws();
        while !p.at_end() {
            columns.push(p.column(false)?);
            p.skip_ws();
            if p.eat(",") {
                p.skip_ws();
            } else if !p.at_end() {
                return Err(p.error("expected ',' between columns"));
            }
        }
        let contract = Contract { columns };
        contract.check_names()?;
        Ok(contract)
    }

    fn check_names(&self) -> Result<(), ContractError> {
        fn walk(columns: &[Column], path: &str) -> Result<(), ContractError> {
            let mut seen = std::collections::HashSet::new();
            for c in columns {
                let p = join(path, &c.name);
                if !seen.insert(c.name.to_ascii_lowercase()) {
                    return Err(ContractError::Parse {
                        line: 0,
                        column: 0,
                        message: format!("column {p} appears twice"),
                    });
                }
                walk_type(&c.ty, &p)?;
            }
            Ok(())
        }
        fn walk_type(ty: &SqlType, path: &str) -> Result<(), ContractError> {
            match ty {
                SqlType::Struct(m) => walk(m, path),
                SqlType::Array(e) => walk_type(e, &format!("{path}.element")),
                SqlType::Map(k, v) => {
                    walk_type(k, &format!("{path}.key"))?;
                    walk_type(v, &format!("{path}.value"))
                }
                _ => Ok(()),
            }
        }
        walk(&self.columns, "")
    }
}

pub(crate) fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

fn columns_from_arrow(fields: &Fields, path: &str) -> Result<Vec<Column>, ContractError> {
    fields
        .iter()
        .map(|f| {
            let p = join(path, f.name());
            Ok(Column { name: f.name().clone(), ty: sql_type(f.data_type(), &p)?, nullable: f.is_nullable() })
        })
        .collect()
}

fn sql_type(dt: &DataType, path: &str) -> Result<SqlType, ContractError> {
    Ok(match dt {
        DataType::Boolean => SqlType::Boolean,
        DataType::Int8 => SqlType::TinyInt,
        DataType::Int16 => SqlType::SmallInt,
        DataType::Int32 => SqlType::Int,
        DataType::Int64 => SqlType::BigInt,
        DataType::Float32 => SqlType::Float,
        DataType::Float64 => SqlType::Double,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => SqlType::String,
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => SqlType::Binary,
        DataType::Date32 => SqlType::Date,
        DataType::Timestamp(_, Some(_)) => SqlType::Timestamp,
        DataType::Timestamp(_, None) => SqlType::TimestampNtz,
        DataType::Decimal128(p, s) => SqlType::Decimal(*p, *s),
        DataType::Struct(fields) => SqlType::Struct(columns_from_arrow(fields, path)?),
        DataType::List(e) | DataType::LargeList(e) => SqlType::Array(Box::new(sql_type(e.data_type(), path)?)),
        DataType::Map(entries, _) => match entries.data_type() {
            DataType::Struct(kv) if kv.len() == 2 => {
                SqlType::Map(Box::new(sql_type(kv[0].data_type(), path)?), Box::new(sql_type(kv[1].data_type(), path)?))
            }
            other => return Err(ContractError::Unsupported { path: path.to_string(), data_type: other.to_string() }),
        },
        other => return Err(ContractError::Unsupported { path: path.to_string(), data_type: other.to_string() }),
    })
}

fn column_to_arrow(c: &Column) -> Field {
    Field::new(&c.name, arrow_type(&c.ty), c.nullable)
}

fn arrow_type(ty: &SqlType) -> DataType {
    match ty {
        SqlType::Boolean => DataType::Boolean,
        SqlType::TinyInt => DataType::Int8,
        SqlType::SmallInt => DataType::Int16,
        SqlType::Int => DataType::Int32,
        SqlType::BigInt => DataType::Int64,
        SqlType::Float => DataType::Float32,
        SqlType::Double => DataType::Float64,
        SqlType::String => DataType::Utf8,
        SqlType::Binary => DataType::Binary,
        SqlType::Date => DataType::Date32,
        SqlType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        SqlType::TimestampNtz => DataType::Timestamp(TimeUnit::Microsecond, None),
        SqlType::Decimal(p, s) => DataType::Decimal128(*p, *s),
        SqlType::Array(e) => DataType::List(std::sync::Arc::new(Field::new("element", arrow_type(e), false))),
        SqlType::Map(k, v) => {
            let kv =
                Fields::from(vec![Field::new("key", arrow_type(k), false), Field::new("value", arrow_type(v), false)]);
            DataType::Map(std::sync::Arc::new(Field::new("key_value", DataType::Struct(kv), false)), false)
        }
        SqlType::Struct(members) => DataType::Struct(members.iter().map(column_to_arrow).collect()),
    }
}

/// Backquotes a name unless it is a plain identifier (`[A-Za-z_][A-Za-z0-9_]*`).
pub(crate) fn quote(name: &str) -> String {
    let plain = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if plain {
        name.to_string()
    } else {
        format!("`{}`", name.replace('`', "``"))
    }
}

struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn at_end(&self) -> bool {
        self.pos >= self.text.len()
    }

    fn rest(&self) -> &str {
        &self.text[self.pos..]
    }

    fn skip_ws(&mut self) {
        loop {
            let rest = self.rest();
            let trimmed = rest.trim_start();
            self.pos += rest.len() - trimmed.len();
            // `-- comment` to the end of the line.
            if self.rest().starts_with("--") {
                self.pos += self.rest().find('\n').unwrap_or(self.rest().len());
            } else {
                break;
            }
        }
    }

    fn eat(&mut self, s: &str) -> bool {
        if self.rest().starts_with(s) {
            self.pos += s.len();
            true
        } else {
            false
        }
    }

    fn error(&self, message: impl Into<String>) -> ContractError {
        let before = &self.text[..self.pos];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        let found: String = self.rest().chars().take(20).collect();
        let found = if found.is_empty() { "end of text".to_string() } else { format!("{found:?}") };
        ContractError::Parse { line, column, message: format!("{}, found {found}", message.into()) }
    }

    fn word(&mut self) -> Option<&str> {
        let rest = self.rest();
        let len = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
        if len == 0 {
            return None;
        }
        let start = self.pos;
        self.pos += len;
        Some(&self.text[start..start + len])
    }

    fn keyword(&mut self, kw: &str) -> bool {
        let save = self.pos;
        match self.word() {
            Some(w) if w.eq_ignore_ascii_case(kw) => true,
            _ => {
                self.pos = save;
                false
            }
        }
    }

    fn name(&mut self) -> Result<String, ContractError> {
        if self.eat("`") {
            let mut name = String::new();
            loop {
                match self.rest().find('`') {
                    None => return Err(self.error("unclosed backquoted name")),
                    Some(i) => {
                        name.push_str(&self.rest()[..i]);
                        self.pos += i + 1;
                        if self.eat("`") {
                            name.push('`');
                        } else {
                            return Ok(name);
                        }
                    }
                }
            }
        }
        match self.word() {
            Some(w) => Ok(w.to_string()),
            None => Err(self.error("expected a column name")),
        }
    }

    fn column(&mut self, member: bool) -> Result<Column, ContractError> {
        let name = self.name()?;
        self.skip_ws();
        if member && self.eat(":") {
            self.skip_ws();
        }
        let ty = self.ty()?;
        self.skip_ws();
        let mut nullable = true;
        let save = self.pos;
        if self.keyword("NOT") {
            self.skip_ws();
            if !self.keyword("NULL") {
                return Err(self.error("expected NULL after NOT"));
            }
            nullable = false;
        } else {
            self.pos = save;
        }
        self.skip_ws();
        if self.keyword("COMMENT") {
            self.skip_ws();
            self.string_literal()?;
        }
        Ok(Column { name, ty, nullable })
    }

    fn string_literal(&mut self) -> Result<(), ContractError> {
        let quote = match self.rest().chars().next() {
            Some(q @ ('\'' | '"')) => q,
            _ => return Err(self.error("expected a quoted comment")),
        };
        self.pos += 1;
        let mut escaped = false;
        for (i, c) in self.rest().char_indices() {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == quote {
                self.pos += i + 1;
                return Ok(());
            }
        }
        Err(self.error("unclosed comment string"))
    }

    fn expect(&mut self, s: &str) -> Result<(), ContractError> {
        self.skip_ws();
        if self.eat(s) {
            self.skip_ws();
            Ok(())
        } else {
            Err(self.error(format!("expected '{s}'")))
        }
    }

    fn number(&mut self) -> Result<i64, ContractError> {
        let rest = self.rest();
        let len = rest.find(|c: char| !(c.is_ascii_digit() || c == '-')).unwrap_or(rest.len());
        let n = rest[..len].parse().map_err(|_| self.error("expected a number"))?;
        self.pos += len;
        Ok(n)
    }

    fn ty(&mut self) -> Result<SqlType, ContractError> {
        let start = self.pos;
        let Some(word) = self.word().map(str::to_ascii_uppercase) else {
            return Err(self.error("expected a type"));
        };
        let ty = match word.as_str() {
            "BOOLEAN" => SqlType::Boolean,
            "TINYINT" | "BYTE" => SqlType::TinyInt,
            "SMALLINT" | "SHORT" => SqlType::SmallInt,
            "INT" | "INTEGER" => SqlType::Int,
            "BIGINT" | "LONG" => SqlType::BigInt,
            "FLOAT" | "REAL" => SqlType::Float,
            "DOUBLE" => SqlType::Double,
            "STRING" => SqlType::String,
            "BINARY" => SqlType::Binary,
            "DATE" => SqlType::Date,
            "TIMESTAMP" | "TIMESTAMP_LTZ" => SqlType::Timestamp,
            "TIMESTAMP_NTZ" => SqlType::TimestampNtz,
            "DECIMAL" | "DEC" | "NUMERIC" => {
                self.skip_ws();
                if self.eat("(") {
                    self.skip_ws();
                    let p = self.number()?;
                    self.skip_ws();
                    let s = if self.eat(",") {
                        self.skip_ws();
                        self.number()?
                    } else {
                        0
                    };
                    self.expect(")")?;
                    if !(1..=38).contains(&p) || !(0..=p).contains(&s) {
                        return Err(self.error(format!(
                            "DECIMAL({p},{s}) needs 1 <= precision <= 38 and 0 <= scale <= precision"
                        )));
                    }
                    SqlType::Decimal(p as u8, s as i8)
                } else {
                    SqlType::Decimal(10, 0)
                }
            }
            "ARRAY" => {
                self.expect("<")?;
                let e = self.ty()?;
                self.expect(">")?;
                SqlType::Array(Box::new(e))
            }
            "MAP" => {
                self.expect("<")?;
                let k = self.ty()?;
                self.expect(",")?;
                let v = self.ty()?;
                self.expect(">")?;
                SqlType::Map(Box::new(k), Box::new(v))
            }
            "STRUCT" => {
                self.expect("<")?;
                let mut members = Vec::new();
                if !self.eat(">") {
                    loop {
                        members.push(self.column(true)?);
                        self.skip_ws();
                        if self.eat(">") {
                            break;
                        }
                        self.expect(",")?;
                    }
                }
                SqlType::Struct(members)
            }
            _ => {
                self.pos = start;
                return Err(self.error(format!("unknown type {word}")));
            }
        };
        Ok(ty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "ad_id STRING NOT NULL,\nts TIMESTAMP,\n`a b` STRUCT<id: INT NOT NULL, `x``y`: STRING>,\n\
        tags ARRAY<STRING>,\nm MAP<STRING, ARRAY<STRUCT<k: BIGINT>>>,\nu DECIMAL(20,0),\nd DATE\n";

    #[test]
    fn round_trips_exactly() {
        let c = Contract::parse(SAMPLE).unwrap();
        assert_eq!(c.to_ddl(), SAMPLE);
        assert_eq!(c.columns[2].name, "a b");
        let SqlType::Struct(m) = &c.columns[2].ty else { panic!() };
        assert_eq!(m[1].name, "x`y");
        // Arrow and back.
        assert_eq!(Contract::from_arrow(&c.to_arrow()).unwrap(), c);
    }

    #[test]
    fn accepts_spark_spellings() {
        let c =
            Contract::parse("a long not null, b integer comment 'x, y', c decimal(5, 2), -- note\n d struct<e string>")
                .unwrap();
        assert_eq!(c.to_ddl(), "a BIGINT NOT NULL,\nb INT,\nc DECIMAL(5,2),\nd STRUCT<e: STRING>\n");
    }

    #[test]
    fn errors_say_where() {
        let e = Contract::parse("a STRING,\nb STRUKT<c INT>").unwrap_err();
        assert_eq!(e.to_string(), "line 2, column 3: unknown type STRUKT, found \"STRUKT<c INT>\"");
        let e = Contract::parse("a MAP<STRING INT>").unwrap_err();
        assert!(e.to_string().contains("expected ','"), "{e}");
        let e = Contract::parse("a INT, A STRING").unwrap_err();
        assert!(e.to_string().contains("appears twice"), "{e}");
    }
}
